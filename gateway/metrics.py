"""Prometheus metrics of one gateway process (its own registry; no module globals).

Counters and histograms are this process's own. The review gauges (flagged clients by
level, linked campaigns, detector lag and backlog) describe the shared Redis state that all
processes and detector workers write, so every process reports the same values; they are
refreshed from Redis when ``/metrics`` is scraped (:meth:`Metrics.refresh`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.keys import KeySpace

FLAGGED_LEVELS = ("watch", "degrade", "throttle", "block")
_MAX_REASON = 64


def reason_label(reason: str) -> str:
    """A reason code with its per-client part dropped, so label values stay few.

    ``level:detector:0.93`` → ``level:detector``, ``level:campaign:ab12`` →
    ``level:campaign``, ``level:operator:fraud_ticket_1`` → ``level:operator``; feature
    reasons (``level:reasoning_share_high``) and the gateway's own codes stay as they are.
    """
    head, sep, rest = reason.partition(":")
    if head == "level" and sep:
        kind, _, _detail = rest.partition(":")
        return f"level:{kind}"[:_MAX_REASON]
    return reason[:_MAX_REASON]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "antidistill_requests",
            "Requests by route, decision and enforcement level.",
            ["route", "decision", "level"],
            registry=self.registry,
        )
        self.decision_reasons = Counter(
            "antidistill_decision_reasons",
            "Reason codes of decisions, by decision and enforcement level (a request may "
            "count under several reasons).",
            ["decision", "level", "reason"],
            registry=self.registry,
        )
        self.flagged_clients = Gauge(
            "antidistill_flagged_clients",
            "Clients the detector holds at each level (enforced or, in shadow mode, would-be).",
            ["level"],
            registry=self.registry,
        )
        self.campaigns = Gauge(
            "antidistill_campaigns",
            "Campaigns (linked accounts) found by the detector's latest linking runs.",
            registry=self.registry,
        )
        self.detector_lag = Gauge(
            "antidistill_detector_lag_seconds",
            "How far behind the newest request each detector worker was when it last read.",
            ["consumer"],
            registry=self.registry,
        )
        self.detector_backlog = Gauge(
            "antidistill_detector_backlog",
            "Decision events not yet read by the detector's consumer group.",
            registry=self.registry,
        )
        self.detector_heartbeat = Gauge(
            "antidistill_detector_last_report_seconds",
            "Seconds since each detector worker last published its counters.",
            ["consumer"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "antidistill_upstream_latency_seconds",
            "Time to the upstream's response headers.",
            ["route"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
            registry=self.registry,
        )
        self.limiter_results = Counter(
            "antidistill_limiter_results",
            "Admission results of the rate limiter.",
            ["result"],
            registry=self.registry,
        )
        self.events_written = Counter(
            "antidistill_decision_events_written",
            "Decision events written to Redis.",
            registry=self.registry,
        )
        self.events_spooled = Counter(
            "antidistill_decision_events_spooled",
            "Decision events written to the local spool while Redis was unreachable.",
            registry=self.registry,
        )
        self.events_lost = Counter(
            "antidistill_decision_events_lost",
            "Decision events that neither Redis nor the local spool could take.",
            registry=self.registry,
        )
        self.event_queue = Gauge(
            "antidistill_decision_queue_depth",
            "Decision events waiting for the background writer.",
            registry=self.registry,
        )
        self.policy_reloads = Counter(
            "antidistill_policy_reloads",
            "Policy reload attempts by result.",
            ["result"],
            registry=self.registry,
        )

    def count_decision(self, route: str, decision: str, level: str, reasons: Iterable[str]) -> None:
        self.requests.labels(route=route, decision=decision, level=level).inc()
        for reason in reasons:
            self.decision_reasons.labels(
                decision=decision, level=level, reason=reason_label(reason)
            ).inc()

    async def refresh(self, redis: aioredis.Redis, keys: KeySpace) -> None:
        """Read the review gauges from Redis (one round trip; raises on a store error)."""
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zrange(keys.flagged, 0, -1)
            pipe.hlen(keys.campaigns)
            pipe.hgetall(keys.detector_stats)
            pipe.xinfo_groups(keys.decisions)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        flagged, campaigns, stats, groups = replies
        levels = await _levels(redis, keys, [] if isinstance(flagged, Exception) else flagged)
        for level in FLAGGED_LEVELS:
            self.flagged_clients.labels(level=level).set(levels.count(level))
        if not isinstance(campaigns, Exception):
            self.campaigns.set(campaigns)
        now_ms = time.time() * 1000
        if not isinstance(stats, Exception):
            for consumer, raw in stats.items():
                name = consumer.decode() if isinstance(consumer, bytes) else str(consumer)
                data = orjson.loads(raw)
                self.detector_lag.labels(consumer=name).set(data.get("lag_ms", 0) / 1000)
                self.detector_heartbeat.labels(consumer=name).set(
                    max(0.0, (now_ms - data.get("ts", now_ms)) / 1000)
                )
        if not isinstance(groups, Exception):
            for group in groups:
                name = group.get("name")
                if name in (b"detector", "detector") and group.get("lag") is not None:
                    self.detector_backlog.set(group["lag"])

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def _levels(redis: aioredis.Redis, keys: KeySpace, clients: list[Any]) -> list[str]:
    """The detector's latest level of each flagged client (its ``detector`` hash)."""
    if not clients:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for client in clients:
            name = client.decode() if isinstance(client, bytes) else str(client)
            pipe.hget(keys.detector(name), "level")
        found = await pipe.execute()
    return [v.decode() if isinstance(v, bytes) else str(v) for v in found if v]
