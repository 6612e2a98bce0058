"""Small inline SVG charts for the dashboard and the HTML report.

Pure functions: values in, an SVG element out, as :class:`markupsafe.Markup` ready to drop
into an autoescaped Jinja2 template. No JavaScript, no external assets, no fonts beyond the
page's own: a page with ``Content-Security-Policy: default-src 'none'; style-src
'unsafe-inline'`` shows them as they are. Every piece of text that reaches the SVG (levels,
labels, level names of thresholds) is escaped, so attacker-chosen strings stay text.

Non-finite numbers (NaN, ±inf), which a damaged Redis entry can produce, are never drawn:
a score chart skips such points; a bar chart shows "n/a" for such a value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

from gateway.admin.review import ScorePoint

LEVEL_COLOURS: Mapping[str, str] = {
    "allow": "#2e7d32",
    "watch": "#b58900",
    "degrade": "#e65100",
    "throttle": "#c62828",
    "block": "#6a1b1a",
}
"""Stroke colour of each enforcement level; other levels are drawn grey."""

_GREY = "#757575"
_AXIS = "#9e9e9e"
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'

# Candidate time-axis steps (seconds): the first that gives at most _MAX_TICKS ticks wins.
_TIME_STEPS = (
    1, 2, 5, 10, 15, 30,
    60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800, 1209600, 2592000,
)  # fmt: skip
_MAX_TICKS = 6


def score_chart(
    points: Sequence[ScorePoint],
    thresholds: Mapping[str, float],
    width: int = 640,
    height: int = 180,
) -> Markup:
    """A client's detector score over time, as an inline SVG line chart.

    ``points`` are drawn in time order (they need not be sorted); the y axis runs from 0 to 1
    (scores outside are clamped), the x axis over the points' time span in UTC, with tick
    labels as ``HH:MM:SS``, ``HH:MM`` or ``MM-DD HH:MM`` as the span needs. Each point is a
    dot coloured by the level the detector gave it, with a native tooltip (time, score,
    level). ``thresholds`` maps level names to the score at which they start (the policy's
    ``detector.thresholds``): each is a dashed, labelled line; thresholds above 1 (levels
    never reached) and non-finite ones are left out. No points: an empty frame saying so.
    """
    width, height = max(int(width), 200), max(int(height), 100)
    left, right, top, bottom = 34, 92, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    good = sorted(
        (p for p in points if math.isfinite(p.score) and p.ts_ms >= 0), key=lambda p: p.ts_ms
    )

    def y(score: float) -> float:
        return top + plot_h * (1.0 - min(max(score, 0.0), 1.0))

    parts = [_open(width, height, _score_label(good))]
    parts.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" '
        f'fill="none" stroke="{_AXIS}" stroke-width="1"/>'
    )
    for tick in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" text-anchor="end" {_FONT} '
            f'fill="{_GREY}">{tick:g}</text>'
        )
    for name, value in sorted(thresholds.items(), key=lambda kv: kv[1]):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            continue
        colour = LEVEL_COLOURS.get(name, _GREY)
        ty = y(value)
        parts.append(
            f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" '
            f'stroke="{colour}" stroke-width="1" stroke-dasharray="4 3"/>'
            f'<text x="{left + plot_w + 4}" y="{ty + 4:.1f}" {_FONT} fill="{colour}">'
            f"{escape(name)} {value:.2f}</text>"
        )
    if not good:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{y(0.25):.1f}" '
            f'text-anchor="middle" {_FONT} fill="{_GREY}">no scores yet</text>'
        )
        return _close(parts)

    start, end = good[0].ts_ms, good[-1].ts_ms
    if end - start < 1000:  # one point, or all at once: a minute around them
        start, end = start - 30_000, end + 30_000

    def x(ts_ms: int) -> float:
        return left + plot_w * (ts_ms - start) / (end - start)

    for tick_ms, label in time_ticks(start, end):
        tx = x(tick_ms)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top + plot_h}" x2="{tx:.1f}" y2="{top + plot_h + 4}" '
            f'stroke="{_AXIS}"/>'
            f'<text x="{tx:.1f}" y="{top + plot_h + 16}" text-anchor="middle" {_FONT} '
            f'fill="{_GREY}">{escape(label)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w + 4}" y="{top + plot_h + 16}" {_FONT} fill="{_GREY}">UTC</text>'
    )
    coords = " ".join(f"{x(p.ts_ms):.1f},{y(p.score):.1f}" for p in good)
    parts.append(f'<polyline points="{coords}" fill="none" stroke="#1565c0" stroke-width="1.5"/>')
    for p in good:
        tip = f"{_utc(p.ts_ms, '%Y-%m-%d %H:%M:%S')} UTC  score {p.score:.3f}  {p.level}"
        parts.append(
            f'<circle cx="{x(p.ts_ms):.1f}" cy="{y(p.score):.1f}" r="2.5" '
            f'fill="{LEVEL_COLOURS.get(p.level, _GREY)}"><title>{escape(tip)}</title></circle>'
        )
    return _close(parts)


def bar_chart(
    items: Sequence[tuple[str, float]],
    *,
    markers: Sequence[float | None] | None = None,
    marker_label: str = "",
    width: int = 640,
    bar_height: int = 16,
    label_width: int = 200,
    value_format: str = "{:.3g}",
) -> Markup:
    """Horizontal bars, one row per ``(label, value)``, on one shared scale that includes 0.

    Values may be negative (bars then grow left of a zero line, e.g. a feature that lowered
    a score). ``markers``, if given, holds one optional reference value per item, drawn as a
    black tick on the same scale — e.g. the benign median beside a client's feature value;
    ``marker_label`` names it in a legend. Labels longer than fit are cut with "…" (the full
    label is the row's tooltip). ``value_format`` formats the number printed after each bar.
    No items: an empty chart saying so.
    """
    if markers is not None and len(markers) != len(items):
        raise ValueError("markers must have one entry per item")
    width, bar_height = max(int(width), 200), max(int(bar_height), 8)
    label_width = min(max(int(label_width), 40), width // 2)
    value_w, gap = 64, bar_height // 3
    legend = bool(marker_label) and markers is not None and any(m is not None for m in markers)
    top = 18 if legend else 4
    rows = max(len(items), 1)
    height = top + rows * (bar_height + gap) + 4
    aria = f"bar chart of {len(items)} items"
    if marker_label:
        aria += f", ticks: {marker_label}"
    parts = [_open(width, height, aria)]
    if not items:
        parts.append(
            f'<text x="{width / 2:.1f}" y="{top + bar_height - 4}" text-anchor="middle" {_FONT} '
            f'fill="{_GREY}">no data</text>'
        )
        return _close(parts)

    finite = [v for _, v in items if math.isfinite(v)]
    finite += [m for m in markers or () if m is not None and math.isfinite(m)]
    low, high = min([0.0, *finite]), max([0.0, *finite])
    if high - low <= 0:
        high = 1.0
    x0, plot_w = label_width + 6, width - label_width - 6 - value_w

    def x(value: float) -> float:
        return x0 + plot_w * (value - low) / (high - low)

    if legend:
        parts.append(
            f'<line x1="{x0}" y1="4" x2="{x0}" y2="14" stroke="#000" stroke-width="2"/>'
            f'<text x="{x0 + 6}" y="13" {_FONT} fill="{_GREY}">{escape(marker_label)}</text>'
        )
    zero = x(0.0)
    max_chars = max(label_width // 6, 4)
    for row, (label, value) in enumerate(items):
        ry = top + row * (bar_height + gap)
        mid = ry + bar_height / 2 + 4
        shown = label if len(label) <= max_chars else label[: max_chars - 1] + "…"
        parts.append(f"<g><title>{escape(label)}</title>")
        parts.append(
            f'<text x="{label_width}" y="{mid:.1f}" text-anchor="end" {_FONT} fill="#212121">'
            f"{escape(shown)}</text>"
        )
        if math.isfinite(value):
            bx = min(zero, x(value))
            colour = "#1565c0" if value >= 0 else "#2e7d32"
            parts.append(
                f'<rect x="{bx:.1f}" y="{ry}" width="{abs(x(value) - zero):.1f}" '
                f'height="{bar_height}" fill="{colour}" fill-opacity="0.75"/>'
            )
            text = escape(value_format.format(value))
        else:
            text = Markup("n/a")
        parts.append(
            f'<text x="{x0 + plot_w + 4}" y="{mid:.1f}" {_FONT} fill="#212121">{text}</text>'
        )
        marker = markers[row] if markers is not None else None
        if marker is not None and math.isfinite(marker):
            mx = x(marker)
            parts.append(
                f'<line x1="{mx:.1f}" y1="{ry - 1}" x2="{mx:.1f}" y2="{ry + bar_height + 1}" '
                f'stroke="#000" stroke-width="2"/>'
            )
        parts.append("</g>")
    if low < 0:
        parts.append(
            f'<line x1="{zero:.1f}" y1="{top - 2}" x2="{zero:.1f}" y2="{height - 2}" '
            f'stroke="{_AXIS}"/>'
        )
    return _close(parts)


def time_ticks(start_ms: int, end_ms: int, max_ticks: int = _MAX_TICKS) -> list[tuple[int, str]]:
    """Round UTC times between ``start_ms`` and ``end_ms`` (at most ``max_ticks``), each with
    its label: ``HH:MM:SS`` for spans under 10 minutes, ``HH:MM`` under a day, else
    ``MM-DD HH:MM``."""
    span_s = max((end_ms - start_ms) / 1000.0, 1.0)
    lo, hi = math.ceil(start_ms / 1000), math.floor(end_ms / 1000)

    def count(step: int) -> int:
        return hi // step - math.ceil(lo / step) + 1

    step = next((s for s in _TIME_STEPS if count(s) <= max_ticks), None)
    if step is None:
        step = math.ceil(span_s / max_ticks / 86400) * 86400
    fmt = "%H:%M:%S" if span_s < 600 else "%H:%M" if span_s < 86400 else "%m-%d %H:%M"
    seconds = range(math.ceil(lo / step) * step, hi + 1, step)
    return [(t * 1000, _utc(t * 1000, fmt)) for t in seconds][:max_ticks]


def _utc(ts_ms: int, fmt: str) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime(fmt)


def _score_label(points: Sequence[ScorePoint]) -> str:
    if not points:
        return "score over time: no scores yet"
    last = points[-1]
    return f"score over time: {len(points)} points, latest {last.score:.3f} ({last.level})"


def _open(width: int, height: int, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
    )


def _close(parts: list[str]) -> Markup:
    parts.append("</svg>")
    # Every interpolated string above went through escape(); numbers are formatted here.
    return Markup("".join(parts))  # noqa: S704
