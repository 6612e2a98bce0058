"""Stage: enforcement level and every rate limit, in one Redis round trip."""

from __future__ import annotations

import logging
import math
import time

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.responses import Response

from gateway.errors import error_response
from gateway.exchange import Exchange
from gateway.keys import KeySpace
from gateway.metrics import Metrics
from gateway.policy import Limits, RouteKind
from gateway.ratelimit.limiter import Admission, Charge, Limiter, LimitState, Rate
from gateway.tokens import estimate_prompt_tokens, output_reservation

log = logging.getLogger("antidistill.admit")

_MINUTE = 60.0
_DAY = 86_400.0


def _rates(limits: Limits, prefix: str) -> list[tuple[Rate, str]]:
    """(rate, unit) pairs for the set limits of one scope; unit is "requests" or "tokens"."""
    out: list[tuple[Rate, str]] = []
    if limits.requests_per_minute is not None:
        out.append((Rate(f"{prefix}requests", limits.requests_per_minute, _MINUTE), "requests"))
    if limits.tokens_per_minute is not None:
        out.append((Rate(f"{prefix}tokens", limits.tokens_per_minute, _MINUTE), "tokens"))
    if limits.tokens_per_day is not None:
        out.append((Rate(f"{prefix}tokens_per_day", limits.tokens_per_day, _DAY), "tokens"))
    return out


def build_charges(ex: Exchange, keys: KeySpace) -> tuple[Charge, ...]:
    """The charges of a request: the client's own limits, its tier's shared ones, global ones."""
    assert ex.client is not None
    tokens = ex.reserved_tokens
    charges: list[Charge] = []
    scopes: list[tuple[Limits, str, str]] = [
        (ex.client.limits, "", keys.limit(ex.client.id, "")),
        (
            ex.policy.tiers[ex.client.tier].shared_limits,
            "tier_",
            keys.scoped_limit("tier", ex.client.tier, ""),
        ),
        (ex.policy.global_limits, "global_", keys.scoped_limit("global", "all", "")),
    ]
    for limits, prefix, key_base in scopes:
        for rate, unit in _rates(limits, prefix):
            cost = 1 if unit == "requests" else tokens
            if cost > 0:
                charges.append(Charge(rate=rate, key=key_base + rate.name, cost=cost))
    return tuple(charges)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "1h2m3s"."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def ratelimit_headers(states: tuple[LimitState, ...]) -> dict[str, str]:
    """``x-ratelimit-*`` headers from the client's own request and token limits."""
    headers: dict[str, str] = {}
    for state in states:
        if state.name in ("requests", "tokens"):
            # A throttled limit can be fractional; never advertise a limit of 0.
            headers[f"x-ratelimit-limit-{state.name}"] = str(max(1, math.floor(state.limit)))
            headers[f"x-ratelimit-remaining-{state.name}"] = str(math.floor(state.remaining))
            headers[f"x-ratelimit-reset-{state.name}"] = _duration(state.reset_s)
    return headers


