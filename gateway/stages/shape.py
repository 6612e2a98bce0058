"""Request stage: request shaping (anti-distillation controls on what goes upstream).

Per ``ex.controls``, on openai-chat and openai-completions routes: cap ``top_logprobs``
(legacy completions: the integer ``logprobs``; also vLLM's ``prompt_logprobs``) or drop
logprobs altogether; refuse or strip ``logit_bias``, alone or together with logprobs, and
count the distinct token ids a client biases per fixed window (one Redis round trip, only
for requests that carry ``logit_bias`` while a cap is set); clamp ``n`` and ``max_tokens``;
drop ``seed``; raise ``temperature`` to a floor.

Values that a lenient upstream could read past a control (``"20"`` for ``top_logprobs``,
``-1`` meaning "the whole vocabulary") are refused with a 400 or clamped to the cap, never
passed on. Every change is named in ``ex.modifications``; every refusal in ``ex.reasons``.
In shadow mode the same names get a ``shadow:`` prefix and the request goes on unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.responses import Response

from gateway.controls import ControlSet
from gateway.errors import error_response
from gateway.exchange import Exchange
from gateway.keys import KeySpace
from gateway.policy import RouteKind

log = logging.getLogger("antidistill.shape")

_KINDS = (RouteKind.OPENAI_CHAT, RouteKind.OPENAI_COMPLETIONS)
_LOGPROB_PARAMS = ("logprobs", "top_logprobs", "prompt_logprobs")
_MAX_TOKEN_ID_CHARS = 16
_WINDOW_TTL_MARGIN_S = 60
_STEALING = (
    "logit-stealing attacks (Carlini et al. 2024; Finlayson et al. 2024), which recover a "
    "model's hidden size and output layer"
)


class _Refused(Exception):
    """A request the stage answers itself (400, or 503 when the store fails closed)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        reason: str | None = None,
        status: int = 400,
        type_: str = "invalid_request_error",
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.type_ = code, message, status, type_
        self.reason = reason or code
        self.retry_after_s = retry_after_s


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _invalid_type(name: str, value: Any, expected: str) -> _Refused:
    return _Refused(
        "invalid_type",
        f"Invalid type for '{name}': expected {expected}, but got {_json_type(value)} instead.",
        reason=f"invalid_type:{name}",
    )


def _cap(
    body: dict[str, Any], name: str, cap: int, verb: str, out: list[str], *, negative: bool
) -> None:
    """Lowers integer parameter ``name`` to ``cap``; with ``negative``, a negative value
    (vLLM's "-1: the whole vocabulary") is unbounded and lowered too."""
    value = body.get(name)
    if value is None:
        return
    if type(value) is not int:  # bool, float, str, …: a lenient upstream could coerce them
        raise _invalid_type(name, value, "an integer")
    if value > cap or (negative and value < 0):
        body[name] = cap
        out.append(f"{name}_{verb}:{value}>{cap}")


def _asks_logprobs(body: dict[str, Any], chat: bool) -> bool:
    """Whether the request (still) asks for any log-probabilities.

    Chat: ``logprobs: true`` (then ``top_logprobs: 0`` still returns the sampled token's);
    legacy completions: any integer ``logprobs``, 0 included. Read broadly on purpose.
    """
    logprobs = body.get("logprobs")
    if bool(logprobs) if chat else logprobs is not None and logprobs is not False:
        return True
    return bool(body.get("top_logprobs")) or body.get("prompt_logprobs") is not None


def _token_ids(bias: Any) -> list[str]:
    """The distinct token ids of a ``logit_bias`` object, canonical ("007" → "7")."""
    if not isinstance(bias, dict):
        raise _Refused(
            "invalid_logit_bias",
            "'logit_bias' must be an object mapping token ids to numbers, "
            f"but got {_json_type(bias)}.",
        )
    ids: set[str] = set()
    for key, value in bias.items():
        if type(value) is not int and type(value) is not float:
            raise _Refused(
                "invalid_logit_bias",
                f"logit_bias values must be numbers; token {key[:32]!r} has {_json_type(value)}.",
            )
        try:
            if len(key) > _MAX_TOKEN_ID_CHARS:
                raise ValueError
            ids.add(str(int(key)))
        except ValueError:
            raise _Refused(
                "invalid_logit_bias", f"logit_bias key {key[:32]!r} is not a token id."
            ) from None
    return list(ids)


