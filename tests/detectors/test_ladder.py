from __future__ import annotations

import pytest

from detectors.ladder import decide, next_level, reason_codes, target_level
from gateway.policy import DetectorThresholds
from gateway.ratelimit.levels import Level

T = DetectorThresholds(watch=0.5, degrade=0.7, throttle=0.85, block=0.97)


def _level(name: str, *reasons: str, expires: int | None = None) -> Level:
    return Level(name, reasons, expires)


@pytest.mark.parametrize(
    ("score", "level"),
    [
        (0.0, "allow"),
        (0.49, "allow"),
        (0.5, "watch"),
        (0.7, "degrade"),
        (0.9, "throttle"),
        (0.97, "block"),
        (1.0, "block"),
    ],
)
def test_target_level(score: float, level: str) -> None:
    assert target_level(score, T) == level


def test_rises_at_once_and_steps_down_only_past_the_margin() -> None:
    assert next_level("allow", 0.98, T, 0.1) == "block"
    assert next_level("block", 0.90, T, 0.1) == "block"  # 0.90 >= 0.97 - 0.1
    assert next_level("block", 0.86, T, 0.1) == "throttle"
    assert next_level("degrade", 0.65, T, 0.1) == "degrade"
    assert next_level("degrade", 0.59, T, 0.1) == "watch"
    assert next_level("degrade", 0.39, T, 0.1) == "allow"
    assert next_level("watch", 0.41, T, 0.1) == "watch"
    assert next_level("watch", 0.72, T, 0.1) == "degrade"


def test_no_flapping_around_a_threshold() -> None:
    level = "allow"
    seen = []
    for score in (0.71, 0.69, 0.71, 0.68, 0.72, 0.66):
        level = next_level(level, score, T, 0.1)
        seen.append(level)
    assert seen == ["degrade"] * 6


def test_decide_sets_a_new_level_with_reasons() -> None:
    d = decide(_level("allow"), 0.8, ("detector:0.80", "x_high"), thresholds=T, hysteresis=0.1)
    assert d.write and d.level == "degrade" and d.reasons == ("detector:0.80", "x_high")


def test_allowlisted_clients_are_never_enforced_upon() -> None:
    d = decide(
        _level("allow"), 1.0, ("detector:1.00",), thresholds=T, hysteresis=0.1, allowlisted=True
    )
    assert not d.write and d.action == "allowlisted"


def test_operator_levels_are_never_lowered() -> None:
    current = _level("block", "operator:manual")
    d = decide(current, 0.0, ("detector:0.00",), thresholds=T, hysteresis=0.1)
    assert not d.write and d.level == "block" and d.reasons == ("operator:manual",)


def test_operator_allow_is_a_pardon() -> None:
    d = decide(
        _level("allow", "operator:false_positive"),
        0.99,
        ("detector:0.99",),
        thresholds=T,
        hysteresis=0.1,
    )
    assert not d.write and d.action == "operator"


def test_detector_may_raise_an_operator_level_and_keeps_its_reasons() -> None:
    d = decide(
        _level("watch", "operator:suspicious"),
        0.99,
        ("detector:0.99",),
        thresholds=T,
        hysteresis=0.1,
    )
    assert d.write and d.level == "block"
    assert d.reasons == ("operator:suspicious", "detector:0.99")


def test_a_held_level_is_renewed_when_half_its_ttl_is_gone() -> None:
    now = 1_000_000.0
    fresh = _level("degrade", "detector:0.80", expires=int(now + 3000 * 1000))
    stale = _level("degrade", "detector:0.80", expires=int(now + 1000 * 1000))
    kw = dict(thresholds=T, hysteresis=0.1, now_ms=now, ttl_s=3600.0)
    assert not decide(fresh, 0.8, ("detector:0.80",), **kw).write  # type: ignore[arg-type]
    assert decide(stale, 0.8, ("detector:0.80",), **kw).write  # type: ignore[arg-type]


def test_reason_codes_name_the_features_that_pushed_the_score_up() -> None:
    explanation = [
        ("template_reuse", 0.4, 0.9, 0.1),
        ("benign_thing", -0.2, 0.1, 0.5),
        ("single_turn_share", 0.1, 0.2, 0.6),
    ]
    codes = reason_codes(0.934, explanation, extra=["campaign:ab12", "campaign_link:ja4"])
    assert codes == (
        "detector:0.93",
        "template_reuse_high",
        "single_turn_share_low",
        "campaign:ab12",
        "campaign_link:ja4",
    )
    assert all("," not in c and " " not in c for c in codes)


def test_thresholds_must_not_decrease() -> None:
    with pytest.raises(ValueError, match="must not decrease"):
        DetectorThresholds(watch=0.8, degrade=0.7)


def test_a_level_is_held_for_min_hold_s_whatever_the_score() -> None:
    current = _level("block", "detector:0.99")
    kw = dict(thresholds=T, hysteresis=0.1, min_hold_s=600.0)
    held = decide(current, 0.0, ("detector:0.00",), held_s=30.0, **kw)  # type: ignore[arg-type]
    assert held.level == "block"
    after = decide(current, 0.0, ("detector:0.00",), held_s=601.0, **kw)  # type: ignore[arg-type]
    assert after.write and after.level == "allow"
    # a higher score still raises at once
    raised = decide(_level("watch"), 0.99, ("detector:0.99",), held_s=1.0, **kw)  # type: ignore[arg-type]
    assert raised.level == "block"
