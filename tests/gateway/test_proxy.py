"""The proxy through a real gateway: routing, bad input, upstream failures, headers."""

from __future__ import annotations

import httpx
import redis

from gateway.identity import client_id_for
from gateway.keys import KeySpace
from tests.gateway.conftest import GatewayFactory, wait_for_events
from tests.servers import free_port

AUTH = {"authorization": "Bearer test-key-1"}
CHAT = {"model": "plain", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}


def test_passes_through_and_logs_one_event(
    gateway: GatewayFactory, scripted_upstream, redis_sync: redis.Redis, keyspace: KeySpace
) -> None:
    url, _ = scripted_upstream
    with gateway(url) as gw:
        r = httpx.post(f"{gw}/v1/chat/completions", json=CHAT, headers=AUTH)
        direct = httpx.post(f"{url}/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert r.content == direct.content
        assert r.headers["x-upstream"] == "scripted"
        assert r.headers["x-ratelimit-limit-requests"] == "60"
        assert r.headers["x-ratelimit-remaining-requests"] == "59"
        events = wait_for_events(redis_sync, keyspace, 1)
    assert len(events) == 1
    event = events[0]
    assert event["client"] == client_id_for("test-key-1", b"test-secret")
    assert event["decision"] == "admitted" and event["status"] == "200"
    assert event["prompt_tokens"] == "7" and event["completion_tokens"] == "3"
    assert "test-key-1" not in str(events)


def test_bad_input_never_500(
    gateway: GatewayFactory, scripted_upstream, redis_sync: redis.Redis, keyspace: KeySpace
) -> None:
    url, _ = scripted_upstream
    with gateway(url, {"requests": {"max_body_bytes": 1000}}) as gw:

        def post(body: bytes) -> httpx.Response:
            return httpx.post(f"{gw}/v1/chat/completions", content=body, headers=AUTH)

        assert post(b"{not json").status_code == 400
        assert post(b"[1, 2]").status_code == 400
        assert post(b"\xff\xfe\x00").status_code == 400
        assert post(b"").status_code == 400
        big = post(b'{"x": "' + b"a" * 5000 + b'"}')
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "request_too_large"
        assert httpx.post(f"{gw}/v1/nothing", json=CHAT, headers=AUTH).status_code == 404
        assert httpx.get(f"{gw}/etc/passwd").status_code == 404
        assert httpx.get(f"{gw}/v1/chat/completions", headers=AUTH).status_code == 405
        assert httpx.post(f"{gw}/v1/chat/completions", json=CHAT).status_code == 401
        events = wait_for_events(redis_sync, keyspace, 6)
    assert len(events) == 6  # one per routed request; 404/405 name no route and log nothing
    assert {e["status"] for e in events} == {"400", "413", "401"}


def test_upstream_down_gives_502(gateway: GatewayFactory) -> None:
    with gateway(f"http://127.0.0.1:{free_port()}") as gw:
        r = httpx.post(f"{gw}/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unavailable"


def test_upstream_slow_gives_504(gateway: GatewayFactory, scripted_upstream) -> None:
    url, _ = scripted_upstream
    with gateway(url, {"upstream": {"read_timeout_s": 0.3}}) as gw:
        r = httpx.post(f"{gw}/v1/chat/completions", json={**CHAT, "model": "slow:2"}, headers=AUTH)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"


def test_upstream_errors_pass_through(gateway: GatewayFactory, scripted_upstream) -> None:
    url, _ = scripted_upstream
    with gateway(url) as gw:
        for code in (400, 422, 500, 503):
            r = httpx.post(
                f"{gw}/v1/chat/completions", json={**CHAT, "model": f"status:{code}"}, headers=AUTH
            )
            assert r.status_code == code
            assert r.json()["error"]["code"] == "scripted"


def test_hop_by_hop_and_credentials_not_forwarded(
    gateway: GatewayFactory, scripted_upstream
) -> None:
    url, app = scripted_upstream
    with gateway(url) as gw:
        headers = {
            **AUTH,
            "x-api-key": "other",
            "connection": "keep-alive, x-private",
            "x-private": "secret",
            "proxy-authorization": "p",
            "te": "trailers",
            "x-keep": "1",
        }
        r = httpx.post(
            f"{gw}/v1/chat/completions", json={**CHAT, "model": "echo-headers"}, headers=headers
        )
    assert r.status_code == 200
    seen = app.state.seen[-1]["headers"]
    for name in ("authorization", "x-api-key", "x-private", "proxy-authorization", "te"):
        assert name not in seen, name
    assert seen["x-keep"] == "1"
