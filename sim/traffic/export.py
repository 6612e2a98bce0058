"""Simulated records as decision events (JSON lines with a ``label`` object) for inspection."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from detectors.schema import RequestRecord
from gateway.store.events import DecisionEvent
from sim.traffic.client import SimClient


def to_event(record: RequestRecord, event_id: str) -> DecisionEvent:
    """The decision event the gateway would have logged for ``record``."""
    return DecisionEvent(
        ts=record.ts_ms,
        id=event_id,
        client=record.client,
        route=record.route,
        decision=record.decision,
        status=record.status,
        upstream_status=record.status if record.decision != "rejected" else None,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        params=dict(record.params),
        client_ip=record.client_ip,
        tls_fingerprint=record.tls_fingerprint,
        org_id=record.org_id,
        features=record.features.to_json(),
    )


def label_of(client: SimClient, index: int) -> dict[str, Any]:
    return {
        "family": client.family,
        "attack": client.attack,
        "attacker_share": client.attacker_share,
        "campaign": client.campaign,
        "attack_request": client.request_attack[index] if client.request_attack else client.attack,
    }


def lines(clients: Iterable[SimClient]) -> Iterator[bytes]:
    """One JSON object per record: the decision event's fields plus ``label``."""
    for c in clients:
        for i, rec in enumerate(c.records):
            event = orjson.loads(to_event(rec, f"sim-{c.client[:12]}-{i}").to_json())
            event["label"] = label_of(c, i)
            yield orjson.dumps(event) + b"\n"


def write_jsonl(clients: Iterable[SimClient], out: Path | IO[bytes]) -> int:
    """Write :func:`lines` to ``out``; returns the number of lines."""
    count = 0
    if isinstance(out, Path):
        with out.open("wb") as fh:
            return write_jsonl(clients, fh)
    for line in lines(clients):
        out.write(line)
        count += 1
    return count
