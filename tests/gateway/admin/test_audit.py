"""The audit trail: entries round-trip, are read newest first, filtered and trimmed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.admin import audit
from gateway.admin.audit import AuditEntry
from gateway.keys import KeySpace
from tests.gateway.admin.seed import BENIGN, HARVESTER, drop


@pytest.fixture
async def aredis(redis_url: str, keyspace: KeySpace) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await drop(client, keyspace)
    await client.aclose()


def _entry(client: str, ts_ms: int = 0, **fields: str) -> AuditEntry:
    return AuditEntry(
        id="",
        ts_ms=ts_ms,
        actor=fields.pop("actor", "alice"),
        action=fields.pop("action", "block"),
        client=client,
        reason=fields.pop("reason", "scraping, per ticket #12"),
        **fields,
    )


def test_fields_round_trip() -> None:
    entry = _entry(HARVESTER, 1_700_000_000_123, level="block", previous_level="watch")
    fields = entry.to_fields()
    assert "id" not in fields
    assert fields["ts_ms"] == "1700000000123" and fields["label"] == ""
    assert AuditEntry.from_fields("1-0", fields) == AuditEntry(
        id="1-0",
        ts_ms=1_700_000_000_123,
        actor="alice",
        action="block",
        client=HARVESTER,
        reason="scraping, per ticket #12",
        level="block",
        previous_level="watch",
    )


def test_from_fields_tolerates_missing_and_unknown_fields() -> None:
    entry = AuditEntry.from_fields("1700000000999-3", {"action": "label", "new_field": "x"})
    assert entry.ts_ms == 1_700_000_000_999  # from the stream id
    assert (entry.action, entry.actor, entry.client, entry.level) == ("label", "", "", "")


async def test_append_stamps_id_and_server_time(aredis: aioredis.Redis, keyspace: KeySpace) -> None:
    secs, _ = await aredis.time()
    stored = await audit.append(aredis, keyspace, _entry(HARVESTER))
    assert stored.id and stored.id.split("-")[0].isdigit()
    assert abs(stored.ts_ms - secs * 1000) < 5_000
    given = await audit.append(aredis, keyspace, _entry(HARVESTER, ts_ms=42))
    assert given.ts_ms == 42
    assert await audit.read(aredis, keyspace) == [given, stored]


async def test_read_filters_by_client_since_and_count(
    aredis: aioredis.Redis, keyspace: KeySpace
) -> None:
    for i in range(700):  # more than one XREVRANGE batch
        await audit.append(aredis, keyspace, _entry(BENIGN if i % 100 else HARVESTER, 1_000 + i))
    mine = await audit.read(aredis, keyspace, client=HARVESTER)
    assert [e.ts_ms for e in mine] == list(range(1_600, 999, -100))
    two = await audit.read(aredis, keyspace, client=HARVESTER, count=2)
    assert [e.ts_ms for e in two] == [1_600, 1_500]
    latest = await audit.read(aredis, keyspace, count=3)
    assert [e.ts_ms for e in latest] == [1_699, 1_698, 1_697]
    recent = await audit.read(aredis, keyspace, client=HARVESTER, since_ms=1_350)
    assert [e.ts_ms for e in recent] == [1_600, 1_500, 1_400]
    assert await audit.read(aredis, keyspace, client="f" * 64) == []
    assert await audit.read(aredis, keyspace, count=0) == []


async def test_stream_is_trimmed(
    aredis: aioredis.Redis, keyspace: KeySpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "MAXLEN", 50)
    for i in range(600):
        await audit.append(aredis, keyspace, _entry(HARVESTER, 1_000 + i))
    length = await aredis.xlen(keyspace.audit)
    assert 50 <= length < 300  # approximate: whole stream nodes are dropped
