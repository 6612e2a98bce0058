"""Streaming (SSE) through the gateway: chunk by chunk, metered, cut cleanly when over."""

from __future__ import annotations

import httpx
import orjson
import redis

from gateway.keys import KeySpace
from tests.gateway.conftest import GatewayFactory, wait_for_events

AUTH = {"authorization": "Bearer stream-key"}


def _data_lines(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def test_stream_passes_through_unchanged(gateway: GatewayFactory, scripted_upstream) -> None:
    url, _ = scripted_upstream
    body = {
        "model": "stream:8",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 20,
    }
    with gateway(url) as gw:
        direct = httpx.post(f"{url}/v1/chat/completions", json=body).text
        with httpx.stream("POST", f"{gw}/v1/chat/completions", json=body, headers=AUTH) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            chunks = list(r.iter_raw())
    assert b"".join(chunks).decode() == direct
    assert len(chunks) > 1  # not buffered into one body


def test_stream_cut_when_reservation_runs_out(
    gateway: GatewayFactory, scripted_upstream, redis_sync: redis.Redis, keyspace: KeySpace
) -> None:
    url, _ = scripted_upstream
    # The scripted upstream ignores max_tokens and sends 50 tokens; 5 were reserved.
    body = {
        "model": "stream:50",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 5,
    }
    with gateway(url) as gw:
        text = httpx.post(f"{gw}/v1/chat/completions", json=body, headers=AUTH).text
        events = wait_for_events(redis_sync, keyspace, 1)
    data = _data_lines(text)
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    # 5 reserved plus the meter's slack of 4 chunks (chunks only approximate tokens).
    assert [c for c in contents if c] == [f"t{i} " for i in range(9)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert events[0]["stream_cut"] == "1"
    assert events[0]["completion_tokens"] == "10"  # the tenth was counted, then withheld
    assert "stream_reservation_exhausted" in events[0]["reasons"]
