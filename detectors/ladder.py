"""The enforcement ladder: from a client's detector score to its enforcement level.

Pure functions, no I/O: the worker reads the client's current level, calls :func:`decide`
and writes what it says. The rules, in order:

1. An allowlisted client is never enforced upon (the score is still recorded).
2. A level an operator set (a reason starting with ``operator:``) is never lowered; an
   operator's ``allow`` is a pardon the detector leaves alone until it expires. The
   detector may raise any other operator level, keeping the operator's reasons.
3. Otherwise the level rises at once to the highest level whose threshold the score
   reaches, and steps down only once the score falls below a level's threshold minus the
   hysteresis margin — so a score hovering at a threshold does not flap — and never
   before the level has been held for ``min_hold_s`` (a harvester that pauses, or whose
   window turns over, is not let go seconds after it was caught).
4. A level the detector holds is re-written (its TTL renewed) once half its TTL is gone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.policy import DetectorThresholds
from gateway.ratelimit.levels import LEVELS, Level

RANK = {name: i for i, name in enumerate(LEVELS)}
OPERATOR = "operator:"
DETECTOR = "detector:"
_CODE = re.compile(r"[^a-z0-9_:\-.]+")

Action = Literal["set", "keep", "allowlisted", "operator"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one client: ``set`` means write ``level`` with ``reasons``."""

    level: str
    reasons: tuple[str, ...]
    action: Action

    @property
    def write(self) -> bool:
        return self.action == "set"


def threshold(thresholds: DetectorThresholds, level: str) -> float:
    return 0.0 if level == "allow" else float(getattr(thresholds, level))


def target_level(score: float, thresholds: DetectorThresholds) -> str:
    """The highest level whose threshold ``score`` reaches (``allow`` if none)."""
    found = "allow"
    for level in LEVELS[1:]:
        if score >= threshold(thresholds, level):
            found = level
    return found


def next_level(
    current: str, score: float, thresholds: DetectorThresholds, hysteresis: float
) -> str:
    """``current`` moved by ``score``: up at once, down only past the hysteresis margin."""
    target = target_level(score, thresholds)
    rank = RANK.get(current, 0)
    if RANK[target] >= rank:
        return target
    for level in reversed(LEVELS[1 : rank + 1]):
        if score >= threshold(thresholds, level) - hysteresis:
            return level
    return "allow"


def is_operator(level: Level) -> bool:
    return any(r.startswith(OPERATOR) for r in level.reasons)


def decide(
    current: Level,
    score: float,
    reasons: Sequence[str],
    *,
    thresholds: DetectorThresholds,
    hysteresis: float,
    allowlisted: bool = False,
    now_ms: float = 0.0,
    ttl_s: float | None = None,
    held_s: float | None = None,
    min_hold_s: float = 0.0,
) -> Decision:
    """The ladder's verdict for one client whose stored level is ``current``.

    ``reasons`` are the detector's reason codes for this score (see :func:`reason_codes`);
    ``ttl_s`` and ``now_ms`` decide when a held level is renewed; ``held_s`` is how long
    the detector has held ``current`` (None: unknown, no minimum applies).
    """
    if allowlisted:
        return Decision("allow", (), "allowlisted")
    level = next_level(current.level, score, thresholds, hysteresis)
    if RANK[level] < RANK.get(current.level, 0) and held_s is not None and held_s < min_hold_s:
        level = current.level
    if is_operator(current):
        if current.level == "allow" or RANK[level] <= RANK[current.level]:
            return Decision(current.level, current.reasons, "operator")
        kept = tuple(r for r in current.reasons if r.startswith(OPERATOR))
        return Decision(level, _unique((*kept, *reasons)), "set")
    if level != current.level:
        return Decision(level, tuple(reasons), "set")
    if level == "allow":
        return Decision(level, current.reasons, "keep")
    renew = ttl_s is not None and (
        current.expires_at_ms is None or current.expires_at_ms - now_ms < ttl_s * 500.0
    )
    return Decision(level, tuple(reasons) if renew else current.reasons, "set" if renew else "keep")


def reason_code(text: str) -> str:
    """``text`` as a stored reason code: lower case, no commas or spaces, at most 64 chars."""
    return _CODE.sub("_", text.strip().lower())[:64] or "unknown"


def reason_codes(
    score: float,
    explanation: Iterable[tuple[str, float, float, float]],
    top: int = 3,
    extra: Iterable[str] = (),
) -> tuple[str, ...]:
    """``detector:<score>`` followed by the features that pushed the score up.

    ``explanation`` is ``Detector.explain``'s ``(feature, contribution, value,
    benign_median)`` list; a feature becomes ``<feature>_high`` (or ``_low``) by where its
    value sits against the benign median. ``extra`` codes (campaign links) come last.
    """
    codes = [f"{DETECTOR}{score:.2f}"]
    for feature, contribution, value, median in explanation:
        if len(codes) > top:
            break
        if contribution <= 0:
            continue
        codes.append(reason_code(f"{feature}_{'high' if value >= median else 'low'}"))
    return _unique((*codes, *(reason_code(e) for e in extra)))


def _unique(codes: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(codes))
