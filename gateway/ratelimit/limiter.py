"""Exact rate limits in one Redis round trip.

`Limiter.admit` runs ``admit.lua``: it reads the client's enforcement level, checks every
charge with GCRA and reserves all of them only if all pass, and takes a concurrency lease in
the same all-or-nothing step. `Limiter.queue_settle` adjusts the reservations once the real
usage is known and releases the lease (``settle.lua``).

GCRA, per charge: T = period_ms / limit (ms per unit), tau = T * burst, tat = max(stored
TAT, now). A cost fits iff tat + T*cost - now <= tau (+ 0.01 ms float slack); admitting sets
TAT = tat + T*cost, and the key expires 1 s after the bucket would be full again (a missing
key is a full bucket). Time is the Redis server's ``TIME`` in ms unless ``now_ms`` is given.

Levels: ``block`` admits nothing; ``throttle`` multiplies every limit and burst by
``throttle_factor``, but a rate's burst never drops below the request's cost (capped at the
normal burst), so throttling slows a client down without making any request impossible.
Other levels do not change the limits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from gateway.ratelimit.levels import LEVELS, Level, decode_level, encode_reasons
from gateway.ratelimit.rates import Charge, LimitState, Rate

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

__all__ = ["Admission", "Charge", "Level", "LimitState", "Limiter", "Rate"]

REASONS = ("ok", "rate_limited", "concurrency", "blocked", "cost_exceeds_burst")


@cache
def lua_source(name: str) -> str:
    """A script of this package as sent to Redis: comment lines and indentation removed."""
    text = resources.files("gateway.ratelimit").joinpath(name).read_text(encoding="utf-8")
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of `Limiter.admit`. Nothing was reserved unless `allowed`."""

    allowed: bool
    reason: str  # one of REASONS
    denied_by: str | None  # the Rate.name (or "concurrency") that denied
    # Seconds until a retry of the same cost would pass: 0 if allowed; exact for
    # "rate_limited" (the worst denying rate); 1 for "concurrency" (when a lease frees up is
    # unknowable); -1 for "cost_exceeds_burst" (never) and for a "blocked" level without
    # expiry; the time left on a block that expires.
    retry_after_s: float
    level: Level
    states: tuple[LimitState, ...]  # one per charge, in the order given
    now_ms: int  # the Redis server time used
    throttle_factor: float = 1.0  # the factor applied (1 unless the level is "throttle")


