"""Policy replay: logged traffic through the detector under a policy, in event time.

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
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from detectors.ladder import RANK
from detectors.schema import RequestRecord
from detectors.scoring import (
    EXPLAIN_TOP,
    Explanation,
    Models,
    Vector,
    active_windows,
    featurize,
    is_due,
    ladder_decision,
    own_result,
    record_of_event,
    score_campaigns,
    score_windows,
    sorted_window,
)
from detectors.windows import cached_rows
from gateway.policy import Detector as DetectorPolicy
from gateway.policy import Policy
from gateway.ratelimit.levels import LEVELS, Level
from gateway.store.events import DecisionEvent

MAX_LINK_RUNS = 240  # campaign linking runs in one replay (each links every active window)
FLAGGED = "degrade"  # "flagged after N requests": first at degrade or above, as the worker
PARALLEL_MIN_RECORDS = 50_000  # featurized records (~2 s) below which one process will do
CHUNK_JOBS = 64  # windows of one client per task of a worker process


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
    _explained: dict[int, Explanation] = field(default_factory=dict)

    def explain(self, row: int) -> Explanation:
        """The scorer's explanation of one scoring (computed once, on first use)."""
        found = self._explained.get(row)
        if found is None:
            found = self._explained[row] = self.models.scorer.explain(self.X[row], EXPLAIN_TOP)
        return found


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
    size = cadence.window_size
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
            record = record_of_event(event)
        except ValueError:  # a malformed event (features that do not parse)
            record, skipped = None, skipped + 1
        if record is not None:
            client = record.client
            records = by_client.setdefault(client, [])
            records.append(record)
            seen = len(records)
            new, scored_at = last_scored.get(client, (0, -1.0))
            new += 1
            since_s = None if scored_at < 0 else (clock - scored_at) / 1000.0
            if is_due(seen, new, since_s, det, cadence.min_requests):
                if min(seen, size) >= cadence.min_requests:
                    steps.append(Scoring(seq, clock, client, len(jobs), seen))
                    jobs.append((client, seen))
                new, scored_at = 0, float(clock)
            last_scored[client] = (new, scored_at)
        if link_every_s is not None and clock - linked_at >= link_every_s * 1000.0:
            linked_at = clock
            steps.append(_link(models, seq, clock, active_windows(by_client, size), by_client))
    with cached_rows():  # each record is in many of the windows
        X = _featurize_jobs(models, by_client, jobs, size, workers)
    windows = (
        [sorted_window(by_client[c][max(0, n - size) : n]) for c, n in jobs]
        if models.sequence is not None
        else []
    )
    scores = score_windows(models, X, windows) if len(jobs) else np.zeros(0)
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
    return featurize(models, [sorted_window(by_client[c][max(0, n - size) : n]) for c, n in jobs])


_START_METHODS = multiprocessing.get_all_start_methods()
_SHARED: dict[str, Any] = {}  # what forked featurizing processes inherit


def _featurize_rows(rows: Sequence[int]) -> Vector:
    """In a forked process: the vectors of some of the windows ``_SHARED`` describes."""
    models: Models = _SHARED["models"]
    by_client: Mapping[str, list[RequestRecord]] = _SHARED["by_client"]
    jobs: Sequence[tuple[str, int]] = _SHARED["jobs"]
    size: int = _SHARED["size"]
    windows = [
        sorted_window(by_client[jobs[r][0]][max(0, jobs[r][1] - size) : jobs[r][1]]) for r in rows
    ]
    return featurize(models, windows)


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _link(
    models: Models,
    seq: int,
    now: int,
    windows: Mapping[str, Sequence[RequestRecord]],
    by_client: Mapping[str, Sequence[RequestRecord]],
) -> Linking:
    """One linking run, as ``DetectorWorker.link_campaigns`` scores it."""
    found: dict[str, tuple[float, tuple[str, ...], int, str]] = {}
    for campaign in score_campaigns(models, windows):
        for member in campaign.members:
            if member in windows:
                seen = len(by_client[member])
                found[member] = (campaign.score, campaign.reasons, seen, campaign.id)
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
    decision = ladder_decision(policy, client, current, since, score, reasons, now_ms)
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
    states = {client: _State() for client in timeline.requests}
    for step in timeline.steps if det.enabled else ():
        if isinstance(step, Scoring):
            state = states[step.client]
            score, reasons, _ = own_result(
                float(timeline.scores[step.row]),
                partial(timeline.explain, step.row),
                state.campaign,
                det,
            )
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
