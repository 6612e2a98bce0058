"""The dashboard's Jinja2 templates and the filters they use.

Autoescaping is on for every template: client names, prompt samples, reasons, metadata and
client ids from the URL are attacker-controlled and only ever reach a page as text. The
one stylesheet (``style.css``) is inlined into each page; there are no scripts and no
external resources.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined

from gateway.admin.actions import LABELS, MAX_ACTOR, MAX_REASON
from gateway.admin.auth import CSRF_FIELD
from gateway.ratelimit.levels import LEVELS

SHORT_ID = 12
TTL_CHOICES = (
    ("1h", "1 hour"),
    ("12h", "12 hours"),
    ("24h", "1 day"),
    ("7d", "7 days"),
    ("never", "no expiry"),
)
"""The durations the level and block forms offer (values as ``api.parse_duration`` reads)."""


def environment() -> Environment:
    """A Jinja2 environment over this package's templates, autoescaping everything."""
    env = Environment(
        loader=PackageLoader("gateway.admin", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ts=when, short=short, urlpart=urlpart, score=score, num=num, pct=pct, thousands=thousands
    )
    env.globals.update(
        levels=LEVELS,
        labels=LABELS,
        ttls=TTL_CHOICES,
        csrf_field=CSRF_FIELD,
        max_reason=MAX_REASON,
        max_actor=MAX_ACTOR,
    )
    return env


def when(ts_ms: int | None) -> str:
    """``2025-03-01 12:00:05 UTC`` for a time in ms; ``—`` for none."""
    if ts_ms is None or ts_ms <= 0:
        return "—"
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short(client_id: str) -> str:
    """The first characters of a long id (the full id goes in the link's title)."""
    return client_id if len(client_id) <= SHORT_ID else client_id[:SHORT_ID] + "…"


def urlpart(text: str) -> str:
    """``text`` as one URL path segment (or fragment): every reserved character quoted."""
    return quote(text, safe="")


def score(value: float | None) -> str:
    return "—" if value is None else num(value, "{:.3f}")


def num(value: float | None, fmt: str = "{:.4g}") -> str:
    if value is None:
        return "—"
    return fmt.format(value) if math.isfinite(value) else "n/a"


def pct(value: float) -> str:
    return f"{100 * value:.1f} %" if math.isfinite(value) else "n/a"


def thousands(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"