class Admit:
    """Reads the client's level and reserves all limits at once (GCRA, all or nothing)."""

    name = "admit"

    def __init__(
        self,
        limiter: Limiter,
        keys: KeySpace,
        metrics: Metrics,
        *,
        store_retry_s: float = 1.0,
        deadline_s: float | None = None,
    ) -> None:
        self._limiter = limiter
        self._keys = keys
        self._metrics = metrics
        self._store_retry_s = store_retry_s
        self._deadline_s = deadline_s
        self._store_down_until = 0.0

    async def on_request(self, ex: Exchange) -> Response | None:
        assert ex.client is not None
        kind = ex.route.kind
        ex.prompt_tokens_est = estimate_prompt_tokens(kind, ex.body, ex.policy.tokens)
        ex.output_tokens_reserved = output_reservation(kind, ex.body, ex.policy.tokens)
        if (
            ex.body is not None
            and kind in (RouteKind.OPENAI_CHAT, RouteKind.OPENAI_COMPLETIONS)
            and ex.body.get("max_tokens") is None
            and ex.body.get("max_completion_tokens") is None
        ):
            ex.body["max_tokens"] = ex.policy.tokens.default_max_tokens
            ex.body_modified = True
            ex.modifications.append("max_tokens_defaulted")
        ex.controls = ex.policy.controls_for(ex.client.tier, "allow")
        if ex.client.allowlisted:
            ex.reasons.append("allowlisted")
            return None
        ex.charges = build_charges(ex, self._keys)
        limits = ex.client.limits
        ex.lease_id = ex.id if limits.max_concurrent is not None else ""
        ex.inflight_key = self._keys.inflight(ex.client.id) if ex.lease_id else None
        if time.monotonic() < self._store_down_until:
            # The store failed a moment ago: apply the failure mode at once rather than
            # making every request wait out a timeout; one request probes again later.
            return self._store_failed(ex, None)
        try:
            admission = await self._limiter.admit(
                level_key=self._keys.level(ex.client.id),
                charges=ex.charges,
                inflight_key=ex.inflight_key,
                max_inflight=limits.max_concurrent,
                lease_id=ex.lease_id,
                throttle_factor=ex.policy.enforcement.throttle_factor,
                deadline_s=self._deadline_s,
            )
        except (RedisError, OSError) as exc:
            return self._store_failed(ex, exc)
        return self._decide(ex, admission)

    def _store_failed(self, ex: Exchange, exc: BaseException | None) -> Response | None:
        self._metrics.limiter_results.labels(result="store_error").inc()
        if isinstance(exc, RedisTimeoutError | TimeoutError):
            # A hung store costs every request a timeout; a refused connection fails fast
            # and needs no breaker.
            self._store_down_until = time.monotonic() + self._store_retry_s
        if exc is not None:
            log.warning(
                "rate-limit store unreachable (%s); applying on_store_error=%s for %.1fs",
                type(exc).__name__,
                ex.policy.store.on_store_error,
                self._store_retry_s,
            )
        ex.charges, ex.lease_id, ex.inflight_key = (), "", None
        ex.reasons.append("store_unavailable")
        if ex.policy.store.on_store_error == "fail_closed" and not ex.policy.shadow:
            return error_response(
                503,
                "The gateway cannot reach its rate-limit store and is configured to fail closed.",
                type_="service_unavailable",
                code="store_unavailable",
                headers={"retry-after": "1"},
            )
        return None

    def _decide(self, ex: Exchange, admission: Admission) -> Response | None:
        ex.admission = admission
        ex.level = admission.level.level
        assert ex.client is not None
        ex.controls = ex.policy.controls_for(ex.client.tier, ex.level)
        ex.reasons.extend(f"level:{r}" for r in admission.level.reasons)
        self._metrics.limiter_results.labels(result=admission.reason).inc()
        ex.response_headers.update(ratelimit_headers(admission.states))
        if admission.allowed:
            ex.settle_tokens = any(
                c.rate.name.endswith(("tokens", "tokens_per_day")) for c in ex.charges
            )
            return None
        ex.charges, ex.lease_id = (), ""  # nothing was reserved
        ex.reasons.append(admission.reason)
        if ex.policy.shadow:
            ex.reasons.append("shadow")
            return None
        if admission.reason == "blocked":
            return error_response(
                403,
                "Access suspended: this client's traffic matches model-distillation patterns.",
                type_="permission_error",
                code="distillation_suspected",
            )
        if admission.reason == "cost_exceeds_burst":
            return error_response(
                429,
                f"This request ({ex.reserved_tokens} tokens reserved) exceeds the "
                f"'{admission.denied_by}' limit and can never be admitted; lower max_tokens.",
                type_="tokens",
                code="rate_limit_exceeded",
                headers=ex.response_headers,
            )
        retry_after = max(1, math.ceil(admission.retry_after_s))
        return error_response(
            429,
            f"Rate limit reached for {admission.denied_by}; retry in {retry_after}s.",
            type_="requests" if admission.denied_by != "tokens" else "tokens",
            code="rate_limit_exceeded",
            headers={**ex.response_headers, "retry-after": str(retry_after)},
        )
