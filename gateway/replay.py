"""``antidistill policy replay``: logged traffic through a candidate policy.

Every request the gateway answered is in the decision log with the features the detector
scores. A replay runs those events through the detector worker's logic — its windows,
scoring cadence, model, reason codes, campaign linking and ladder
(:func:`detectors.ladder.decide`) — under one policy, in simulated time (each event's
``ts``, so ``min_hold_s`` and ``level_ttl_s`` run on the traffic's own clock), and says for
every client where it would have ended, the highest level it would have reached, when, and
why. Replayed under the current policy and under a candidate, the differences are what the
change would do: the way to move thresholds safely, alongside ``shadow: true``.

Two passes. **Scoring** (:func:`score_timeline`) follows the worker through the events and
records every scoring it would do — a client's window once it has ``min_requests``, then
every ``score_every_requests`` new requests or ``score_every_s`` seconds, and every
campaign linking run; scores depend on the windows, the cadence and the model, never on
the thresholds, so policies that differ only in their ladder share one scoring pass. The
**ladder** (:func:`run_ladder`) then walks those scorings in order under one policy.

What a replay cannot know, and so does not pretend to:

- how clients would have behaved under other controls: the traffic is replayed as logged;
- requests the live gateway refused because of a level the detector set (refused at
  ``block``, rate limited at ``throttle``) are left out, as the worker leaves them out;
- levels set by operators: every client starts at ``allow``; ``shadow`` is ignored (a
  replay's levels are would-be levels anyway);
- the worker's batching: a replay scores after each event, the worker after each batch of
  up to ``batch_size`` events (the same at the live worker's usual low lag).

Campaign linking runs every ``campaign_interval_s`` of event time, or less often on long
spans (at most :data:`MAX_LINK_RUNS` runs; the interval used is reported).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
import redis.asyncio as aioredis
import typer

from detectors.ladder import RANK, decide, reason_code, reason_codes
from detectors.schema import RequestRecord
from detectors.worker import (
    CAMPAIGN_ACTIVE_MS,
    CAMPAIGN_WINDOW,
    EXPLAIN_TOP,
    Models,
    load_default_models,
    record_of,
)
from detectors.worker import _campaign_id as campaign_id
from detectors.worker import _link_types as link_types
from detectors.worker import _members as members_of
from gateway.cli_support import (
    DataDirOpt,
    RedisOpt,
    fail,
    load_policy_or_exit,
    parse_duration,
    with_redis,
)
from gateway.keys import KeySpace
from gateway.policy import Detector as DetectorPolicy
from gateway.policy import Policy
from gateway.ratelimit.levels import LEVELS, Level
from gateway.store.events import DecisionEvent

MAX_LINK_RUNS = 240  # campaign linking runs in one replay (each links every active window)
FLAGGED = "degrade"  # "flagged after N requests": first at degrade or above, as the worker
DEFAULT_LIMIT = 200_000
PAGE = 5_000
SHOWN_REASONS = 4
PROGRESS_EVENTS = 20_000  # replays this long say so first (on stderr): they take a while
PARALLEL_MIN_RECORDS = 50_000  # featurized records (~2 s) below which one process will do
CHUNK_JOBS = 64  # windows of one client per task of a worker process

Vector = npt.NDArray[np.float64]


# -- outcomes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reached:
    """When a client first stood at a level or above: event time and requests seen by then."""

    level: str
    ts_ms: int
    requests: int


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """One client's replay under one policy.

    ``reached`` has, for each level above ``allow`` the client stood at (or above) at some
    point, the first time it did, lowest level first. ``reasons`` are the reason codes of
    the decision that first took it to ``max_level`` (the latest scoring's if it never left
    ``allow``). ``final_level`` is the level in force at the end of the replayed span (a
    level whose TTL ran out reads ``allow``, as the gateway reads it).
    """

    client: str
    requests: int
    scored: int
    final_level: str
    max_level: str
    reached: tuple[Reached, ...]
    final_score: float | None
    max_score: float | None
    reasons: tuple[str, ...]
    campaign: str = ""  # id of the last campaign that linked the client, or ""

    def first(self, level: str) -> Reached | None:
        """When the client first stood at ``level`` or above; None if never."""
        return next((r for r in self.reached if r.level == level), None)

    @property
    def flagged_after(self) -> int | None:
        """Requests seen when it first stood at ``degrade`` or above (the worker's
        ``flagged_after``); None if never."""
        found = self.first(FLAGGED)
        return found.requests if found is not None else None


# -- pass 1: scoring ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scoring:
    """The worker scoring one client's own window (``row`` of the timeline's scores)."""

    seq: int  # position in the event sequence
    now_ms: int
    client: str
    row: int
    seen: int


@dataclass(frozen=True, slots=True)
class Linking:
    """A campaign linking run: each linked client's campaign score and reason codes."""

    seq: int
    now_ms: int
    # client → (campaign score, reason codes, requests seen, campaign id)
    members: Mapping[str, tuple[float, tuple[str, ...], int, str]]


