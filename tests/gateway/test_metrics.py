"""``/metrics``: decisions by level and reason, and the review gauges read from Redis."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import redis

from gateway.keys import KeySpace
from gateway.metrics import reason_label
from tests.gateway.conftest import GatewayFactory

AUTH = {"Authorization": "Bearer test-key-1"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric family in the exposition text."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            found[key[len(name) :]] = float(value)
    return found


def test_reason_labels_drop_per_client_parts() -> None:
    assert reason_label("level:detector:0.93") == "level:detector"
    assert reason_label("level:campaign:ab12cd") == "level:campaign"
    assert reason_label("level:operator:ticket_4711") == "level:operator"
    assert reason_label("level:reasoning_share_high") == "level:reasoning_share_high"
    assert reason_label("requests_per_minute") == "requests_per_minute"
    assert len(reason_label("x" * 500)) == 64


def test_decisions_by_reason_and_review_gauges(
    gateway: GatewayFactory, scripted_upstream: Any, redis_sync: redis.Redis, keyspace: KeySpace
) -> None:
    url, _ = scripted_upstream
    policy = {"tiers": {"default": {"limits": {"requests_per_minute": 2}}}}
    # what the detector workers leave in Redis
    for client, level, score in (("a" * 64, "block", 0.99), ("b" * 64, "watch", 0.55)):
        redis_sync.zadd(keyspace.flagged, {client: score})
        redis_sync.hset(keyspace.detector(client), mapping={"level": level, "score": score})
    redis_sync.hset(keyspace.campaigns, "c1", orjson.dumps({"members": ["a" * 64]}))
    redis_sync.hset(
        keyspace.detector_stats,
        "host-1",
        orjson.dumps({"lag_ms": 1500, "ts": 0, "events": 10}),
    )
    with gateway(url, policy=policy) as gw:
        codes = [
            httpx.post(f"{gw}/v1/chat/completions", json=CHAT, headers=AUTH).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 429, 429]
        text = httpx.get(f"{gw}/metrics").text
    reasons = samples(text, "antidistill_decision_reasons_total")
    assert reasons['{decision="rejected",level="allow",reason="rate_limited"}'] == 2
    flagged = samples(text, "antidistill_flagged_clients")
    assert flagged['{level="block"}'] == 1 and flagged['{level="watch"}'] == 1
    assert flagged['{level="degrade"}'] == 0
    assert samples(text, "antidistill_campaigns")[""] == 1
    assert samples(text, "antidistill_detector_lag_seconds")['{consumer="host-1"}'] == 1.5
    assert samples(text, "antidistill_detector_last_report_seconds")['{consumer="host-1"}'] > 1e6


def test_metrics_answer_when_redis_is_down(gateway: GatewayFactory, scripted_upstream: Any) -> None:
    url, _ = scripted_upstream
    with gateway(url, redis="redis://127.0.0.1:1", redis_timeout_s=0.2) as gw:
        r = httpx.get(f"{gw}/metrics")
    assert r.status_code == 200 and "antidistill_requests" in r.text


def test_the_grafana_dashboard_only_uses_metrics_the_gateway_exports() -> None:
    from pathlib import Path

    from gateway.metrics import Metrics

    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }
    dashboard = orjson.loads(Path("deploy/grafana/antidistill.json").read_bytes())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"antidistill_[a-z_]+", target["expr"])
    }
    assert used and used <= exported, sorted(used - exported)
