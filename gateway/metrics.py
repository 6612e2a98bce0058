"""Prometheus metrics of one gateway process (its own registry; no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "antidistill_requests",
            "Requests by route, decision and enforcement level.",
            ["route", "decision", "level"],
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
