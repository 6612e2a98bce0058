"""The decision log against a real Redis: batches, summaries, trimming, spool and replay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from gateway.keys import KeySpace
from gateway.metrics import Metrics
from gateway.ratelimit.limiter import Limiter
from gateway.store.connect import connect
from gateway.store.decision_log import DecisionLog, Settlement
from gateway.store.events import DecisionEvent
from gateway.store.spool import Spool
from tests.redis_server import RedisServer
from tests.servers import free_port


def _event(n: int, **fields: Any) -> DecisionEvent:
    base: dict[str, Any] = {
        "ts": 1_700_000_000_000 + n,
        "id": f"e{n}",
        "client": "c1",
        "route": "/v1/chat/completions",
        "decision": "admitted",
        "status": 200,
        "tier": "default",
    }
    return DecisionEvent(**{**base, **fields})


def _log(redis_client: aioredis.Redis, keys: KeySpace, spool_dir: Path, **kw: Any) -> DecisionLog:
    kw.setdefault("max_events", 1_000_000)
    return DecisionLog(redis_client, keys, Limiter(redis_client), Spool(spool_dir), Metrics(), **kw)


def _stream(client: redis.Redis, keys: KeySpace) -> list[DecisionEvent]:
    rows = client.xrange(keys.decisions)
    return [
        DecisionEvent.from_fields({k.decode(): v.decode() for k, v in fields.items()})
        for _, fields in rows
    ]


async def _eventually(predicate: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def _command_calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_events_go_in_batches_one_xadd_each(own_redis: RedisServer, tmp_path: Path) -> None:
    keys = KeySpace("t")
    sync = redis.Redis(port=own_redis.port)
    sync.config_resetstat()
    client = connect(own_redis.url, 2.0)
    log = _log(client, keys, tmp_path / "spool", batch_size=256)
    events = [_event(n, client=f"c{n % 7}") for n in range(1000)]
    log.start()
    for event in events:
        log.record(event)
    await log.flush()
    assert _command_calls(sync, "xadd") == 1000
    # ceil(1000 / 256) batches, one call each, plus the very first try that a fresh server
    # refuses with NOSCRIPT (the script is then loaded and the batch sent again).
    assert _command_calls(sync, "evalsha") == 5
    assert _stream(sync, keys) == events  # in order, every field back as recorded
    await log.close()
    await client.aclose()
    sync.close()


async def test_summary_hash_and_client_index(
    redis_url: str, redis_sync: redis.Redis, keyspace: KeySpace, tmp_path: Path
) -> None:
    client = connect(redis_url, 2.0)
    log = _log(client, keyspace, tmp_path / "spool")
    log.start()
    log.record(_event(1, prompt_tokens=7, completion_tokens=3))
    log.record(_event(2, decision="rejected", status=429, prompt_tokens=50, level="watch"))
    log.record(_event(3, prompt_tokens=None, completion_tokens=5, tier="gold"))
    log.record(_event(4, client="c2", prompt_tokens=1, completion_tokens=1))
    await log.close()
    await client.aclose()

    c1 = {k.decode(): v.decode() for k, v in redis_sync.hgetall(keyspace.summary("c1")).items()}
    assert c1 == {
        "requests": "3",
        "decision:admitted": "2",
        "decision:rejected": "1",
        "tokens": "15",  # 7 + 3 + 5; a rejected request's tokens are not counted
        "last_ts": str(_event(3).ts),
        "tier": "gold",
        "level": "allow",
        "first_ts": str(_event(1).ts),
    }
    c2 = redis_sync.hgetall(keyspace.summary("c2"))
    assert c2[b"requests"] == b"1" and c2[b"tokens"] == b"2"
    clients = redis_sync.zrange(keyspace.clients, 0, -1, withscores=True)
    assert clients == [(b"c1", float(_event(3).ts)), (b"c2", float(_event(4).ts))]


async def test_stream_is_trimmed_to_about_max_events(
    redis_url: str, redis_sync: redis.Redis, keyspace: KeySpace, tmp_path: Path
) -> None:
    client = connect(redis_url, 2.0)
    log = _log(client, keyspace, tmp_path / "spool", max_events=100, batch_size=100)
    log.start()
    for n in range(2000):
        log.record(_event(n))
    await log.close()
    await client.aclose()
    length = redis_sync.xlen(keyspace.decisions)
    assert 100 <= length <= 300  # MAXLEN ~ trims whole stream nodes (100 entries by default)
    newest = _stream(redis_sync, keyspace)[-1]
    assert newest.id == "e1999"


async def test_close_writes_out_everything_queued(
    redis_url: str, redis_sync: redis.Redis, keyspace: KeySpace, tmp_path: Path
) -> None:
    client = connect(redis_url, 2.0)
    log = _log(client, keyspace, tmp_path / "spool", batch_size=50)
    log.start()
    for n in range(300):
        log.record(_event(n))
    await log.close()  # no flush before: close itself must drain the queue
    await client.aclose()
    assert redis_sync.xlen(keyspace.decisions) == 300
    assert list((tmp_path / "spool").glob("decisions-*.jsonl")) == []


async def test_settlement_releases_the_lease_in_the_same_batch(
    redis_url: str, redis_sync: redis.Redis, keyspace: KeySpace, tmp_path: Path
) -> None:
    client = connect(redis_url, 2.0)
    limiter = Limiter(client)
    inflight = keyspace.inflight("c1")
    admission = await limiter.admit(
        level_key=keyspace.level("c1"),
        charges=(),
        inflight_key=inflight,
        max_inflight=2,
        lease_id="lease-1",
    )
    assert admission.allowed
    assert redis_sync.zcard(inflight) == 1
    log = _log(client, keyspace, tmp_path / "spool")
    log.start()
    log.record(_event(1), Settlement(adjustments=(), inflight_key=inflight, lease_id="lease-1"))
    await log.close()
    await client.aclose()
    assert redis_sync.zcard(inflight) == 0
    assert redis_sync.xlen(keyspace.decisions) == 1


async def test_close_with_redis_down_keeps_events_for_the_next_process(
    redis_url: str, redis_sync: redis.Redis, keyspace: KeySpace, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    down = connect(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    log = _log(down, keyspace, spool_dir)
    log.start()
    for n in range(5):
        log.record(_event(n))
    await log.close()
    await down.aclose()
    [left] = list(spool_dir.glob("decisions-*.jsonl"))
    assert left.read_bytes().count(b"\n") == 5

    client = connect(redis_url, 2.0)
    later = _log(client, keyspace, spool_dir)
    later.start()  # no new events: the orphan is replayed anyway
    await _eventually(lambda: redis_sync.xlen(keyspace.decisions) == 5, "the replayed events")
    await later.close()
    await client.aclose()
    assert [e.id for e in _stream(redis_sync, keyspace)] == [f"e{n}" for n in range(5)]
    assert list(spool_dir.glob("decisions-*.jsonl")) == []


async def test_spool_is_replayed_when_redis_returns_without_new_events(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    keys = KeySpace("t")
    client = connect(own_redis.url, 0.5)
    log = _log(client, keys, tmp_path / "spool", retry_after_failure_s=0.1, deadline_s=0.3)
    log.start()
    log.record(_event(0))
    await log.flush()
    own_redis.kill()
    for n in range(1, 4):
        log.record(_event(n))
    await log.flush()
    assert log.spooled == 3
    own_redis.start()  # empty: the event written before the crash is gone with it
    sync = redis.Redis(port=own_redis.port)
    await _eventually(lambda: sync.xlen(keys.decisions) == 3, "the spooled events")
    assert log.spooled == 0
    log.record(_event(4))
    await log.close()
    await client.aclose()
    assert [e.id for e in _stream(sync, keys)] == ["e1", "e2", "e3", "e4"]
    sync.close()


@pytest.mark.parametrize("refusal", ["oom", "readonly"])
async def test_writer_survives_a_store_that_refuses_writes(
    own_redis: RedisServer, tmp_path: Path, refusal: str
) -> None:
    """Redis answers but refuses writes (maxmemory reached, or a replica after a failover):
    the events wait in the spool and are written once Redis takes writes again."""
    keys = KeySpace("t")
    sync = redis.Redis(port=own_redis.port)
    client = connect(own_redis.url, 2.0)
    log = _log(client, keys, tmp_path / "spool", retry_after_failure_s=0.1)
    log.start()
    if refusal == "oom":
        sync.config_set("maxmemory", 1)
    else:
        sync.replicaof("127.0.0.1", free_port())
    for n in range(3):
        log.record(_event(n))
    await asyncio.wait_for(log.flush(), 10)
    assert log.spooled == 3
    if refusal == "oom":
        sync.config_set("maxmemory", 0)
    else:
        sync.replicaof("NO", "ONE")
    log.record(_event(3))
    await _eventually(lambda: sync.xlen(keys.decisions) == 4, "every event")
    await asyncio.wait_for(log.close(), 10)
    await client.aclose()
    assert [e.id for e in _stream(sync, keys)] == ["e0", "e1", "e2", "e3"]
    sync.close()


async def test_write_that_timed_out_but_ran_later_is_not_stored_twice(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    keys = KeySpace("t")
    client = connect(own_redis.url, 0.3)
    log = _log(client, keys, tmp_path / "spool", retry_after_failure_s=0.1, deadline_s=0.3)
    log.start()
    log.record(_event(0))
    await log.flush()  # the writer's connection is established and pooled
    own_redis.pause()  # hung: the transaction is sent, no answer comes
    try:
        log.record(_event(1))
        await asyncio.wait_for(log.flush(), 10)
        assert log.spooled == 1
    finally:
        own_redis.resume()  # Redis now runs the transaction it had received
    sync = redis.Redis(port=own_redis.port)
    await _eventually(lambda: log.spooled == 0, "the replay")
    await log.close()
    await client.aclose()
    ids = [e.id for e in _stream(sync, keys)]
    sync.close()
    assert ids == ["e0", "e1"]


async def test_provenance_marks_are_kept_per_client(
    redis_url: str, redis_sync: redis.Redis, keyspace: KeySpace, tmp_path: Path
) -> None:
    client = connect(redis_url, 2.0)
    log = _log(client, keyspace, tmp_path / "spool")
    log.start()
    log.record(_event(1), None, [b'{"kind":"dawn","label":3}'])
    log.record(_event(2))
    log.record(_event(3), None, [b'{"kind":"dawn","label":7}', b'{"kind":"dawn","label":1}'])
    await log.close()
    await client.aclose()
    marks = redis_sync.lrange(keyspace.provenance("c1"), 0, -1)
    assert marks == [
        b'{"kind":"dawn","label":3}',
        b'{"kind":"dawn","label":7}',
        b'{"kind":"dawn","label":1}',
    ]
