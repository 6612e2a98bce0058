"""``antidistill report``: flagged clients and campaigns, ranked, with their evidence.

The report is read from Redis through the review read model (:class:`Review`) and rendered
as a terminal table, one JSON document, or one self-contained HTML file (inline CSS and
SVG, no scripts, no external resources; see ``gateway/report_templates``).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
import redis.asyncio as aioredis
import typer

from gateway.admin.review import Campaign, ClientDetail, ClientSummary, Review, to_jsonable
from gateway.cli_support import (
    DataDirOpt,
    PolicyOpt,
    RedisOpt,
    fail,
    load_policy_or_exit,
    parse_duration,
    with_redis,
)
from gateway.keys import KeySpace
from gateway.policy import Policy

FORMATS = ("table", "json", "html")
TOP_REASONS = 3
_SCORE_CODE = re.compile(r"^detector:[0-9.]+$")


@dataclass(frozen=True, slots=True)
class Report:
    """What one report shows: the ranked clients' details and the campaigns."""

    generated_at_ms: int
    since: str  # the look-back as given ("24h"; "never" for all time)
    since_ms: int | None  # None: all time
    flagged_only: bool
    truncated: bool  # more clients matched than the report's limit
    clients: tuple[ClientDetail, ...]  # ranked: flagged first, highest score first
    campaigns: tuple[Campaign, ...]  # highest score first
    thresholds: dict[str, float]  # the policy's detector thresholds (those at most 1)
    samples_kept: bool  # policy store.retention.keep_prompt_samples
    shadow: bool  # policy shadow mode


async def collect(
    redis: aioredis.Redis,
    keys: KeySpace,
    policy: Policy,
    *,
    since: str,
    since_ms: int | None,
    flagged_only: bool,
    limit: int,
    now_ms: int,
) -> Report:
    """Read the report's clients (at most ``limit``) and campaigns from Redis."""
    review = Review(redis, keys, lambda: policy)
    listed = await review.clients(flagged=flagged_only, since_ms=since_ms, limit=limit + 1)
    details: list[ClientDetail] = []
    for summary in listed[:limit]:
        detail = await review.client(summary.id, since_ms=since_ms)
        if detail is None:
            continue
        details.append(detail)
    campaigns = await review.campaigns(since_ms=since_ms)
    thresholds = {
        name: value
        for name, value in policy.detector.thresholds.model_dump().items()
        if value <= 1.0
    }
    return Report(
        generated_at_ms=now_ms,
        since=since,
        since_ms=since_ms,
        flagged_only=flagged_only,
        truncated=len(listed) > limit,
        clients=tuple(details),
        campaigns=tuple(campaigns),
        thresholds=thresholds,
        samples_kept=policy.store.retention.keep_prompt_samples,
        shadow=policy.shadow,
    )


# -- formatting helpers shared by the renderers ---------------------------------------------


def iso_time(ms: int | None) -> str:
    """UTC time of ``ms`` as ``2025-01-31 12:00:00Z``; "-" if unknown."""
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


def window_text(report: Report) -> str:
    if report.since_ms is None:
        return "all time"
    return f"since {iso_time(report.since_ms)} ({report.since})"


def level_text(summary: ClientSummary) -> str:
    if summary.shadow_level and summary.shadow_level != summary.level:
        return f"{summary.level} (shadow: {summary.shadow_level})"
    return summary.level


def top_reasons(summary: ClientSummary, count: int = TOP_REASONS) -> tuple[str, ...]:
    """The detector's strongest reason codes, else the enforced level's (an operator's),
    without the ``detector:<score>`` code (the score has its own column)."""
    codes = summary.reasons or summary.level_reasons
    return tuple(c for c in codes if not _SCORE_CODE.match(c))[:count]


def plural(count: int, noun: str) -> str:
    """ "1 campaign", "2 campaigns"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def compact(n: float) -> str:
    """1234 → "1.2k", 3_400_000 → "3.4M"."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return f"{n:g}"


# -- table ----------------------------------------------------------------------------------


