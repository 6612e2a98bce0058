"""The decision log: one event per request on a Redis Stream, written off the request path.

Requests hand their event (and their token settlement) to :meth:`DecisionLog.record`, which
never waits. One background task drains the queue in batches and writes each batch as a
single pipelined round trip: settle reservations, then one ``record.lua`` call that appends
the events and updates per-client summaries. When Redis cannot be reached the events go
to the local :class:`Spool` and are replayed, oldest first, as soon as a write succeeds
again (retried every ``retry_after_failure_s`` while nothing else is written).
Settlements made during an outage are dropped: the reservation stays charged (the
conservative side) and concurrency leases expire by their TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.keys import KeySpace
from gateway.metrics import Metrics
from gateway.ratelimit.limiter import Charge, Limiter
from gateway.store.events import DecisionEvent
from gateway.store.spool import Spool

log = logging.getLogger("antidistill.decisions")

# Any of these means the batch may not be stored: unreachable, timed out, or refused (out
# of memory, a read-only replica after a failover). The events are spooled, never dropped.
_WRITE_FAILED = (RedisError, OSError)
ORPHAN_CHECK_INTERVAL_S = 30.0
MAX_MARKS = 10_000  # provenance marks kept per client
_RECORD_LUA = resources.files("gateway.store").joinpath("record.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Settlement:
    """Token corrections and the lease to release once a request is over."""

    adjustments: tuple[tuple[Charge, float], ...]
    inflight_key: str | None
    lease_id: str
    throttle_factor: float = 1.0  # as at admission, so corrections are priced the same


@dataclass(frozen=True, slots=True)
class _Item:
    event: DecisionEvent
    settlement: Settlement | None
    marks: tuple[bytes, ...] = ()


class DecisionLog:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySpace,
        limiter: Limiter,
        spool: Spool,
        metrics: Metrics,
        *,
        max_events: int,
        batch_size: int = 512,
        retry_after_failure_s: float = 1.0,
        deadline_s: float | None = None,
        linger_s: float = 0.005,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._limiter = limiter
        self._spool = spool
        self._metrics = metrics
        self.max_events = max_events
        self._batch_size = batch_size
        self._retry_after_failure_s = retry_after_failure_s
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._orphans_checked = False
        self._orphan_check_at = 0.0
        self._replayed = 0
        self._writing = asyncio.Lock()
        self._deadline_s = deadline_s
        self._linger_s = linger_s
        self._clock_offset_ms: float | None = None  # Redis TIME minus local time
        self._record_source = _RECORD_LUA
        self._record_sha = hashlib.sha1(_RECORD_LUA.encode(), usedforsecurity=False).hexdigest()

    def record(
        self,
        event: DecisionEvent,
        settlement: Settlement | None = None,
        marks: Sequence[bytes] = (),
    ) -> None:
        """Queue an event for writing; returns at once.

        ``marks`` are provenance marks given to the client with this response (JSON): they
        are appended to the client's provenance list, newest ``MAX_MARKS`` kept. Marks of a
        response made while Redis is unreachable are not spooled: a missed mark weakens a
        later ownership test slightly, it never accuses anyone.
        """
        self._queue.put_nowait(_Item(event, settlement, tuple(marks)))
        self._metrics.event_queue.set(self._queue.qsize())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-log-writer")

    async def close(self) -> None:
        """Write out everything queued (to Redis, or to the spool), then stop."""
        if self._task is not None:
            await self._queue.join()
            async with self._writing:  # never cut a write short: it may have reached Redis
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._spool.close()

    async def flush(self) -> None:
        """Wait until every event recorded so far is written to Redis or the spool."""
        await self._queue.join()

    @property
    def spooled(self) -> int:
        return self._spool.pending

    async def _next(self) -> _Item | None:
        """The next queued item; None (taking nothing) when the spool is due for a replay."""
        if time.monotonic() >= self._orphan_check_at:
            self._orphans_checked = False  # look again for spools of processes that died
        if not self._spool.pending and self._orphans_checked:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        delay = self._down_until - time.monotonic()
        if delay > 0:
            try:
                return await asyncio.wait_for(self._queue.get(), delay)
            except TimeoutError:
                pass
        return None

    async def _run(self) -> None:
        while True:
            first = await self._next()
            if first is None:
                async with self._writing:
                    try:
                        await self._replay()
                    except _WRITE_FAILED as exc:
                        self._failed(exc)
                continue
            batch = [first]
            if self._linger_s > 0 and self._queue.qsize() < self._batch_size - 1:
                # Let a few more events arrive: one script call per handful of requests
                # instead of one per request, when traffic is light.
                await asyncio.sleep(self._linger_s)
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                async with self._writing:
                    await self._write_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
                self._metrics.event_queue.set(self._queue.qsize())

    async def _write_batch(self, batch: Sequence[_Item]) -> None:
        if time.monotonic() >= self._down_until:
            try:
                if self._spool.pending or not self._orphans_checked:
                    await self._replay()
                await self._write(batch)
                self._metrics.events_written.inc(len(batch))
                return
            except _WRITE_FAILED as exc:
                self._failed(exc)
        try:
            self._spool.append([item.event for item in batch])
        except OSError as exc:
            # Neither Redis nor the disk can take them: the one case where events are lost.
            # Say so loudly and keep the writer alive for when either comes back.
            self._metrics.events_lost.inc(len(batch))
            log.error("decision log: %d events LOST: spool write failed: %s", len(batch), exc)
            return
        self._metrics.events_spooled.inc(len(batch))

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self._retry_after_failure_s
        log.warning(
            "decision log: cannot write to Redis (%s: %s); spooling events locally",
            type(exc).__name__,
            str(exc)[:200],
        )

    async def _write(self, batch: Sequence[_Item]) -> None:
        """Settle the batch's reservations, then store its events with one script call.

        Not a MULTI: each settle is atomic on its own, and record.lua stores the whole batch
        of events or none of it. If settles ran but the events did not, the caller spools
        the events and settlements are not retried (the conservative side).
        """
        pipe = self._redis.pipeline(transaction=False)
        for item in batch:
            if item.settlement is not None:
                self._limiter.queue_settle(
                    pipe,
                    adjustments=item.settlement.adjustments,
                    inflight_key=item.settlement.inflight_key,
                    lease_id=item.settlement.lease_id,
                    throttle_factor=item.settlement.throttle_factor,
                )
            if item.marks:
                key = self._keys.provenance(item.event.client)
                pipe.rpush(key, *item.marks)
                pipe.ltrim(key, -MAX_MARKS, -1)
        record_keys, record_args = self._record_call([item.event for item in batch])
        pipe.evalsha(self._record_sha, len(record_keys), *record_keys, *record_args)
        results = await pipe.execute(raise_on_error=False)
        *settled, recorded = results
        if isinstance(recorded, NoScriptError):
            await self._redis.script_load(self._record_source)
            recorded = await self._redis.evalsha(
                self._record_sha, len(record_keys), *record_keys, *record_args
            )
        if isinstance(recorded, Exception):
            raise recorded  # nothing of this batch is stored: spool it
        stored, redis_now = recorded
        self._clock_offset_ms = float(redis_now) - time.time() * 1000
        if int(stored) < 0:
            # Ran past its deadline: only possible if this very call had already timed out.
            raise RedisTimeoutError("record batch reached Redis after its deadline")
        errors = [r for r in settled if isinstance(r, RedisError)]
        if errors:
            log.error("decision log: %d settlements failed, first: %s", len(errors), errors[0])

    def _record_call(self, events: Sequence[DecisionEvent]) -> tuple[list[str], list[Any]]:
        deadline = ""
        if self._deadline_s is not None and self._clock_offset_ms is not None:
            deadline = f"{time.time() * 1000 + self._clock_offset_ms + self._deadline_s * 1000:.0f}"
        args: list[Any] = [self.max_events, self._keys.prefix + ":", len(events), deadline]
        for event in events:
            tokens = (event.prompt_tokens or 0) + event.completion_tokens
            fields = event.to_fields()
            args += [
                event.client,
                event.decision,
                tokens if event.decision == "admitted" else 0,
                event.ts,
                event.tier,
                event.level,
                len(fields),
            ]
            for name, value in fields.items():
                args += [name, value]
        return [self._keys.decisions, self._keys.clients], args

    async def _replay(self) -> None:
        """Write spooled events to Redis, each chunk exactly once even if Redis fails again."""
        own = self._spool.own_events()
        while self._replayed < len(own):
            chunk = own[self._replayed : self._replayed + self._batch_size]
            await self._write([_Item(e, None) for e in chunk])
            self._replayed += len(chunk)
            self._metrics.events_written.inc(len(chunk))
        if own or self._spool.pending:
            self._spool.clear_own()
            self._replayed = 0
            log.info("decision log: replayed %d spooled events", len(own))
        for path, events, _handle in self._spool.orphans():
            # One transaction per file: it is stored whole or not at all.
            await self._write([_Item(e, None) for e in events])
            path.unlink()
            self._metrics.events_written.inc(len(events))
            log.info("decision log: replayed %d events left by a stopped process", len(events))
        self._orphans_checked = True
        self._orphan_check_at = time.monotonic() + ORPHAN_CHECK_INTERVAL_S
