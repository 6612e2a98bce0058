"""The HTML form of ``antidistill report``: one self-contained file.

Inline CSS and inline SVG charts (:mod:`gateway.admin.plots`), no scripts, no external
resources, and a Content-Security-Policy that would block any that slipped in. Jinja2
autoescapes everything: prompt samples, client names and metadata are attacker-controlled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import metadata

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from gateway.admin.plots import bar_chart, score_chart
from gateway.admin.review import FLAGGED_LEVELS, Campaign, ClientDetail
from gateway.report import (
    Report,
    compact,
    iso_time,
    level_text,
    plural,
    top_reasons,
    window_text,
)

EVIDENCE_ROWS = 10
SAMPLES_SHOWN = 10
AUDIT_ROWS = 50
LEVELS = ("allow", *FLAGGED_LEVELS)


@dataclass(frozen=True, slots=True)
class Member:
    """A linked account, with the anchor of its section if the report has one."""

    id: str
    anchor: str | None


@dataclass(frozen=True, slots=True)
class CampaignView:
    campaign: Campaign
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class ClientView:
    """One client's section: its detail and what is computed for display."""

    rank: int
    anchor: str
    detail: ClientDetail
    score_svg: Markup
    evidence_svg: Markup | None
    top_reasons: tuple[str, ...]
    level_text: str
    tokens_per_request: float | None
    campaigns: tuple[CampaignView, ...]


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("gateway", "report_templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = iso_time
    env.filters["compact"] = compact
    env.filters["num"] = _num
    env.filters["pct"] = lambda x: f"{100 * x:.1f} %"
    env.filters["short"] = lambda s: s[:12]
    env.globals["plural"] = plural
    env.globals["level_class"] = lambda level: f"lvl-{level}" if level in LEVELS else "lvl-other"
    return env


def _num(value: float | None, digits: int = 3) -> str:
    """A number for a table: integers with separators, others to ``digits`` significant."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def _campaign_views(
    campaigns: tuple[Campaign, ...], anchors: dict[str, str]
) -> tuple[CampaignView, ...]:
    return tuple(
        CampaignView(c, tuple(Member(m, anchors.get(m)) for m in c.members)) for c in campaigns
    )


def _client_view(
    rank: int, detail: ClientDetail, report: Report, anchors: dict[str, str]
) -> ClientView:
    s = detail.summary
    evidence = detail.evidence[:EVIDENCE_ROWS]
    return ClientView(
        rank=rank,
        anchor=anchors[s.id],
        detail=detail,
        score_svg=score_chart(detail.history, report.thresholds),
        evidence_svg=(
            bar_chart([(e.feature, e.contribution) for e in evidence], value_format="{:+.3f}")
            if evidence
            else None
        ),
        top_reasons=top_reasons(s),
        level_text=level_text(s),
        tokens_per_request=s.tokens / s.requests if s.requests else None,
        campaigns=_campaign_views(detail.campaigns, anchors),
    )


def render_html(report: Report) -> str:
    """The report as one HTML document."""
    anchors = {d.summary.id: f"client-{i}" for i, d in enumerate(report.clients, 1)}
    clients = [_client_view(i, d, report, anchors) for i, d in enumerate(report.clients, 1)]
    try:
        version = metadata.version("antidistill")
    except metadata.PackageNotFoundError:
        version = "dev"
    template = _environment().get_template("report.html")
    return template.render(
        report=report,
        clients=clients,
        campaigns=_campaign_views(report.campaigns, anchors),
        window=window_text(report),
        version=version,
        samples_shown=SAMPLES_SHOWN,
        audit_rows=AUDIT_ROWS,
    )
