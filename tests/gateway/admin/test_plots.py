"""The inline SVG charts: well-formed, escaped, and drawn where the numbers say."""

from __future__ import annotations

import itertools
import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import jinja2
import pytest
from markupsafe import Markup

from gateway.admin.plots import bar_chart, score_chart, time_ticks
from gateway.admin.review import ScorePoint

SVG = "{http://www.w3.org/2000/svg}"
THRESHOLDS = {"watch": 0.5, "degrade": 0.7, "throttle": 0.85, "block": 0.97}
T0 = int(datetime(2025, 3, 1, 12, 0, tzinfo=UTC).timestamp() * 1000)


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return ["".join(el.itertext()) for el in root.iter(f"{SVG}text")]


def test_score_chart_is_well_formed_markup_with_labelled_thresholds() -> None:
    points = [
        ScorePoint(T0 + i * 60_000, i / 10, "watch" if i >= 5 else "allow") for i in range(10)
    ]
    svg = score_chart(points, THRESHOLDS)
    assert isinstance(svg, Markup)
    root = parse(svg)
    assert root.get("width") == "640" and root.get("height") == "180"
    dashed = [el for el in root.iter(f"{SVG}line") if el.get("stroke-dasharray")]
    assert len(dashed) == 4
    labels = texts(root)
    for name, value in THRESHOLDS.items():
        assert f"{name} {value:.2f}" in labels
    assert len(list(root.iter(f"{SVG}circle"))) == 10
    assert "no scores yet" not in labels


def test_score_chart_places_scores_on_a_zero_to_one_axis_in_time_order() -> None:
    points = [
        ScorePoint(T0 + 120_000, 1.0, "block"),
        ScorePoint(T0, 0.0, "allow"),
        ScorePoint(T0 + 60_000, 0.5, "watch"),
        ScorePoint(T0 + 90_000, 7.0, "block"),  # clamped to 1
    ]
    root = parse(score_chart(points, {}))
    ys = {round(float(c.get("cy", "nan")), 1) for c in root.iter(f"{SVG}circle")}
    top, bottom = 10.0, 180.0 - 26.0
    assert ys == {top, bottom, round((top + bottom) / 2, 1)}
    line = next(root.iter(f"{SVG}polyline"))
    xs = [float(pair.split(",")[0]) for pair in line.get("points", "").split()]
    assert xs == sorted(xs) and len(xs) == 4
    assert xs[0] == 34.0 and xs[-1] == 640 - 92.0


def test_score_chart_skips_thresholds_never_reached_and_non_finite_points() -> None:
    points = [ScorePoint(T0, math.nan, "watch"), ScorePoint(T0 + 1000, 0.4, "allow")]
    root = parse(score_chart(points, {"watch": 0.5, "block": 1.5, "odd": math.inf}))
    assert len([el for el in root.iter(f"{SVG}line") if el.get("stroke-dasharray")]) == 1
    assert len(list(root.iter(f"{SVG}circle"))) == 1


def test_score_chart_without_points_says_so() -> None:
    root = parse(score_chart([], THRESHOLDS))
    assert "no scores yet" in texts(root)
    assert list(root.iter(f"{SVG}polyline")) == []


def test_score_chart_escapes_level_and_threshold_names() -> None:
    evil = '"><script>alert(1)</script>'
    svg = score_chart([ScorePoint(T0, 0.9, evil)], {evil: 0.3})
    assert "<script" not in svg
    root = parse(svg)  # still well-formed: the text is text
    assert f"{evil} 0.30" in texts(root)
    assert evil in (root.get("aria-label") or "")
    tooltip = "".join(next(root.iter(f"{SVG}circle")).itertext())
    assert evil in tooltip and "2025-03-01 12:00:00 UTC" in tooltip


@pytest.mark.parametrize(
    ("span_s", "pattern"),
    [
        (300, r"^\d\d:\d\d:\d\d$"),
        (6 * 3600, r"^\d\d:\d\d$"),
        (3 * 86400, r"^\d\d-\d\d \d\d:\d\d$"),
        (90 * 86400, r"^\d\d-\d\d \d\d:\d\d$"),
    ],
)
def test_time_ticks_are_round_readable_and_few(span_s: int, pattern: str) -> None:
    start, end = T0 + 7_321, T0 + 7_321 + span_s * 1000
    ticks = time_ticks(start, end)
    assert 2 <= len(ticks) <= 6
    stamps = [t for t, _ in ticks]
    assert stamps == sorted(stamps) and start <= stamps[0] and stamps[-1] <= end
    assert all(t % 1000 == 0 for t in stamps)
    assert all(re.match(pattern, label) for _, label in ticks)
    step = stamps[1] - stamps[0]
    assert all(b - a == step for a, b in itertools.pairwise(stamps))


def test_score_chart_time_axis_labels_in_utc() -> None:
    points = [ScorePoint(T0 + i * 600_000, 0.2, "allow") for i in range(7)]  # one hour
    labels = texts(parse(score_chart(points, {})))
    assert "12:00" in labels and "13:00" in labels and "UTC" in labels


def test_bar_chart_draws_signed_values_and_reference_ticks_on_one_scale() -> None:
    items = [("top_logprobs_mean_high", 4.0), ("temperature_zero", -2.0), ("n_gt_1", 1.0)]
    svg = bar_chart(items, markers=[1.0, None, 3.0], marker_label="benign median", width=400)
    root = parse(svg)
    rects = list(root.iter(f"{SVG}rect"))
    widths = [float(r.get("width", "0")) for r in rects]
    assert widths[0] == pytest.approx(2 * widths[1], abs=0.2)
    assert widths[0] == pytest.approx(4 * widths[2], abs=0.2)
    # the negative bar ends where the positive ones start: at zero
    zero = float(rects[0].get("x", "0"))
    assert float(rects[1].get("x", "0")) + widths[1] == pytest.approx(zero, abs=0.2)
    ticks = [el for el in root.iter(f"{SVG}line") if el.get("stroke") == "#000"]
    assert len(ticks) == 3  # legend + two markers
    labels = texts(root)
    assert "benign median" in labels and "4" in labels and "-2" in labels


def test_bar_chart_handles_missing_values_long_labels_and_no_items() -> None:
    long = "a_very_long_feature_name_that_does_not_fit_in_the_label_column_at_all"
    root = parse(bar_chart([(long, math.nan), ("ok", 2.0)], label_width=120))
    labels = texts(root)
    assert "n/a" in labels
    assert any(t.endswith("…") and long.startswith(t[:-1]) for t in labels)
    assert long in ["".join(t.itertext()) for t in root.iter(f"{SVG}title")]
    assert "no data" in texts(parse(bar_chart([])))
    with pytest.raises(ValueError, match="one entry per item"):
        bar_chart([("a", 1.0)], markers=[])


def test_bar_chart_escapes_labels() -> None:
    evil = "<img src=x onerror=alert(1)>"
    svg = bar_chart([(evil, 1.0)], markers=[0.5], marker_label=evil)
    assert "<img" not in svg
    assert evil in texts(parse(svg))


def test_charts_are_not_escaped_again_in_an_autoescaped_template() -> None:
    env = jinja2.Environment(autoescape=True)
    html = env.from_string("<div>{{ chart }}</div>").render(chart=bar_chart([("x", 1.0)]))
    assert html.startswith("<div><svg ")
