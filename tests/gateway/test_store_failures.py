"""The gateway when its Redis goes away: fail open or closed, spool, replay; nothing lost.

Every test runs a Redis server of its own (``tests.redis_server``) so it can stop and
restart it; the gateway and the upstream are real servers on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.keys import KeySpace
from gateway.store.events import DecisionEvent
from gateway.store.spool import Spool
from tests.gateway.conftest import GatewayFactory
from tests.redis_server import RedisServer
from tests.servers import free_port

AUTH = {"authorization": "Bearer test-key-1"}
CHAT = {"model": "plain", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
SLOW_S = 3.0  # no request may take this long while the store is down


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def _post(gw: str) -> httpx.Response:
    started = time.monotonic()
    response = httpx.post(f"{gw}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < SLOW_S, f"request took {elapsed:.2f}s"
    return response


def _events(client: redis.Redis, keys: KeySpace) -> list[dict[str, str]]:
    rows = client.xrange(keys.decisions)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _spool_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "spool").glob("decisions-*.jsonl"))


def _spooled(data_dir: Path) -> list[DecisionEvent]:
    events: list[DecisionEvent] = []
    for path in _spool_files(data_dir):
        for line in path.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                events.append(DecisionEvent.from_json(line))
    return events


def _metric(gw: str, name: str) -> float:
    for line in httpx.get(f"{gw}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def _reasons(event: dict[str, str]) -> list[str]:
    return [r for r in event["reasons"].split(",") if r]


def test_fail_open_serves_through_an_outage_and_loses_no_event(
    gateway: GatewayFactory,
    scripted_upstream: Any,
    own_redis: RedisServer,
    keyspace: KeySpace,
    tmp_path: Path,
) -> None:
    url, _ = scripted_upstream
    client = redis.Redis(port=own_redis.port)
    data_dir = tmp_path / "data"
    with gateway(url, redis=own_redis.url) as gw:
        for _ in range(3):
            assert _post(gw).status_code == 200
        _wait(lambda: len(_events(client, keys=keyspace)) == 3, "the first events")

        own_redis.stop(save=True)  # a Redis with persistence going down and coming back
        for _ in range(4):
            r = _post(gw)
            assert r.status_code == 200, r.text
            assert "x-ratelimit-limit-requests" not in r.headers  # nothing was checked
        assert httpx.get(f"{gw}/readyz").status_code == 503
        _wait(lambda: len(_spooled(data_dir)) == 4, "4 events in the spool")
        assert all("store_unavailable" in e.reasons for e in _spooled(data_dir))

        own_redis.start()
        for _ in range(3):
            assert _post(gw).status_code == 200
        _wait(lambda: len(_events(client, keyspace)) >= 10, "all 10 events in the stream")
        assert _metric(gw, "antidistill_decision_events_spooled_total") >= 4
    events = _events(client, keyspace)
    client.close()

    assert len(events) == 10
    assert len({e["id"] for e in events}) == 10
    flags = ["store_unavailable" in _reasons(e) for e in events]
    assert flags == [False] * 3 + [True] * 4 + [False] * 3  # replayed in order
    assert [int(e["ts"]) for e in events] == sorted(int(e["ts"]) for e in events)
    assert {e["status"] for e in events} == {"200"}
    assert {e["decision"] for e in events} == {"admitted"}
    assert _spooled(data_dir) == []
    assert _spool_files(data_dir) == []  # an emptied spool file is removed on close


def test_fail_closed_answers_503_and_loses_no_event(
    gateway: GatewayFactory,
    scripted_upstream: Any,
    own_redis: RedisServer,
    keyspace: KeySpace,
    tmp_path: Path,
) -> None:
    url, upstream_app = scripted_upstream
    client = redis.Redis(port=own_redis.port)
    with gateway(url, {"store": {"on_store_error": "fail_closed"}}, redis=own_redis.url) as gw:
        for _ in range(3):
            assert _post(gw).status_code == 200
        _wait(lambda: len(_events(client, keyspace)) == 3, "the first events")
        forwarded = len(upstream_app.state.seen)

        own_redis.kill()  # a crash: this Redis comes back empty
        for _ in range(4):
            r = _post(gw)
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "store_unavailable"
            assert r.json()["error"]["type"] == "service_unavailable"
            assert r.headers["retry-after"] == "1"
        assert len(upstream_app.state.seen) == forwarded  # nothing reached the model
        _wait(lambda: len(_spooled(tmp_path / "data")) == 4, "4 events in the spool")

        own_redis.start()
        for _ in range(3):
            assert _post(gw).status_code == 200
        _wait(lambda: len(_events(client, keyspace)) >= 7, "7 events in the restarted store")
    events = _events(client, keyspace)
    client.close()

    assert len(events) == 7  # the 3 from before the crash went with it
    assert len({e["id"] for e in events}) == 7
    rejected = [e for e in events if e["status"] == "503"]
    assert len(rejected) == 4
    assert all(e["decision"] == "rejected" and "store_unavailable" in _reasons(e) for e in rejected)
    assert [e["status"] for e in events] == ["503"] * 4 + ["200"] * 3
    assert _spool_files(tmp_path / "data") == []


def test_starts_and_serves_with_redis_never_reachable(
    gateway: GatewayFactory, scripted_upstream: Any, keyspace: KeySpace, tmp_path: Path
) -> None:
    url, _ = scripted_upstream
    later = RedisServer(tmp_path / "redis", port=free_port())  # nothing listens there yet
    data_dir = tmp_path / "data"
    try:
        with gateway(url, redis=later.url) as gw:
            for _ in range(5):
                r = _post(gw)
                assert r.status_code == 200
                assert r.json()["choices"][0]["message"]["content"] == "Scripted answer."
            _wait(lambda: len(_spooled(data_dir)) == 5, "5 events in the spool")
            spooled = _spooled(data_dir)
            assert all("store_unavailable" in e.reasons for e in spooled)
            assert all(e.decision == "admitted" and e.status == 200 for e in spooled)
            assert len(_spool_files(data_dir)) == 1

            later.start()  # the store appears: the spool drains without further traffic
            client = redis.Redis(port=later.port)
            _wait(lambda: len(_events(client, keyspace)) == 5, "the spooled events in Redis")
            assert _spooled(data_dir) == []
        assert len(_events(client, keyspace)) == 5
        client.close()
    finally:
        later.kill()


def _orphan_event(n: int) -> DecisionEvent:
    return DecisionEvent(
        ts=1_700_000_000_000 + n,
        id=f"orphan-{n}",
        client="crashed-client",
        route="/v1/chat/completions",
        decision="admitted",
        status=200,
        reasons=("store_unavailable",),
    )


def test_spool_of_a_crashed_process_is_replayed_once(
    gateway: GatewayFactory,
    scripted_upstream: Any,
    redis_sync: redis.Redis,
    keyspace: KeySpace,
    tmp_path: Path,
) -> None:
    url, _ = scripted_upstream
    spool_dir = tmp_path / "data" / "spool"
    crashed = Spool(spool_dir)
    crashed.append([_orphan_event(n) for n in range(3)])
    orphan = crashed.path
    crashed.close()  # its lock goes, the file stays: as when the process dies
    assert orphan.exists()

    with gateway(url) as gw:
        # Replayed at start, before any request comes in.
        _wait(lambda: len(_events(redis_sync, keyspace)) == 3, "the orphaned events")
        assert not orphan.exists()
        assert _post(gw).status_code == 200
        _wait(lambda: len(_events(redis_sync, keyspace)) == 4, "the new event")
    with gateway(url) as gw:  # a second start on the same data dir replays nothing again
        assert _post(gw).status_code == 200
        _wait(lambda: len(_events(redis_sync, keyspace)) >= 5, "the second gateway's event")
    events = _events(redis_sync, keyspace)
    assert len(events) == 5
    assert [e["id"] for e in events[:3]] == ["orphan-0", "orphan-1", "orphan-2"]
    assert sum(e["id"].startswith("orphan-") for e in events) == 3
    assert _spool_files(tmp_path / "data") == []


def test_hung_redis_delays_requests_by_the_timeout_only(
    gateway: GatewayFactory,
    scripted_upstream: Any,
    own_redis: RedisServer,
    keyspace: KeySpace,
    tmp_path: Path,
) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP): fail open within the
    configured timeout; after it resumes every event is in the stream exactly once.

    Hung from the start, so no command is ever sent on an established connection (that
    case is the xfail test in test_decision_log.py)."""
    url, _ = scripted_upstream
    client = redis.Redis(port=own_redis.port)
    with gateway(url, redis=own_redis.url, redis_timeout_s=0.3) as gw:
        own_redis.pause()
        try:
            for _ in range(3):
                assert _post(gw).status_code == 200
            _wait(lambda: len(_spooled(tmp_path / "data")) == 3, "3 events in the spool")
        finally:
            own_redis.resume()
        assert _post(gw).status_code == 200
        _wait(lambda: len(_events(client, keyspace)) >= 4, "all 4 events")
    events = _events(client, keyspace)
    client.close()
    ids = [e["id"] for e in events]
    assert len(ids) == 4, f"{len(ids)} events for 4 requests; {len(ids) - len(set(ids))} repeated"
    assert ["store_unavailable" in _reasons(e) for e in events] == [True] * 3 + [False]


def test_hung_redis_leaves_no_phantom_concurrency_lease(
    gateway: GatewayFactory,
    scripted_upstream: Any,
    own_redis: RedisServer,
    keyspace: KeySpace,
    tmp_path: Path,
) -> None:
    url, _ = scripted_upstream
    client = redis.Redis(port=own_redis.port)
    policy = {"tiers": {"default": {"limits": {"requests_per_minute": 1000, "max_concurrent": 1}}}}
    with gateway(url, policy, redis=own_redis.url, redis_timeout_s=0.3) as gw:
        assert _post(gw).status_code == 200  # pooled connections are established
        _wait(lambda: len(_events(client, keyspace)) == 1, "the first event")
        time.sleep(0.1)  # the writer hands its connection back to the pool
        own_redis.pause()
        try:
            assert _post(gw).status_code == 200  # failed open; its admit call is in Redis's buffer
        finally:
            own_redis.resume()
        _wait(lambda: len(_events(client, keyspace)) == 2, "both events")
        time.sleep(1.2)  # past the admit stage's breaker, so the next request asks Redis
        r = _post(gw)
    client.close()
    assert r.status_code == 200, r.text