class Limiter:
    """GCRA limits, concurrency leases and enforcement levels, kept in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._admit = redis.register_script(lua_source("admit.lua"))
        self._set_level = redis.register_script(lua_source("level.lua"))
        self._clock_offset_ms: float | None = None  # Redis TIME minus local time

    async def admit(
        self,
        *,
        level_key: str,
        charges: Sequence[Charge],
        inflight_key: str | None = None,
        max_inflight: int | None = None,
        lease_id: str = "",
        lease_ttl_s: float = 600.0,
        throttle_factor: float = 1.0,
        now_ms: int | None = None,
        deadline_s: float | None = None,
    ) -> Admission:
        """Check the level, all charges and the lease together; reserve all or nothing.

        One EVALSHA (re-sent with its source on NOSCRIPT). Every key must live in one Redis
        Cluster slot. A lease is taken only when `inflight_key` and `max_inflight` are given;
        it expires after `lease_ttl_s` unless settled first. With `deadline_s` (the caller's
        timeout), a call that Redis runs later than that — after the caller gave up —
        reserves nothing; the deadline is set in Redis time, learnt from earlier replies.
        """
        _check_admit(charges, inflight_key, max_inflight, lease_id, lease_ttl_s, throttle_factor)
        keys = [level_key, *(charge.key for charge in charges)]
        args: list[str | int | float] = [
            "" if now_ms is None else now_ms,
            throttle_factor,
            len(charges),
            "" if max_inflight is None else max_inflight,
            lease_id,
            lease_ttl_s * 1000.0,
        ]
        for charge in charges:
            args += [charge.rate.limit, charge.rate.period_ms, charge.rate.capacity, charge.cost]
        deadline = ""
        if deadline_s is not None and self._clock_offset_ms is not None and now_ms is None:
            deadline = f"{time.time() * 1000 + self._clock_offset_ms + deadline_s * 1000:.0f}"
        args.append(deadline)
        if inflight_key is not None:
            keys.append(inflight_key)
        raw = await self._admit(keys=keys, args=args)
        admission = _admission(raw, charges, throttle_factor)
        if now_ms is None:
            self._clock_offset_ms = admission.now_ms - time.time() * 1000
        return admission

    def queue_settle(
        self,
        pipe: Pipeline,
        *,
        adjustments: Sequence[tuple[Charge, float]],
        inflight_key: str | None,
        lease_id: str,
        now_ms: int | None = None,
        throttle_factor: float = 1.0,
    ) -> None:
        """Queue (not execute) the settle call on a pipeline.

        For each (charge, delta) add delta units (positive = charge more, negative = refund;
        a refund never moves the TAT before now, so it never creates more than the burst)
        and release the lease. Pass the admission's `throttle_factor` so deltas are priced
        as the reservation was. Not idempotent: settle each admission once. Queues EVAL with
        the (small) script source rather than EVALSHA, so a pipeline needs no extra round
        trip to check the script cache; queues nothing when there is nothing to settle.
        """
        if not adjustments and inflight_key is None:
            return
        _check_factor(throttle_factor)
        keys = [charge.key for charge, _ in adjustments]
        _check_unique(keys)
        args: list[str | int | float] = [
            "" if now_ms is None else now_ms,
            throttle_factor,
            len(adjustments),
            lease_id,
        ]
        for charge, delta in adjustments:
            if not math.isfinite(delta):
                raise ValueError(f"settle delta for {charge.rate.name!r} must be finite")
            args += [charge.rate.limit, charge.rate.period_ms, delta]
        if inflight_key is not None:
            keys.append(inflight_key)
        pipe.eval(lua_source("settle.lua"), len(keys), *keys, *args)

    async def settle(
        self,
        *,
        adjustments: Sequence[tuple[Charge, float]],
        inflight_key: str | None,
        lease_id: str,
        now_ms: int | None = None,
        throttle_factor: float = 1.0,
    ) -> None:
        """`queue_settle` on a pipeline of its own, executed at once."""
        async with self._redis.pipeline(transaction=False) as pipe:
            self.queue_settle(
                pipe,
                adjustments=adjustments,
                inflight_key=inflight_key,
                lease_id=lease_id,
                now_ms=now_ms,
                throttle_factor=throttle_factor,
            )
            await pipe.execute()

    async def set_level(
        self,
        level_key: str,
        level: str,
        reasons: Sequence[str],
        ttl_s: float | None,
        *,
        now_ms: int | None = None,
    ) -> None:
        """Set a client's level; it reads as "allow" once `ttl_s` (server time) has passed."""
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
        if ttl_s is not None and not (math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        args: list[str | int | float] = [
            level,
            encode_reasons(tuple(reasons)),
            "" if ttl_s is None else ttl_s * 1000.0,
            "" if now_ms is None else now_ms,
        ]
        await self._set_level(keys=[level_key], args=args)

    async def get_level(self, level_key: str, *, now_ms: int | None = None) -> Level:
        """The client's level now (missing or expired: allow)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(level_key, ["level", "reasons", "expires_at_ms"])
            pipe.time()
            (level, reasons, expires), (secs, micros) = await pipe.execute()
        now = now_ms if now_ms is not None else secs * 1000 + micros / 1000
        return decode_level(
            None if level is None else _text(level), _text(reasons or ""), _text(expires or ""), now
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _check_factor(throttle_factor: float) -> None:
    if not (math.isfinite(throttle_factor) and 0 < throttle_factor <= 1):
        raise ValueError(f"throttle_factor must be in (0, 1], got {throttle_factor}")


def _check_unique(keys: Sequence[str]) -> None:
    if len(set(keys)) != len(keys):
        raise ValueError("each charge needs its own key; got a key twice")


def _check_admit(
    charges: Sequence[Charge],
    inflight_key: str | None,
    max_inflight: int | None,
    lease_id: str,
    lease_ttl_s: float,
    throttle_factor: float,
) -> None:
    _check_factor(throttle_factor)
    _check_unique([charge.key for charge in charges])
    if (inflight_key is None) != (max_inflight is None):
        raise ValueError("inflight_key and max_inflight go together")
    if max_inflight is not None:
        if max_inflight < 0:
            raise ValueError(f"max_inflight must be >= 0, got {max_inflight}")
        if not lease_id:
            raise ValueError("a concurrency limit needs a lease_id")
        if not (math.isfinite(lease_ttl_s) and lease_ttl_s > 0):
            raise ValueError(f"lease_ttl_s must be > 0, got {lease_ttl_s}")


def _admission(raw: list[Any], charges: Sequence[Charge], throttle_factor: float) -> Admission:
    """Parse admit.lua's flat reply."""
    allowed, reason, denied_by, retry_ms, now, level, reasons, expires = (
        _text(x) if isinstance(x, bytes | str) else x for x in raw[:8]
    )
    now_ms = float(now)
    states = []
    for i, charge in enumerate(charges):
        limit, remaining, reset_ms = (float(_text(x)) for x in raw[8 + 3 * i : 11 + 3 * i])
        states.append(LimitState(charge.rate.name, limit, round(remaining, 6), reset_ms / 1000))
    if denied_by.isdigit():
        denied_by = charges[int(denied_by) - 1].rate.name
    parsed_level = decode_level(level, reasons, expires, now_ms)
    retry_after_s = float(retry_ms)
    if retry_after_s > 0:
        retry_after_s /= 1000
    return Admission(
        allowed=allowed == 1,
        reason=reason,
        denied_by=denied_by or None,
        retry_after_s=retry_after_s,
        level=parsed_level,
        states=tuple(states),
        now_ms=math.floor(now_ms),
        throttle_factor=throttle_factor if parsed_level.level == "throttle" else 1.0,
    )
