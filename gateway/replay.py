"""``antidistill policy replay``: which clients a candidate policy would treat differently.

Reads the decision log, replays it under the current and the candidate policy
(:mod:`detectors.replay`: the detector worker's logic in event time), and lists the
clients whose final or highest level differs, and why — as a table or JSON.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import redis.asyncio as aioredis
import typer

from detectors.ladder import RANK
from detectors.replay import Cadence, ReplayOutcome, default_workers, link_interval_s, replay_many
from detectors.scoring import ModelUnavailable, load_default_models
from gateway.cli_support import (
    DataDirOpt,
    RedisOpt,
    fail,
    load_policy_or_exit,
    parse_duration,
    with_redis,
)
from gateway.keys import KeySpace
from gateway.policy import Policy
from gateway.store.events import DecisionEvent

DEFAULT_LIMIT = 200_000
PAGE = 5_000
SHOWN_REASONS = 4
PROGRESS_EVENTS = 20_000  # replays this long say so first (on stderr): they take a while


# -- comparing two replays ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """A client whose final or highest level differs between two replays."""

    client: str
    name: str
    current: ReplayOutcome
    candidate: ReplayOutcome

    @property
    def direction(self) -> Literal["more", "less"]:
        """``more``: the candidate flags it higher (its highest level, then its final)."""
        cur = (RANK[self.current.max_level], RANK[self.current.final_level])
        cand = (RANK[self.candidate.max_level], RANK[self.candidate.final_level])
        return "more" if cand > cur else "less"


@dataclass(frozen=True, slots=True)
class Comparison:
    changes: tuple[Change, ...]
    unchanged: int

    @property
    def more(self) -> int:
        return sum(c.direction == "more" for c in self.changes)

    @property
    def less(self) -> int:
        return sum(c.direction == "less" for c in self.changes)

    def summary(self) -> str:
        return (
            f"{self.more} {_clients(self.more)} would be flagged more, {self.less} less; "
            f"{self.unchanged} unchanged."
        )


def _clients(n: int) -> str:
    return "client" if n == 1 else "clients"


def compare(
    current: Mapping[str, ReplayOutcome],
    candidate: Mapping[str, ReplayOutcome],
    names: Mapping[str, str] | None = None,
) -> Comparison:
    """Clients whose final or highest level differs, the candidate's higher ones first."""
    changes = []
    unchanged = 0
    for client, cand in candidate.items():
        cur = current.get(client)
        if cur is None:
            continue
        if cur.final_level == cand.final_level and cur.max_level == cand.max_level:
            unchanged += 1
            continue
        changes.append(Change(client, (names or {}).get(client, ""), cur, cand))

    def order(c: Change) -> tuple[int, int, float]:
        top = max(RANK[c.candidate.max_level], RANK[c.current.max_level])
        return (c.direction != "more", -top, -(c.candidate.max_score or 0.0))

    return Comparison(tuple(sorted(changes, key=order)), unchanged)


# -- output ------------------------------------------------------------------------------


