"""The detector worker: decision stream in, enforcement levels out (off the request path).

One loop, run as an asyncio task inside ``serve`` or as ``antidistill worker`` processes:

1. **Read** the decision stream through the consumer group ``detector`` (XREADGROUP; a
   worker first re-reads its own pending entries, and every ``claim_every_s`` takes over
   entries that a dead consumer left pending for longer than ``claim_idle_ms``,
   XAUTOCLAIM). Several workers share the group; each entry goes to one of them.
2. **Update windows**: each client's most recent ``window_size`` requests, kept in memory
   (a deque per client, least recently seen clients evicted past ``max_clients``) and
   appended to a compact Redis list per client in the same pipelined round trip that ACKs
   the batch. Trade-off: memory is the fast path (no read per event); the Redis copy costs
   one pipelined write per batch and lets a restarted worker, or a worker that first sees
   a client, resume its window; and when other workers share the group (each sees only
   part of a client's events) scoring reads the whole window back from Redis.
3. **Score** a client once it has ``min_requests`` and, after that, at most every
   ``score_every_requests`` new requests or ``score_every_s`` seconds (in batches, one
   model call for all due clients).
4. **Apply the ladder** (:mod:`detectors.ladder`) and write the level with reason codes
   (``Limiter.set_level``), or, in shadow mode, only the would-be level
   (``<prefix>:shadow_levels``). The latest score of every client goes to
   ``<prefix>:{c:<id>}:detector`` (score, level, reasons, ts, window) for review.
5. **Link campaigns** every ``campaign_interval_s``: a campaign's records are scored as
   one client, and its score raises every linked account.

The per-batch CPU work is bounded (``batch_size`` events, scoring in chunks with a yield to
the event loop between them), so an in-process worker does not stall requests for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from detectors.schema import RequestRecord
from detectors.scoring import (
    EXPLAIN_TOP,
    Explanation,
    Models,
    Scorer,
    active_windows,
    featurize,
    is_due,
    ladder_decision,
    load_default_models,
    own_result,
    record_of_event,
    score_campaigns,
    score_windows,
    sorted_window,
)
from detectors.window_codec import pack, unpack
from gateway.keys import KeySpace
from gateway.policy import Policy
from gateway.ratelimit.levels import Level, decode_level
from gateway.ratelimit.limiter import Limiter
from gateway.store.events import DecisionEvent

log = logging.getLogger("antidistill.detector")

GROUP = "detector"
WINDOW_TTL_S = 86_400  # a client's persisted window outlives a day of silence, no more
DETECTOR_TTL_S = 7 * 86_400
HISTORY_LEN = 512  # score-history points kept per client
AUDIT_MAXLEN = 100_000
STATS_EVERY_S = 5.0
YIELD_EVERY = 64  # events decoded between yields to the event loop
SINCE_FIELD = "detector_since_ms"

__all__ = ["DetectorWorker", "Models", "Scorer", "load_default_models"]


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def record_of(fields: dict[bytes, bytes]) -> RequestRecord | None:
    """The record of one stream entry; None for what the windows leave out
    (:func:`detectors.scoring.record_of_event`)."""
    return record_of_event(
        DecisionEvent.from_fields(
            {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
        )
    )


# -- per-client state ------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    records: deque[RequestRecord]
    seen: int = 0  # requests this worker has seen of the client
    new: int = 0  # requests since the last score
    scored_at: float = 0.0  # monotonic
    first_ts_ms: int = 0
    flagged_after: int = 0  # requests seen when the level first reached degrade
    campaign: tuple[float, tuple[str, ...]] | None = None  # (score, reasons) until relinked
    campaign_id: str = ""
    explain: Explanation = field(default_factory=list)
    campaign_explain: Explanation = field(default_factory=list)


@dataclass(slots=True)
class WorkerStats:
    events: int = 0
    scored: int = 0
    levels_set: int = 0
    shadow_levels: int = 0
    campaigns: int = 0
    claimed: int = 0
    busy_s: float = 0.0  # CPU-bound time spent on the event loop
    max_slice_s: float = 0.0  # the longest stretch without yielding to the loop
    lag: list[tuple[str, int, float]] = field(default_factory=list)  # (client, requests, s)
    last_event_ts_ms: int = 0  # request time of the newest event read
    stream_lag_ms: float = 0.0  # how far behind the newest event read was, when read


class DetectorWorker:
    """Reads the decision stream, keeps windows, scores and sets enforcement levels."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySpace,
        policy: Callable[[], Policy],
        *,
        models: Models | None = None,
        load_models: Callable[[], Models] | None = None,
        consumer: str | None = None,
        batch_size: int = 200,
        block_ms: int = 500,
        score_chunk: int = 8,
        max_clients: int = 50_000,
        claim_idle_ms: int = 60_000,
        claim_every_s: float = 15.0,
        peers_every_s: float = 5.0,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._policy = policy
        self._models = models
        self._load_models = load_models
        self.consumer = consumer or default_consumer()
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._score_chunk = score_chunk
        self._max_clients = max_clients
        self._claim_idle_ms = claim_idle_ms
        self._claim_every_s = claim_every_s
        self._peers_every_s = peers_every_s
        self._limiter = Limiter(redis)
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._dirty: set[str] = set()  # clients with requests not yet scored
        self._own_pending = True  # re-read our own pending entries first
        self._claimed_at = 0.0
        self._peers_at = -1e9
        self._peers = 0
        self._linked_at = time.monotonic()
        self._stats_at = 0.0
        self.stats = WorkerStats()

    # -- keys ---------------------------------------------------------------------------

    def window_key(self, client: str) -> str:
        return f"{self._keys.client_tag(client)}:window"

    def detector_key(self, client: str) -> str:
        """Hash with the client's latest score, level, reasons, time and window size."""
        return self._keys.detector(client)

    @property
    def shadow_key(self) -> str:
        """Hash: client → the level the detector would have set (shadow mode), as JSON."""
        return self._keys.shadow_levels

    # -- lifecycle ----------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing, at the stream's end.

        A new group starts at ``$``: a fresh deployment does not re-score a history it
        never enforced on; a worker that restarts continues where the group left off.
        """
        try:
            await self._redis.xgroup_create(self._keys.decisions, GROUP, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @property
    def models(self) -> Models:
        if self._models is None:
            self._models = self._loader()
        return self._models

    def _loader(self) -> Models:
        if self._load_models is not None:
            return self._load_models()
        return load_default_models(self._policy().detector.model)

    @property
    def scorer(self) -> Scorer:
        return self.models.scorer

    async def load(self) -> None:
        """Load the models off the event loop (it may take a moment)."""
        if self._models is None:
            self._models = await asyncio.to_thread(self._loader)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Process batches until ``stop`` is set (or the task is cancelled)."""
        await self.ensure_group()
        await self.load()
        log.info("detector worker started", extra={"consumer": self.consumer})
        failures = 0
        while stop is None or not stop.is_set():
            if not self._policy().detector.enabled:
                await asyncio.sleep(1.0)
                continue
            try:
                await self.step()
                failures = 0
            except (RedisError, OSError) as exc:
                failures += 1
                delay = min(5.0, 0.2 * 2**failures)
                log.warning("detector worker: store error (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    # The stream went away (a Redis restarted without persistence, or an
                    # operator deleted it): start over on the new one.
                    with contextlib.suppress(RedisError, OSError):
                        await self.ensure_group()

    async def step(self) -> int:
        """One round: read (or claim) a batch, update windows, score the clients due."""
        rows = await self._claim_stale()
        if not rows:
            rows = await self._read()
        count = await self._ingest(rows)
        await self._refresh_peers()
        await self._score_due()
        det = self._policy().detector
        if (
            det.campaigns
            and self.models.link is not None
            and time.monotonic() - self._linked_at >= det.campaign_interval_s
        ):
            await self.link_campaigns()
        if time.monotonic() - self._stats_at >= STATS_EVERY_S:
            await self.publish_stats()
        return count

    async def publish_stats(self) -> None:
        """This worker's counters and lag, for ``/metrics`` and operators (``detector_stats``)."""
        self._stats_at = time.monotonic()
        stats = self.stats
        await self._redis.hset(
            self._keys.detector_stats,
            self.consumer,
            orjson.dumps(
                {
                    "events": stats.events,
                    "scored": stats.scored,
                    "levels_set": stats.levels_set,
                    "campaigns": stats.campaigns,
                    "lag_ms": round(stats.stream_lag_ms, 1),
                    "busy_s": round(stats.busy_s, 3),
                    "ts": int(time.time() * 1000),
                }
            ),
        )

    # -- reading ------------------------------------------------------------------------

    async def _read(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """Our own pending entries first (after a restart under the same name), then new."""
        rows: list[tuple[bytes, dict[bytes, bytes] | None]] = []
        if self._own_pending:
            rows = await self._xreadgroup("0", None)
            if rows:
                return rows
            self._own_pending = False
        # Poll rather than XREADGROUP BLOCK: a read blocked on a stream that is deleted
        # and re-created (a Redis restart, an operator) was seen never to return, and never
        # to honour cancellation either. An idle worker costs one call per interval.
        rows = await self._xreadgroup(">", None)
        if not rows:
            await asyncio.sleep(self._block_ms / 1000)
        return rows

    async def _xreadgroup(
        self, start: str, block_ms: int | None
    ) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        reply: Any = await self._redis.xreadgroup(
            GROUP,
            self.consumer,
            {self._keys.decisions: start},
            count=self._batch_size,
            block=block_ms,
        )
        rows: list[tuple[bytes, dict[bytes, bytes] | None]] = []
        for _stream, entries in reply or []:
            rows.extend(entries)
        return rows

    async def _claim_stale(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        now = time.monotonic()
        if now - self._claimed_at < self._claim_every_s:
            return []
        self._claimed_at = now
        reply: Any = await self._redis.xautoclaim(
            self._keys.decisions,
            GROUP,
            self.consumer,
            min_idle_time=self._claim_idle_ms,
            start_id="0-0",
            count=self._batch_size,
        )
        rows: list[tuple[bytes, dict[bytes, bytes] | None]] = list(reply[1]) if reply else []
        deleted = list(reply[2]) if reply and len(reply) > 2 else []
        if deleted:  # trimmed from the stream before anyone processed them
            await self._redis.xack(self._keys.decisions, GROUP, *deleted)
        if rows:
            self.stats.claimed += len(rows)
            log.info("detector worker: claimed %d stale entries", len(rows))
        return rows

    async def _ingest(self, rows: list[tuple[bytes, dict[bytes, bytes] | None]]) -> int:
        """Add a batch to the windows; persist the new records and ACK in one round trip."""
        if not rows:
            return 0
        started = time.perf_counter()
        policy = self._policy()
        size = policy.detector.window_size
        fresh: dict[str, list[RequestRecord]] = {}
        ids: list[bytes] = []
        for i, (entry_id, fields) in enumerate(rows, 1):
            ids.append(entry_id)
            if fields:  # empty: trimmed from the stream while pending
                record = record_of(fields)
                if record is not None:
                    fresh.setdefault(record.client, []).append(record)
            if i % YIELD_EVERY == 0:  # let requests on the same event loop through
                self._tick(started)
                await asyncio.sleep(0)
                started = time.perf_counter()
        unknown = [c for c in fresh if c not in self._windows]
        self._tick(started)
        restored = await self._restore(unknown, size) if unknown else {}
        started = time.perf_counter()
        async with self._redis.pipeline(transaction=False) as pipe:
            for client, records in fresh.items():
                window = self._window(client, size, restored.get(client))
                window.records.extend(records)
                window.seen += len(records)
                window.new += len(records)
                if not window.first_ts_ms:
                    window.first_ts_ms = records[0].ts_ms
                self._dirty.add(client)
                key = self.window_key(client)
                pipe.rpush(key, *(pack(r) for r in records))
                pipe.ltrim(key, -size, -1)
                pipe.expire(key, WINDOW_TTL_S)
            pipe.xack(self._keys.decisions, GROUP, *ids)
            self._tick(started)
            await pipe.execute()
        self.stats.events += len(rows)
        newest = max((r[-1].ts_ms for r in fresh.values()), default=0)
        if newest:
            self.stats.last_event_ts_ms = max(self.stats.last_event_ts_ms, newest)
            self.stats.stream_lag_ms = max(0.0, time.time() * 1000 - newest)
        return len(rows)

    def _window(self, client: str, size: int, restored: list[RequestRecord] | None) -> _Window:
        window = self._windows.get(client)
        if window is None:
            window = _Window(deque(restored or (), maxlen=size), seen=len(restored or ()))
            if restored:
                window.first_ts_ms = restored[0].ts_ms
            self._windows[client] = window
            while len(self._windows) > self._max_clients:
                evicted, _ = self._windows.popitem(last=False)
                self._dirty.discard(evicted)
        else:
            self._windows.move_to_end(client)
            if window.records.maxlen != size:
                window.records = deque(window.records, maxlen=size)
        return window

    async def _restore(self, clients: Sequence[str], size: int) -> dict[str, list[RequestRecord]]:
        """Windows persisted by this worker's predecessor or a peer."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for client in clients:
                pipe.lrange(self.window_key(client), -size, -1)
            replies = await pipe.execute()
        return {
            client: [unpack(client, item) for item in items]
            for client, items in zip(clients, replies, strict=True)
            if items
        }

    async def _refresh_peers(self) -> None:
        """How many other live consumers share the group (then windows are read back)."""
        now = time.monotonic()
        if now - self._peers_at < self._peers_every_s:
            return
        self._peers_at = now
        try:
            consumers: Any = await self._redis.xinfo_consumers(self._keys.decisions, GROUP)
        except ResponseError:
            return
        self._peers = sum(
            1
            for c in consumers
            if _text(c["name"]) != self.consumer and int(c["idle"]) < self._claim_idle_ms
        )

    # -- scoring ------------------------------------------------------------------------

    def _due(self, policy: Policy) -> list[str]:
        det = policy.detector
        # With peers, this worker sees only part of a client's requests: the minimum is
        # checked against the shared window when it is read back.
        minimum = 0 if self._peers else det.min_requests or self.scorer.min_requests
        now = time.monotonic()
        due = []
        for client in self._dirty:
            window = self._windows.get(client)
            if window is not None and is_due(
                window.seen,
                window.new,
                None if window.scored_at == 0.0 else now - window.scored_at,
                det,
                minimum,
            ):
                due.append(client)
        return due

    async def _score_due(self) -> None:
        policy = self._policy()
        due = self._due(policy)
        for i in range(0, len(due), self._score_chunk):
            await self.score_clients(due[i : i + self._score_chunk], policy)
            await asyncio.sleep(0)

    async def score_clients(self, clients: Sequence[str], policy: Policy) -> None:
        """Score ``clients`` on their windows, apply the ladder, write the results."""
        if not clients:
            return
        size = policy.detector.window_size
        shared = await self._restore(clients, size) if self._peers else {}
        started = time.perf_counter()
        minimum = policy.detector.min_requests or self.scorer.min_requests
        windows: dict[str, list[RequestRecord]] = {}
        now = time.monotonic()
        for client in clients:
            held = self._windows.get(client)
            if held is None:
                continue
            records = sorted_window(shared.get(client) or held.records)
            if len(records) < minimum:
                held.new, held.scored_at = 0, now
                self._dirty.discard(client)
                continue
            windows[client] = records
        names = list(windows)
        if not names:
            self._tick(started)
            return
        ordered = [windows[c] for c in names]
        X = featurize(self.models, ordered)
        scores = score_windows(self.models, X, ordered)
        results: dict[str, tuple[float, tuple[str, ...], int]] = {}
        for i, client in enumerate(names):
            window = self._windows[client]
            window.new, window.scored_at = 0, now
            self._dirty.discard(client)
            score, reasons, window.explain = own_result(
                float(scores[i]),
                partial(self.scorer.explain, X[i], EXPLAIN_TOP),
                window.campaign,
                policy.detector,
            )
            results[client] = (score, reasons, len(windows[client]))
        self.stats.scored += len(names)
        self._tick(started)
        await self.apply(results, policy)

    async def apply(
        self, results: dict[str, tuple[float, tuple[str, ...], int]], policy: Policy
    ) -> None:
        """Ladder and writes for scored clients: {client: (score, reasons, window size)}."""
        det = policy.detector
        names = list(results)
        current, since = await self._current_levels(names, policy.shadow)
        now_ms = time.time() * 1000
        async with self._redis.pipeline(transaction=False) as pipe:
            for client in names:
                score, reasons, size = results[client]
                decision = ladder_decision(
                    policy, client, current[client], since.get(client), score, reasons, now_ms
                )
                window = self._windows.get(client)
                if (
                    window is not None
                    and not window.flagged_after
                    and decision.level in ("degrade", "throttle", "block")
                ):
                    window.flagged_after = window.seen
                    seconds = (now_ms - window.first_ts_ms) / 1000 if window.first_ts_ms else 0.0
                    self.stats.lag.append((client, window.seen, seconds))
                if decision.write and policy.shadow:
                    pipe.hset(
                        self.shadow_key,
                        client,
                        orjson.dumps(
                            {
                                "level": decision.level,
                                "reasons": list(decision.reasons),
                                "score": round(score, 4),
                                "ts": int(now_ms),
                                "since": int(
                                    now_ms
                                    if decision.level != current[client].level
                                    else since.get(client, now_ms)
                                ),
                            }
                        ),
                    )
                    self.stats.shadow_levels += 1
                    log.info(
                        "shadow: would set %s to %s",
                        client[:12],
                        decision.level,
                        extra={"client": client, "reasons": list(decision.reasons)},
                    )
                elif decision.write:
                    level_key = self._keys.level(client)
                    await self._limiter.set_level(
                        level_key, decision.level, decision.reasons, det.level_ttl_s
                    )
                    if decision.level != current[client].level:
                        # when the detector set this level (the limiter reads other fields)
                        pipe.hset(level_key, SINCE_FIELD, str(int(now_ms)))
                    self.stats.levels_set += 1
                    if decision.level != current[client].level:
                        log.info(
                            "detector set %s to %s",
                            client[:12],
                            decision.level,
                            extra={"client": client, "reasons": list(decision.reasons)},
                        )
                if decision.write and decision.level != current[client].level:
                    pipe.xadd(
                        self._keys.audit,
                        _audit_fields(
                            client,
                            decision.level,
                            current[client].level,
                            decision.reasons,
                            now_ms,
                            policy.shadow,
                        ),
                        maxlen=AUDIT_MAXLEN,
                        approximate=True,
                    )
                shown = decision.level
                if shown in ("watch", "degrade", "throttle", "block"):
                    pipe.zadd(self._keys.flagged, {client: round(score, 4)})
                else:
                    pipe.zrem(self._keys.flagged, client)
                history = self._keys.score_history(client)
                pipe.rpush(history, f"{int(now_ms)} {score:.4f} {shown}")
                pipe.ltrim(history, -HISTORY_LEN, -1)
                pipe.expire(history, DETECTOR_TTL_S)
                key = self.detector_key(client)
                pipe.hset(
                    key,
                    mapping={
                        "explain": orjson.dumps(
                            [
                                [n, round(c, 4), round(v, 4), round(b, 4)]
                                for n, c, v, b in _explanation(window, score)
                            ]
                        ).decode(),
                        "campaign": window.campaign_id if window else "",
                        "score": f"{score:.4f}",
                        "level": decision.level,
                        "reasons": ",".join(reasons),
                        "ts": str(int(now_ms)),
                        "window": str(size),
                        "seen": str(window.seen if window else size),
                        "flagged_after": str(window.flagged_after if window else 0),
                        "shadow": "1" if policy.shadow else "0",
                    },
                )
                pipe.expire(key, DETECTOR_TTL_S)
            await pipe.execute()

    async def _current_levels(
        self, clients: Sequence[str], shadow: bool
    ) -> tuple[dict[str, Level], dict[str, float]]:
        """Each client's level now, and when the detector set it (ms; absent: unknown)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for client in clients:
                pipe.hmget(
                    self._keys.level(client), ["level", "reasons", "expires_at_ms", SINCE_FIELD]
                )
            if shadow:
                pipe.hmget(self.shadow_key, list(clients))
            replies = await pipe.execute()
        secs, micros = replies[0]
        now = secs * 1000 + micros / 1000
        levels: dict[str, Level] = {}
        since: dict[str, float] = {}
        for client, (level, reasons, expires, set_at) in zip(clients, replies[1:], strict=False):
            levels[client] = decode_level(
                None if level is None else _text(level),
                _text(reasons or b""),
                _text(expires or b""),
                now,
            )
            if set_at and levels[client].level != "allow":
                since[client] = float(_text(set_at))
        if shadow:
            for client, raw in zip(clients, replies[-1], strict=True):
                if raw and not any(r.startswith("operator:") for r in levels[client].reasons):
                    stored = orjson.loads(raw)
                    levels[client] = Level(stored["level"], tuple(stored["reasons"]), None)
                    since[client] = float(stored.get("since", stored["ts"]))
        return levels, since

    # -- campaigns ----------------------------------------------------------------------

    async def link_campaigns(self) -> int:
        """Link active clients into campaigns; score each as one client; raise its members."""
        self._linked_at = time.monotonic()
        if self.models.link is None:
            return 0
        policy = self._policy()
        started = time.perf_counter()
        for window in self._windows.values():
            window.campaign = None
            window.campaign_id = ""
        campaigns = score_campaigns(
            self.models, active_windows({c: w.records for c, w in self._windows.items()})
        )
        if not campaigns:
            self._tick(started)
            return 0
        results: dict[str, tuple[float, tuple[str, ...], int]] = {}
        stored: dict[Any, Any] = {}
        now_ms = int(time.time() * 1000)
        for campaign in campaigns:
            score, reasons = campaign.score, campaign.reasons
            stored[campaign.id] = orjson.dumps(
                {
                    "id": campaign.id,
                    "members": list(campaign.members),
                    "links": list(campaign.links),
                    "score": round(score, 4),
                    "reasons": list(reasons),
                    "ts": now_ms,
                }
            )
            for member in campaign.members:
                held = self._windows.get(member)
                if held is None:
                    continue
                held.campaign = (score, reasons)
                held.campaign_id = campaign.id
                held.campaign_explain = campaign.explanation
                own = results.get(member)
                if own is None or own[0] < score:
                    results[member] = (score, reasons, len(held.records))
        self.stats.campaigns += len(campaigns)
        self._tick(started)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._keys.campaigns, mapping=stored)
            pipe.expire(self._keys.campaigns, DETECTOR_TTL_S)
            await pipe.execute()
        watch = policy.detector.thresholds.watch
        raised = {c: r for c, r in results.items() if r[0] >= watch}
        if raised:
            await self.apply(raised, policy)
            log.info(
                "detector: %d campaigns, %d accounts at watch or above",
                len(campaigns),
                len(raised),
            )
        return len(campaigns)

    # -- bookkeeping --------------------------------------------------------------------

    def _tick(self, started: float) -> None:
        spent = time.perf_counter() - started
        self.stats.busy_s += spent
        self.stats.max_slice_s = max(self.stats.max_slice_s, spent)

    def window_of(self, client: str) -> list[RequestRecord]:
        window = self._windows.get(client)
        return list(window.records) if window is not None else []


def _explanation(window: _Window | None, score: float) -> Explanation:
    """The reason codes behind ``score``: the campaign's when the campaign's score is it."""
    if window is None:
        return []
    if window.campaign is not None and window.campaign[0] >= score and window.campaign_explain:
        return window.campaign_explain
    return window.explain


def _audit_fields(
    client: str,
    level: str,
    previous: str,
    reasons: Sequence[str],
    now_ms: float,
    shadow: bool,
) -> dict[Any, Any]:
    """An audit-trail entry (the fields of ``gateway.admin.audit.AuditEntry``) for a level
    the detector set; in shadow mode the reason says the level was not enforced."""
    reason = ",".join(reasons)
    return {
        "ts_ms": str(int(now_ms)),
        "actor": "detector",
        "action": "detector_level",
        "client": client,
        "reason": f"shadow (not enforced): {reason}" if shadow else reason,
        "level": level,
        "label": "",
        "previous_level": previous,
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