def _shape_logprobs(body: dict[str, Any], c: ControlSet, chat: bool, out: list[str]) -> None:
    if c.logprobs == "drop":
        asked = [n for n in _LOGPROB_PARAMS if body.get(n) is not None and body[n] is not False]
        if asked:
            for name in asked:
                del body[name]
            out.append("logprobs_dropped")
        return
    cap = c.top_logprobs_max
    assert cap is not None
    _cap(body, "top_logprobs", cap, "capped", out, negative=True)
    _cap(body, "prompt_logprobs", cap, "capped", out, negative=True)
    if not chat:
        _cap(body, "logprobs", cap, "capped", out, negative=True)


def _shape_logit_bias(body: dict[str, Any], c: ControlSet, chat: bool, out: list[str]) -> list[str]:
    """Applies the logit_bias policy; returns the token ids still biased (to be counted)."""
    bias = body.get("logit_bias")
    if bias is None or bias == {}:
        return []
    if c.logit_bias == "refuse":
        raise _Refused(
            "logit_bias_refused",
            f"logit_bias is not accepted for this client: biasing tokens is a primitive of "
            f"{_STEALING}.",
        )
    if c.logit_bias == "strip":
        del body["logit_bias"]
        out.append("logit_bias_stripped")
        return []
    ids = _token_ids(bias)
    if _asks_logprobs(body, chat) and c.logit_bias_with_logprobs != "allow":
        if c.logit_bias_with_logprobs == "refuse":
            raise _Refused(
                "logit_bias_with_logprobs_refused",
                "logit_bias cannot be combined with logprobs: reading the log-probabilities of "
                f"biased tokens is the primitive of {_STEALING}. Send logit_bias or logprobs, "
                "not both.",
            )
        del body["logit_bias"]
        out.append("logit_bias_stripped_with_logprobs")
        return []
    return ids


# Server-specific parameters (vLLM, TGI, llama.cpp) that restrict or reweight the vocabulary
# like logit_bias does: allowed_token_ids + logprobs reads relative logits of any token
# subset, which is the same stealing primitive. They follow the logit_bias controls.
_BIAS_LIKE = ("allowed_token_ids", "bad_words", "logits_processors")
# Parameters that make sampling near-greedy whatever the temperature; removed (or raised,
# for top_p) while a temperature floor is in force, or the floor would mean nothing.
_GREEDY_LIKE = ("top_k", "min_p", "typical_p")
_TOP_P_FLOOR = 0.9


def _shape_bias_like(body: dict[str, Any], c: ControlSet, chat: bool, out: list[str]) -> None:
    for name in _BIAS_LIKE:
        if body.get(name) in (None, [], {}):
            continue
        with_logprobs = _asks_logprobs(body, chat) and c.logit_bias_with_logprobs != "allow"
        rule = c.logit_bias_with_logprobs if with_logprobs else c.logit_bias
        if rule == "refuse":
            raise _Refused(
                f"{name}_refused",
                f"{name} is not accepted for this client"
                + (" together with logprobs" if with_logprobs else "")
                + f": restricting the vocabulary is a primitive of {_STEALING}.",
            )
        if rule == "strip":
            del body[name]
            out.append(f"{name}_stripped")


def _shape_sampling(body: dict[str, Any], c: ControlSet, out: list[str]) -> None:
    assert c.n_max is not None and c.max_tokens_max is not None
    _cap(body, "n", c.n_max, "clamped", out, negative=False)
    _cap(body, "max_tokens", c.max_tokens_max, "clamped", out, negative=True)
    _cap(body, "max_completion_tokens", c.max_tokens_max, "clamped", out, negative=True)
    if c.seed == "drop" and body.get("seed") is not None:
        del body["seed"]
        out.append("seed_dropped")
    floor = c.temperature_floor
    if floor:
        value = body.get("temperature")
        current = 1.0 if value is None else value  # OpenAI's default
        if type(current) is not float and type(current) is not int:
            raise _invalid_type("temperature", value, "a number")
        if current < floor:
            body["temperature"] = floor
            out.append(f"temperature_raised:{float(current)}>{floor}")
        for name in _GREEDY_LIKE:
            if name in body:
                del body[name]
                out.append(f"{name}_dropped")
        top_p = body.get("top_p")
        if isinstance(top_p, int | float) and not isinstance(top_p, bool) and top_p < _TOP_P_FLOOR:
            body["top_p"] = _TOP_P_FLOOR
            out.append(f"top_p_raised:{float(top_p)}>{_TOP_P_FLOOR}")


