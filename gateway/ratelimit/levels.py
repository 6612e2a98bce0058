"""Enforcement levels: what the detector decided about a client, as the limiter reads it.

Stored in a Redis hash (``KeySpace.level``) with the fields ``level``, ``reasons``
(comma-separated reason codes) and ``expires_at_ms`` (absent: never expires). A missing or
expired hash reads as ``allow``.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("allow", "watch", "degrade", "throttle", "block")


@dataclass(frozen=True, slots=True)
class Level:
    level: str  # one of LEVELS
    reasons: tuple[str, ...]
    expires_at_ms: int | None

    @classmethod
    def allow(cls) -> Level:
        return cls("allow", (), None)


def encode_reasons(reasons: tuple[str, ...]) -> str:
    """Reason codes as stored: comma-separated, so none may contain a comma or be empty."""
    for reason in reasons:
        if not reason or "," in reason:
            raise ValueError(f"reason codes must be non-empty and comma-free, got {reason!r}")
    return ",".join(reasons)


def decode_level(level: str | None, reasons: str, expires_at_ms: str, now_ms: float) -> Level:
    """The level a stored hash means at `now_ms` (missing or expired: allow)."""
    expires = int(float(expires_at_ms)) if expires_at_ms else None
    if level is None or (expires is not None and expires <= now_ms):
        return Level.allow()
    return Level(level, tuple(reasons.split(",")) if reasons else (), expires)