Step = Scoring | Linking


@dataclass(frozen=True, slots=True)
class Cadence:
    """The detector settings the scoring pass depends on (the rest is the ladder's)."""

    window_size: int
    min_requests: int
    score_every_requests: int
    score_every_s: float
    campaigns: bool
    campaign_interval_s: float

    @classmethod
    def of(cls, det: DetectorPolicy, models: Models) -> Cadence:
        return cls(
            window_size=det.window_size,
            min_requests=det.min_requests or models.scorer.min_requests,
            score_every_requests=det.score_every_requests,
            score_every_s=det.score_every_s,
            campaigns=det.campaigns and models.link is not None,
            campaign_interval_s=det.campaign_interval_s,
        )


@dataclass(slots=True)
class ScoreTimeline:
    """Every scoring the worker would do over a sequence of events, in order."""

    steps: list[Step]
    scores: Vector  # own-window scores, by Scoring.row
    X: Vector  # their window feature vectors
    requests: dict[str, int]  # records per client (after the worker's filter)
    first_ms: int
    end_ms: int  # the replay's clock at its end
    events: int
    link_every_s: float | None  # the linking interval used; None: no linking
    models: Models
    skipped: int = 0  # malformed events left out
    _explained: dict[int, list[tuple[str, float, float, float]]] = field(default_factory=dict)

    def explain(self, row: int) -> list[tuple[str, float, float, float]]:
        """The scorer's explanation of one scoring (computed once, on first use)."""
        found = self._explained.get(row)
        if found is None:
            found = self._explained[row] = self.models.scorer.explain(self.X[row], EXPLAIN_TOP)
        return found


def detector_record(event: DecisionEvent) -> RequestRecord | None:
    """The worker's record of an event (None for what its windows leave out)."""
    # TODO(worker refactor): call detectors.worker.record_of_event(event) directly.
    fields = {k.encode(): v.encode() for k, v in event.to_fields().items()}
    return record_of(fields)