class Shape:
    """Caps top_logprobs, handles logit_bias, clamps n / max_tokens, drops seed, applies the
    temperature floor — per ``ex.controls``. Every change is named in ``ex.modifications``."""

    name = "shape"

    def __init__(self, redis: aioredis.Redis, keys: KeySpace) -> None:
        self._redis = redis
        self._keys = keys
        source = resources.files("gateway.stages").joinpath("bias_window.lua")
        self._bias_window = redis.register_script(source.read_text(encoding="utf-8"))

    async def on_request(self, ex: Exchange) -> Response | None:
        body = ex.body
        if body is None or ex.route.kind not in _KINDS:
            return None
        controls = ex.controls
        assert controls is not None, "the admit stage sets the controls"
        shadow = ex.policy.shadow
        work = dict(body) if shadow else body  # shadow: shape a copy, forward the original
        chat = ex.route.kind is RouteKind.OPENAI_CHAT
        out: list[str] = []
        try:
            _shape_logprobs(work, controls, chat, out)
            biased = _shape_logit_bias(work, controls, chat, out)
            _shape_bias_like(work, controls, chat, out)
            _shape_sampling(work, controls, out)
            cap = controls.logit_bias_distinct_tokens
            if biased and cap:
                await self._count_biased(ex, biased, cap, controls.logit_bias_window_s)
        except _Refused as refused:
            return self._refuse(ex, refused)
        if out:
            if shadow:
                ex.modifications.extend(f"shadow:{m}" for m in out)
            else:
                ex.modifications.extend(out)
                ex.body_modified = True
        return None

    async def _count_biased(
        self, ex: Exchange, ids: list[str], cap: int, window_s: int | None
    ) -> None:
        """Charges ``ids`` to the client's window of distinct biased tokens, or refuses."""
        assert ex.client is not None and window_s is not None
        why = f"sweeping logit_bias across the vocabulary is the primitive of {_STEALING}"
        if len(ids) > cap:
            raise _Refused(
                "logit_bias_budget_exceeded",
                f"logit_bias names {len(ids)} token ids; at most {cap} distinct token ids may "
                f"be biased per {window_s}s window: {why}.",
            )
        now = time.time()
        window = int(now // window_s)
        left_s = math.ceil((window + 1) * window_s - now)
        try:
            admitted, card = await self._bias_window(
                keys=[self._keys.bias_tokens(ex.client.id, window)],
                args=[cap, left_s + _WINDOW_TTL_MARGIN_S, *ids],
            )
        except (RedisError, OSError) as exc:
            log.warning("logit_bias window store unreachable: %s", type(exc).__name__)
            if ex.policy.store.on_store_error == "fail_closed":
                raise _Refused(
                    "store_unavailable",
                    "The gateway cannot reach its store to count logit_bias tokens and is "
                    "configured to fail closed.",
                    status=503,
                    type_="service_unavailable",
                    retry_after_s=1,
                ) from None
            if "store_unavailable" not in ex.reasons:
                ex.reasons.append("store_unavailable")
            return
        if not admitted:
            raise _Refused(
                "logit_bias_budget_exceeded",
                f"This client has biased {card} distinct token ids in the current "
                f"{window_s}s window; the {len(ids)} of this request would take it past the "
                f"budget of {cap}: {why}. The window resets in {left_s}s.",
                retry_after_s=left_s,
            )

    @staticmethod
    def _refuse(ex: Exchange, refused: _Refused) -> Response | None:
        if refused.reason not in ex.reasons:
            ex.reasons.append(refused.reason)
        if ex.policy.shadow:
            if "shadow" not in ex.reasons:
                ex.reasons.append("shadow")
            return None
        headers = dict(ex.response_headers)
        if refused.retry_after_s is not None:
            headers["retry-after"] = str(refused.retry_after_s)
        return error_response(
            refused.status, refused.message, type_=refused.type_, code=refused.code, headers=headers
        )