def _printable(text: str, width: int | None = None) -> str:
    """Text for a terminal: control and format characters (escapes, bidi) replaced."""
    clean = "".join("?" if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    return clean if width is None or len(clean) <= width else clean[: width - 1] + "…"


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _score(outcome: ReplayOutcome) -> str:
    if outcome.max_score is None or outcome.final_score is None:
        return "-"
    return f"{outcome.final_score:.2f}/{outcome.max_score:.2f}"


def _after(outcome: ReplayOutcome) -> str:
    return "-" if outcome.flagged_after is None else str(outcome.flagged_after)


def _why(change: Change) -> tuple[str, ...]:
    """The reasons of the replay that took the client higher."""
    higher = change.candidate if change.direction == "more" else change.current
    return higher.reasons[:SHOWN_REASONS]


def render_table(comparison: Comparison) -> list[str]:
    head = (
        f"{'client':<12}  {'name':<16}  {'final':<19}  {'max':<19}  {'score last/max':<14}  "
        f"{'flagged after':<13}  reasons"
    )
    lines = [head]
    for c in comparison.changes:
        cur, cand = c.current, c.candidate
        lines.append(
            f"{c.client[:12]:<12}  {_printable(c.name or '-', 16):<16}  "
            f"{cur.final_level + ' → ' + cand.final_level:<19}  "
            f"{cur.max_level + ' → ' + cand.max_level:<19}  {_score(cand):<14}  "
            f"{_after(cur) + ' → ' + _after(cand):<13}  "
            f"{_printable(','.join(_why(c)))}"
        )
    return lines


def _outcome_json(outcome: ReplayOutcome) -> dict[str, Any]:
    return {
        "final_level": outcome.final_level,
        "max_level": outcome.max_level,
        "reached": {r.level: {"ts": r.ts_ms, "requests": r.requests} for r in outcome.reached},
        "flagged_after": outcome.flagged_after,
        "final_score": None if outcome.final_score is None else round(outcome.final_score, 4),
        "max_score": None if outcome.max_score is None else round(outcome.max_score, 4),
        "reasons": list(outcome.reasons),
        "campaign": outcome.campaign,
        "requests": outcome.requests,
        "scored": outcome.scored,
    }


def render_json(comparison: Comparison, meta: Mapping[str, Any]) -> str:
    return orjson.dumps(
        {
            **meta,
            "more": comparison.more,
            "less": comparison.less,
            "unchanged": comparison.unchanged,
            "changes": [
                {
                    "client": c.client,
                    "name": c.name,
                    "direction": c.direction,
                    "current": _outcome_json(c.current),
                    "candidate": _outcome_json(c.candidate),
                }
                for c in comparison.changes
            ],
        },
        option=orjson.OPT_INDENT_2,
    ).decode()


# -- reading the log ---------------------------------------------------------------------


async def read_events(
    redis: aioredis.Redis, keys: KeySpace, since_ms: int | None, limit: int
) -> tuple[list[DecisionEvent], bool]:
    """The latest ``limit`` events logged at or after ``since_ms`` (stream ids are ms
    timestamps), in stream order; and whether older ones in that span were left out."""
    start = "-" if since_ms is None else f"{since_ms}-0"
    end = "+"
    rows: list[tuple[bytes, dict[bytes, bytes]]] = []
    while len(rows) < limit:
        page: Any = await redis.xrevrange(
            keys.decisions, max=end, min=start, count=min(PAGE, limit - len(rows))
        )
        if not page:
            break
        rows.extend(page)
        end = "(" + page[-1][0].decode()
    more: Any = await redis.xrevrange(keys.decisions, max=end, min=start, count=1) if rows else []
    events = []
    for _id, fields in reversed(rows):
        try:
            events.append(
                DecisionEvent.from_fields(
                    {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
                )
            )
        except (ValueError, TypeError):  # not a decision event (written by hand?): left out
            continue
    return events, bool(more) and len(rows) >= limit


# -- the command -------------------------------------------------------------------------


def _names(*policies: Policy) -> dict[str, str]:
    names: dict[str, str] = {}
    for policy in policies:
        for client, override in policy.clients.items():
            if override.name:
                names.setdefault(client, override.name)
    return names


def _echo(lines: Iterable[str]) -> None:
    for line in lines:
        typer.echo(line)


def replay_command(
    candidate: Annotated[Path, typer.Option("--policy", help="The candidate policy YAML.")],
    against: Annotated[
        Path | None,
        typer.Option(
            "--against",
            envvar="ANTIDISTILL_POLICY",
            help="The current policy YAML (default: the built-in default policy).",
        ),
    ] = None,
    since: Annotated[
        str, typer.Option("--since", help="Replay events this recent: 1h, 24h ('never': all).")
    ] = "24h",
    redis: RedisOpt = None,
    data_dir: DataDirOpt = Path("var"),
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Replay at most this many (latest) events.")
    ] = DEFAULT_LIMIT,
) -> None:
    """Which clients would change level under a candidate policy, and why.

    Replays the logged traffic under --against and under --policy; lists what differs.
    """
    new = load_policy_or_exit(candidate)
    old = load_policy_or_exit(against)
    if old.store.key_prefix != new.store.key_prefix:
        raise fail(
            f"the policies read different logs: key_prefix {old.store.key_prefix!r} "
            f"(--against) and {new.store.key_prefix!r} (--policy)"
        )
    span_s = parse_duration(since)
    since_ms = None if span_s is None else int(time.time() * 1000 - span_s * 1000)
    keys = KeySpace(new.store.key_prefix)
    found: list[tuple[list[DecisionEvent], bool]] = []

    async def job(client: aioredis.Redis, _keys: KeySpace) -> None:
        found.append(await read_events(client, keys, since_ms, limit))

    with_redis(redis, data_dir, candidate, job)
    events, truncated = found[0] if found else ([], False)
    if not events:
        typer.echo(
            f"no decision events in {keys.decisions} "
            f"{'at all' if since_ms is None else 'in the last ' + since}: nothing to replay."
        )
        return
    if len(events) >= PROGRESS_EVENTS:
        typer.echo(f"replaying {len(events):,} events under two policies …", err=True)
    started = time.perf_counter()
    try:
        loaded = {m: load_default_models(m) for m in (old.detector.model, new.detector.model)}
    except ModelUnavailable as exc:
        raise fail(str(exc)) from None
    models = loaded[new.detector.model]
    if old.detector.model == new.detector.model:
        cur, cand = replay_many(events, [old, new], models, workers=default_workers())
    else:  # different models score differently: each policy scores on its own
        (cur,) = replay_many(events, [old], loaded[old.detector.model], workers=default_workers())
        (cand,) = replay_many(events, [new], models, workers=default_workers())
    elapsed = time.perf_counter() - started
    comparison = compare(cur, cand, _names(new, old))
    first, last = min(e.ts for e in events), max(e.ts for e in events)
    current_name = str(against) if against else "built-in default policy"
    linking = {
        policy.detector.campaign_interval_s: link_interval_s(
            Cadence.of(policy.detector, models), (last - first) / 1000
        )
        for policy in (old, new)
    }
    coarser = {k: v for k, v in linking.items() if v is not None and v > k}
    meta = {
        "events": len(events),
        "truncated": truncated,
        "clients": len(cand),
        "from_ms": first,
        "to_ms": last,
        "current": current_name,
        "candidate": str(candidate),
        "seconds": round(elapsed, 2),
        "campaign_interval_s": max(coarser.values()) if coarser else None,
    }
    if as_json:
        typer.echo(render_json(comparison, meta))
        return
    lines = [
        f"Replayed {len(events):,} events of {len(cand):,} clients, "
        f"{_when(first)} to {_when(last)}"
        + (f" (the latest {limit:,}; older ones left out)" if truncated else "")
        + f", in {elapsed:.1f}s.",
        f"current: {_printable(current_name)}  →  candidate: {_printable(str(candidate))}",
    ]
    if coarser:
        lines.append(
            f"(campaigns linked every {max(coarser.values()):.0f}s of event time, not every "
            f"{min(coarser):.0f}s, to bound the replay's cost)"
        )
    lines.append("")
    if comparison.changes:
        lines += [*render_table(comparison), ""]
    lines.append(comparison.summary())
    lines.append("(Traffic replayed as logged: clients may behave differently once enforced.)")
    _echo(lines)


__all__ = ["Change", "Comparison", "compare", "read_events", "replay_command"]
