"""Request stage: request shaping (anti-distillation controls on what goes upstream)."""

from __future__ import annotations

import redis.asyncio as aioredis
from starlette.responses import Response

from gateway.exchange import Exchange
from gateway.keys import KeySpace


class Shape:
    """Caps top_logprobs, handles logit_bias, clamps n / max_tokens, drops seed, applies the
    temperature floor — per ``ex.controls``. Every change is named in ``ex.modifications``."""

    name = "shape"

    def __init__(self, redis: aioredis.Redis, keys: KeySpace) -> None:
        self._redis = redis
        self._keys = keys

    async def on_request(self, ex: Exchange) -> Response | None:
        return None
