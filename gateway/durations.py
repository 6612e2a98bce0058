"""Durations as operators write them: ``90s``, ``10m``, ``1h30m``, ``2d``."""

from __future__ import annotations

import re

# At most 9 digits a part: no overflow, and only ASCII digits.
_DURATION = re.compile(r"(?:([0-9]{1,9})d)?(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,9})s)?")


def parse_duration(text: str, max_s: float | None = None) -> float | None:
    """Seconds in ``text``; None for ``0``, ``never`` or ``none`` (no expiry / all time).

    Raises ValueError, with a message for the operator, for anything else or for more than
    ``max_s`` seconds.
    """
    text = text.strip().lower()
    if text in ("0", "never", "none"):
        return None
    match = _DURATION.fullmatch(text)
    if not text or match is None or not any(match.groups()):
        raise ValueError(f"{text[:40]!r} is not a duration like 30s, 10m, 1h30m or 2d")
    d, h, m, s = (int(g) if g else 0 for g in match.groups())
    seconds = float(d * 86_400 + h * 3_600 + m * 60 + s)
    if max_s is not None and seconds > max_s:
        raise ValueError(f"{text[:40]!r} is longer than {max_s / 86_400:g} days")
    return seconds