def _sorted_window(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    # The stream is in the order responses finished; windows are in request order.
    return sorted(records, key=lambda r: r.ts_ms)


def score_timeline(
    events: Sequence[DecisionEvent],
    det: DetectorPolicy,
    models: Models,
    *,
    max_link_runs: int = MAX_LINK_RUNS,
    workers: int = 1,
) -> ScoreTimeline:
    """Follow the worker through ``events`` (in stream order) and score as it would.

    The clock is the latest event ``ts`` seen so far. A client is scored after one of its
    events once it has ``min_requests`` records, then whenever ``score_every_requests``
    new ones arrived or ``score_every_s`` passed since its last scoring; campaign linking
    runs after the first event ``campaign_interval_s`` (or the longer interval that keeps
    the runs to ``max_link_runs``) after the previous run. Featurizing the windows is most
    of the cost: with ``workers`` > 1 it is spread over that many processes.
    """
    cadence = Cadence.of(det, models)
    size, every_ms = cadence.window_size, cadence.score_every_s * 1000.0
    by_client: dict[str, list[RequestRecord]] = {}
    last_scored: dict[str, tuple[int, float]] = {}  # client → (new since, scored at ms)
    jobs: list[tuple[str, int]] = []  # (client, records seen): the windows to score
    steps: list[Step] = []
    first_ms = min((e.ts for e in events), default=0)
    span_s = (max((e.ts for e in events), default=0) - first_ms) / 1000.0
    link_every_s = link_interval_s(cadence, span_s, max_link_runs)
    clock = 0
    linked_at = first_ms
    skipped = 0
    for seq, event in enumerate(events):
        clock = max(clock, event.ts)
        try:
            record = detector_record(event)
        except ValueError:  # a malformed event (features that do not parse)
            record, skipped = None, skipped + 1
        if record is not None:
            client = record.client
            records = by_client.setdefault(client, [])
            records.append(record)
            seen = len(records)
            new, scored_at = last_scored.get(client, (0, -1.0))
            new += 1
            if seen >= cadence.min_requests and (
                scored_at < 0
                or new >= cadence.score_every_requests
                or clock - scored_at >= every_ms
            ):
                if min(seen, size) >= cadence.min_requests:
                    steps.append(Scoring(seq, clock, client, len(jobs), seen))
                    jobs.append((client, seen))
                new, scored_at = 0, float(clock)
            last_scored[client] = (new, scored_at)
        if link_every_s is not None and clock - linked_at >= link_every_s * 1000.0:
            linked_at = clock
            windows = _active_windows(by_client, size)
            seen_by = {c: len(by_client[c]) for c in windows}
            steps.append(_link(models, seq, clock, windows, seen_by))
    X = _featurize_jobs(models, by_client, jobs, size, workers)
    scores = np.asarray(models.scorer.score(X), dtype=np.float64) if len(jobs) else np.zeros(0)
    steps.sort(key=lambda s: (s.seq, isinstance(s, Linking)))
    return ScoreTimeline(
        steps=steps,
        scores=scores,
        X=X,
        requests={c: len(r) for c, r in by_client.items()},
        first_ms=first_ms,
        end_ms=clock,
        events=len(events),
        link_every_s=link_every_s,
        models=models,
        skipped=skipped,
    )


def link_interval_s(
    cadence: Cadence, span_s: float, max_link_runs: int = MAX_LINK_RUNS
) -> float | None:
    """How often a replay of ``span_s`` seconds links campaigns (None: it does not)."""
    if not cadence.campaigns:
        return None
    return max(cadence.campaign_interval_s, span_s / max(max_link_runs, 1))


def _featurize_jobs(
    models: Models,
    by_client: Mapping[str, list[RequestRecord]],
    jobs: Sequence[tuple[str, int]],
    size: int,
    workers: int,
) -> Vector:
    """The feature vectors of the windows ``jobs`` name: (client, its records so far).

    Spread over ``workers`` forked processes when there is enough work (the children
    inherit the records and the model; only row numbers and vectors cross processes).
    """
    work = sum(min(seen, size) for _, seen in jobs)
    if workers > 1 and work >= PARALLEL_MIN_RECORDS and "fork" in _START_METHODS:
        rows: dict[str, list[int]] = {}
        for row, (client, _seen) in enumerate(jobs):
            rows.setdefault(client, []).append(row)
        chunks = [
            mine[i : i + CHUNK_JOBS]
            for mine in rows.values()
            for i in range(0, len(mine), CHUNK_JOBS)
        ]
        _SHARED.update(models=models, by_client=by_client, jobs=jobs, size=size)
        try:
            with ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork")
            ) as pool:
                parts = list(pool.map(_featurize_rows, chunks))
        finally:
            _SHARED.clear()
        X = np.zeros((len(jobs), parts[0].shape[1]), dtype=np.float64)
        for chunk, part in zip(chunks, parts, strict=True):
            X[chunk] = part
        return X
    return _featurize(models, [_sorted_window(by_client[c][max(0, n - size) : n]) for c, n in jobs])


_START_METHODS = multiprocessing.get_all_start_methods()
_SHARED: dict[str, Any] = {}  # what forked featurizing processes inherit