def _plain(text: str, width: int | None = None) -> str:
    """Attacker-controlled text made safe for a terminal: no control or escape characters."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    if width is not None and len(clean) > width:
        return clean[: width - 1] + "…"
    return clean


Row = tuple[str, ...]


def _columns(header: Row, rows: Sequence[Row], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _client_row(rank: int, s: ClientSummary) -> Row:
    return (
        str(rank),
        _plain(s.id[:12]),
        _plain(s.name or "-", 20),
        _plain(level_text(s), 28),
        "-" if s.score is None else f"{s.score:.3f}",
        _plain(", ".join(top_reasons(s)) or "-", 60),
        str(s.requests),
        compact(s.tokens),
        _plain(s.label or "-"),
        _plain(s.campaign or "-", 24),
    )


def _campaign_row(c: Campaign) -> Row:
    return (
        _plain(c.id, 32),
        f"{c.score:.3f}",
        _plain(" ".join(m[:12] for m in c.members), 80),
        _plain(", ".join(c.links) or "-", 40),
        _plain(", ".join(c.reasons[:TOP_REASONS]) or "-", 60),
    )


CLIENT_HEADER: Row = (
    "#", "client", "name", "level", "score", "top reasons", "requests", "tokens", "label",
    "campaign",
)  # fmt: skip
CAMPAIGN_HEADER: Row = ("campaign", "score", "members", "links", "reasons")


def render_table(report: Report) -> str:
    """A terminal table: ranked clients, then campaigns."""
    kind = "flagged client" if report.flagged_only else "client"
    lines = [f"antidistill report, {iso_time(report.generated_at_ms)}: {window_text(report)}"]
    if report.shadow:
        lines.append("shadow mode: levels are logged, not enforced")
    lines.append("")
    if not report.clients:
        lines.append(f"no {kind}s {window_text(report)}")
    else:
        more = " (the top ones; more with --limit)" if report.truncated else ""
        lines.append(plural(len(report.clients), kind) + more)
        rows = [_client_row(i, d.summary) for i, d in enumerate(report.clients, 1)]
        lines += _columns(CLIENT_HEADER, rows, right={0, 4, 6, 7})
    lines.append("")
    if not report.campaigns:
        lines.append("no campaigns")
    else:
        lines.append(plural(len(report.campaigns), "campaign"))
        rows = [_campaign_row(c) for c in report.campaigns]
        lines += _columns(CAMPAIGN_HEADER, rows, right={1})
    return "\n".join(lines) + "\n"


# -- json -----------------------------------------------------------------------------------


def render_json(report: Report) -> str:
    """One JSON document: ``generated_at``, ``since``, ``clients``, ``campaigns``."""
    doc: dict[str, Any] = {
        "generated_at": iso_time(report.generated_at_ms),
        "generated_at_ms": report.generated_at_ms,
        "since": None if report.since_ms is None else iso_time(report.since_ms),
        "since_ms": report.since_ms,
        "window": report.since,
        "flagged_only": report.flagged_only,
        "truncated": report.truncated,
        "shadow": report.shadow,
        "thresholds": report.thresholds,
        "clients": [to_jsonable(detail) for detail in report.clients],
        "campaigns": [to_jsonable(campaign) for campaign in report.campaigns],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return render_json(report)
    if fmt == "html":
        from gateway.report_templates import render_html

        return render_html(report)
    return render_table(report)


# -- output ---------------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (a reader sees the old file or the new).

    The file is readable by its owner only: a report can hold prompt samples.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def report_command(
    since: Annotated[
        str, typer.Option("--since", help="Look back this far: 30m, 24h, 7d; 'never': all time.")
    ] = "24h",
    fmt: Annotated[str, typer.Option("--format", help="table, json or html.")] = "table",
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
    include_all: Annotated[
        bool, typer.Option("--all", help="Include clients that are not flagged.")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10_000, help="At most this many clients.")
    ] = 50,
    redis: RedisOpt = None,
    data_dir: DataDirOpt = Path("var"),
    policy: PolicyOpt = None,
) -> None:
    """Flagged clients and campaigns, ranked, with the evidence a reviewer needs."""
    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt[:40]!r}")
    try:
        look_back_s = parse_duration(since)
    except typer.BadParameter as exc:
        raise fail(f"--since: {exc}") from None
    if out is not None and not out.parent.is_dir():
        raise fail(f"--out: directory {out.parent} does not exist")
    loaded = load_policy_or_exit(policy)
    now_ms = int(time.time() * 1000)
    since_ms = None if look_back_s is None else now_ms - int(look_back_s * 1000)
    found: list[Report] = []

    async def job(client: aioredis.Redis, keys: KeySpace) -> None:
        found.append(
            await collect(
                client,
                keys,
                loaded,
                since=since,
                since_ms=since_ms,
                flagged_only=not include_all,
                limit=limit,
                now_ms=now_ms,
            )
        )

    with_redis(redis, data_dir, policy, job)
    text = render(found[0], fmt)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        write_atomically(out, text)
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc}", code=1) from None
    typer.echo(
        f"wrote {out} ({len(found[0].clients)} clients, {len(text.encode()):,} bytes)", err=True
    )
