"""Test data for the admin tests, written the way the gateway and the detector write it.

Decision events go through the real decision log (``record.lua``: stream, summaries,
last-seen set); detector results, campaigns and shadow levels follow the storage contract
(/work/notes/storage.md) field by field.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.keys import KeySpace
from gateway.metrics import Metrics
from gateway.ratelimit.limiter import Limiter
from gateway.store.decision_log import DecisionLog
from gateway.store.events import DecisionEvent
from gateway.store.spool import Spool

HARVESTER = "a" * 64
BENIGN = "b" * 64
BLOCKED = "c" * 64
LINKED = "d" * 64
NEVER_SEEN = "e" * 64


def event(client: str, ts: int, **fields: Any) -> DecisionEvent:
    base: dict[str, Any] = {
        "ts": ts,
        "id": f"{client[:4]}-{ts}",
        "client": client,
        "route": "/v1/chat/completions",
        "decision": "admitted",
        "status": 200,
        "tier": "default",
        "prompt_tokens": 10,
        "completion_tokens": 20,
    }
    return DecisionEvent(**{**base, **fields})


async def record(
    redis: aioredis.Redis, keys: KeySpace, events: Iterable[DecisionEvent], spool_dir: Path
) -> None:
    """Write ``events`` through the gateway's decision log and wait until they are stored."""
    log = DecisionLog(
        redis, keys, Limiter(redis), Spool(spool_dir), Metrics(), max_events=1_000_000
    )
    log.start()
    for e in events:
        log.record(e)
    await log.flush()
    await log.close()


async def scored(
    redis: aioredis.Redis,
    keys: KeySpace,
    client: str,
    *,
    score: float,
    level: str,
    reasons: Sequence[str] = (),
    explain: Sequence[tuple[str, float, float, float]] = (),
    campaign: str = "",
    history: Sequence[tuple[int, float, str]] = (),
    ts: int = 1_700_000_000_000,
) -> None:
    """The detector's latest result for ``client`` (hash, score history, flagged set)."""
    await redis.hset(
        keys.detector(client),
        mapping={
            "score": f"{score:.4f}",
            "level": level,
            "reasons": ",".join(reasons),
            "ts": str(ts),
            "window": "64",
            "seen": "64",
            "flagged_after": "0",
            "shadow": "0",
            "explain": orjson.dumps([list(x) for x in explain]).decode(),
            "campaign": campaign,
        },
    )
    for point in history:
        await redis.rpush(keys.score_history(client), f"{point[0]} {point[1]:.4f} {point[2]}")
    if level != "allow":
        await redis.zadd(keys.flagged, {client: score})


async def campaign(
    redis: aioredis.Redis,
    keys: KeySpace,
    campaign_id: str,
    members: Sequence[str],
    *,
    score: float,
    ts: int,
    links: Sequence[str] = ("template", "timing"),
    reasons: Sequence[str] = ("detector:0.9",),
) -> None:
    doc = {
        "id": campaign_id,
        "members": list(members),
        "links": list(links),
        "score": score,
        "reasons": list(reasons),
        "ts": ts,
    }
    await redis.hset(keys.campaigns, campaign_id, orjson.dumps(doc))


async def drop(redis: aioredis.Redis, keys: KeySpace) -> None:
    """Delete every key under the test's prefix."""
    async for key in redis.scan_iter(match=f"{keys.prefix}:*", count=1000):
        await redis.delete(key)