def _featurize_rows(rows: Sequence[int]) -> Vector:
    """In a forked process: the vectors of some of the windows ``_SHARED`` describes."""
    models: Models = _SHARED["models"]
    by_client: Mapping[str, list[RequestRecord]] = _SHARED["by_client"]
    jobs: Sequence[tuple[str, int]] = _SHARED["jobs"]
    size: int = _SHARED["size"]
    windows = [
        _sorted_window(by_client[jobs[r][0]][max(0, jobs[r][1] - size) : jobs[r][1]]) for r in rows
    ]
    return _featurize(models, windows)


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _featurize(models: Models, windows: Sequence[Sequence[RequestRecord]]) -> Vector:
    if not windows:
        return np.zeros((0, 0), dtype=np.float64)
    return np.vstack([np.asarray(models.featurize(w), dtype=np.float64) for w in windows])


def _active_windows(
    by_client: Mapping[str, list[RequestRecord]], size: int
) -> dict[str, list[RequestRecord]]:
    """The windows linking looks at: clients active in the hour before the newest record."""
    newest = max((r[-1].ts_ms for r in by_client.values()), default=0)
    return {
        c: _sorted_window(r[-size:])
        for c, r in by_client.items()
        if r[-1].ts_ms >= newest - CAMPAIGN_ACTIVE_MS
    }


def _link(
    models: Models,
    seq: int,
    now: int,
    windows: Mapping[str, Sequence[RequestRecord]],
    seen: Mapping[str, int],
) -> Linking:
    """One linking run, as ``DetectorWorker.link_campaigns`` scores it."""
    assert models.link is not None
    campaigns = [c for c in models.link(windows) if len(members_of(c)) > 1]
    if not campaigns:
        return Linking(seq, now, {})
    pooled = [
        _sorted_window([r for m in members_of(c) for r in windows.get(m, ())])[-CAMPAIGN_WINDOW:]
        for c in campaigns
    ]
    X = _featurize(models, pooled)
    scores = np.asarray(models.scorer.score(X), dtype=np.float64)
    found: dict[str, tuple[float, tuple[str, ...], int, str]] = {}
    for i, campaign in enumerate(campaigns):
        score = float(scores[i])
        members = sorted(members_of(campaign))
        cid = campaign_id(campaign, members)
        name = reason_code(f"campaign:{cid}")
        links = tuple(reason_code(f"campaign_link:{t}") for t in link_types(campaign))
        explanation = models.scorer.explain(X[i], EXPLAIN_TOP)
        reasons = reason_codes(score, explanation, EXPLAIN_TOP, extra=(name, *links))
        for member in members:
            if member in windows:
                found[member] = (score, reasons, seen.get(member, 0), cid)
    return Linking(seq, now, found)


# -- pass 2: the ladder ------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    level: Level = field(default_factory=Level.allow)
    since_ms: float | None = None  # when the detector set the level
    campaign: tuple[float, tuple[str, ...]] | None = None  # until the next linking run
    campaign_id: str = ""  # the last campaign linking the client
    scored: int = 0
    last_score: float | None = None
    max_score: float | None = None
    last_reasons: tuple[str, ...] = ()
    max_rank: int = 0
    max_reasons: tuple[str, ...] = ()
    reached: dict[str, Reached] = field(default_factory=dict)

    def current(self, now_ms: float) -> Level:
        """The level as the worker reads it at ``now_ms`` (expired: allow)."""
        expires = self.level.expires_at_ms
        return Level.allow() if expires is not None and expires <= now_ms else self.level


