"""The audit trail: every action on a client, by an operator or by the detector.

Entries live in the ``<prefix>:audit`` stream (``KeySpace.audit``), newest last, trimmed to
about ``MAXLEN`` entries. Fields are flat strings; empty string means "not applicable".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.keys import KeySpace

MAXLEN = 100_000
_BATCH = 500


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One action: who did what to which client, when and why.

    ``actor`` is ``detector`` for the detector's level changes, else the operator's name as
    given to the admin API / dashboard / CLI (``admin`` if none). ``action`` is one of
    ``set_level``, ``allowlist``, ``block``, ``reset``, ``label`` (operators) or
    ``detector_level`` (the detector). ``level`` is the level after the action (``""`` for
    labels), ``label`` the label set (``""`` otherwise).
    """

    id: str  # the stream entry id ("" before it is stored)
    ts_ms: int
    actor: str
    action: str
    client: str
    reason: str
    level: str = ""
    label: str = ""
    previous_level: str = ""

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields: every attribute but ``id``, as strings."""
        return {
            f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "id"
        }

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[str, str]) -> AuditEntry:
        """Parse a stored entry; missing fields read as ``""`` (``ts_ms``: the stream id's
        time), unknown ones (from newer writers) are ignored."""
        raw_ts = fields.get("ts_ms", "")
        try:
            ts_ms = int(raw_ts)
        except ValueError:
            ts_ms = _id_ms(entry_id)
        return cls(
            id=entry_id,
            ts_ms=ts_ms,
            actor=fields.get("actor", ""),
            action=fields.get("action", ""),
            client=fields.get("client", ""),
            reason=fields.get("reason", ""),
            level=fields.get("level", ""),
            label=fields.get("label", ""),
            previous_level=fields.get("previous_level", ""),
        )


async def append(redis: aioredis.Redis, keys: KeySpace, entry: AuditEntry) -> AuditEntry:
    """Store ``entry``; returns it with its stream id (and the server's ``ts_ms`` if 0)."""
    if entry.ts_ms == 0:
        secs, micros = await redis.time()
        entry = dataclasses.replace(entry, ts_ms=int(secs) * 1000 + int(micros) // 1000)
    fields: dict[Any, Any] = entry.to_fields()
    entry_id = await redis.xadd(keys.audit, fields, maxlen=MAXLEN, approximate=True)
    return dataclasses.replace(entry, id=_text(entry_id))


async def read(
    redis: aioredis.Redis,
    keys: KeySpace,
    *,
    client: str | None = None,
    count: int = 200,
    since_ms: int | None = None,
) -> list[AuditEntry]:
    """The latest ``count`` entries (of one client, if given; at or after ``since_ms``),
    newest first."""
    found: list[AuditEntry] = []
    if count <= 0:
        return found
    low = "-" if since_ms is None else f"{max(since_ms, 0)}-0"
    high = "+"
    scanned = 0
    while len(found) < count and scanned < MAXLEN * 2:
        rows: Any = await redis.xrevrange(keys.audit, max=high, min=low, count=_BATCH)
        if not rows:
            break
        for raw_id, raw_fields in rows:
            scanned += 1
            fields = {_text(k): _text(v) for k, v in raw_fields.items()}
            if client is not None and fields.get("client") != client:
                continue
            entry = AuditEntry.from_fields(_text(raw_id), fields)
            if since_ms is not None and entry.ts_ms < since_ms:
                continue
            found.append(entry)
            if len(found) >= count:
                break
        high = "(" + _text(rows[-1][0])
    return found


def _id_ms(entry_id: str) -> int:
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
