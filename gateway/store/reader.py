"""Reading the decision stream back (CLI, reports)."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from gateway.keys import KeySpace
from gateway.store.events import DecisionEvent


def _decode(fields: dict[bytes, bytes]) -> DecisionEvent:
    return DecisionEvent.from_fields(
        {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
    )


async def read_latest(
    redis: aioredis.Redis,
    keys: KeySpace,
    count: int,
    client: str | None = None,
    scan_limit: int = 100_000,
) -> tuple[bytes, list[DecisionEvent]]:
    """The latest ``count`` events (of one client, if given), oldest first, and the newest id."""
    found: list[DecisionEvent] = []
    newest = b"0-0"
    end = b"+"
    scanned = 0
    while len(found) < count and scanned < scan_limit:
        rows: Any = await redis.xrevrange(keys.decisions, max=end, min=b"-", count=500)
        if not rows:
            break
        if newest == b"0-0":
            newest = rows[0][0]
        for _entry_id, fields in rows:
            scanned += 1
            event = _decode(fields)
            if client is None or event.client == client:
                found.append(event)
                if len(found) >= count:
                    break
        end = b"(" + rows[-1][0]
    return newest, list(reversed(found))


async def read_after(
    redis: aioredis.Redis,
    keys: KeySpace,
    last_id: bytes,
    client: str | None = None,
    block_ms: int = 1000,
) -> tuple[bytes, list[DecisionEvent]]:
    """Events after ``last_id``, waiting up to ``block_ms`` for some to arrive."""
    reply: Any = await redis.xread({keys.decisions: last_id}, count=500, block=block_ms)
    events: list[DecisionEvent] = []
    for _stream, rows in reply or []:
        for entry_id, fields in rows:
            last_id = entry_id
            event = _decode(fields)
            if client is None or event.client == client:
                events.append(event)
    return last_id, events


def format_event(event: DecisionEvent, as_json: bool) -> str:
    if as_json:
        return event.to_json().decode()
    when = time.strftime("%H:%M:%S", time.localtime(event.ts / 1000)) + f".{event.ts % 1000:03d}"
    tokens = (event.prompt_tokens or 0) + event.completion_tokens
    reasons = ",".join(event.reasons) or "-"
    return (
        f"{when}  {event.client[:12]:<12}  {event.route:<22} {event.decision:<8} "
        f"{event.status:>3}  {event.level:<8} tokens={tokens:<6} {reasons}"
    )