def _decide(
    state: _State,
    client: str,
    score: float,
    reasons: tuple[str, ...],
    now_ms: int,
    seen: int,
    policy: Policy,
) -> None:
    """``DetectorWorker.apply`` for one client, on the replay's state instead of Redis."""
    det = policy.detector
    current = state.current(now_ms)
    since = state.since_ms if current.level != "allow" else None
    override = policy.clients.get(client)
    decision = decide(
        current,
        score,
        reasons,
        thresholds=det.thresholds,
        hysteresis=det.hysteresis,
        allowlisted=override is not None and override.allowlist,
        now_ms=now_ms,
        ttl_s=det.level_ttl_s,
        held_s=(now_ms - since) / 1000 if since else None,
        min_hold_s=det.min_hold_s,
    )
    if decision.write:
        state.level = Level(decision.level, decision.reasons, int(now_ms + det.level_ttl_s * 1000))
        if decision.level != current.level:
            state.since_ms = float(now_ms)
    rank = RANK[decision.level]
    for level in LEVELS[1 : rank + 1]:
        if level not in state.reached:
            state.reached[level] = Reached(level, now_ms, seen)
    if rank > state.max_rank:
        state.max_rank, state.max_reasons = rank, tuple(decision.reasons)
    state.scored += 1
    state.last_score, state.last_reasons = score, tuple(reasons)
    state.max_score = score if state.max_score is None else max(state.max_score, score)


def run_ladder(timeline: ScoreTimeline, policy: Policy) -> dict[str, ReplayOutcome]:
    """Walk the timeline's scorings under ``policy``'s ladder; one outcome per client (all
    at ``allow`` when the policy's detector is disabled)."""
    det = policy.detector
    gate = det.thresholds.watch - det.hysteresis  # below it the worker does not explain
    states = {client: _State() for client in timeline.requests}
    for step in timeline.steps if det.enabled else ():
        if isinstance(step, Scoring):
            state = states[step.client]
            score = float(timeline.scores[step.row])
            explanation = timeline.explain(step.row) if score >= gate else []
            reasons = reason_codes(score, explanation, EXPLAIN_TOP)
            if state.campaign is not None and state.campaign[0] > score:
                score, reasons = state.campaign[0], (*state.campaign[1], *reasons[1:])
            _decide(state, step.client, score, reasons, step.now_ms, step.seen, policy)
            continue
        for state in states.values():
            state.campaign = None
        for client, (score, reasons, seen, cid) in step.members.items():
            state = states[client]
            state.campaign, state.campaign_id = (score, reasons), cid
            if score >= det.thresholds.watch:
                _decide(state, client, score, reasons, step.now_ms, seen, policy)
    return {
        client: ReplayOutcome(
            client=client,
            requests=timeline.requests[client],
            scored=state.scored,
            final_level=state.current(timeline.end_ms).level,
            max_level=LEVELS[state.max_rank],
            reached=tuple(state.reached[lv] for lv in LEVELS[1:] if lv in state.reached),
            final_score=state.last_score,
            max_score=state.max_score,
            reasons=state.max_reasons if state.max_rank else state.last_reasons,
            campaign=state.campaign_id,
        )
        for client, state in states.items()
    }


def replay(
    events: Sequence[DecisionEvent], policy: Policy, models: Models
) -> dict[str, ReplayOutcome]:
    """What the detector worker would have done about each client of ``events`` (in stream
    order) under ``policy``: one :class:`ReplayOutcome` per client with a record."""
    return run_ladder(score_timeline(events, policy.detector, models), policy)


def replay_many(
    events: Sequence[DecisionEvent],
    policies: Sequence[Policy],
    models: Models,
    *,
    workers: int = 1,
) -> list[dict[str, ReplayOutcome]]:
    """:func:`replay` under each policy; policies with the same cadence share one scoring
    pass (it is most of the cost)."""
    timelines: dict[Cadence, ScoreTimeline] = {}
    out = []
    for policy in policies:
        key = Cadence.of(policy.detector, models)
        if key not in timelines:
            timelines[key] = score_timeline(events, policy.detector, models, workers=workers)
        out.append(run_ladder(timelines[key], policy))
    return out


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
    models = load_default_models()
    cur, cand = replay_many(events, [old, new], models, workers=default_workers())
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


__all__ = [
    "Change",
    "Comparison",
    "ReplayOutcome",
    "compare",
    "read_events",
    "replay",
    "replay_command",
    "replay_many",
    "run_ladder",
    "score_timeline",
]
