"""``antidistill train --from-labels``: labelled clients are read back from the decision log."""

from __future__ import annotations

import random

import redis

from detectors.train import read_labelled
from gateway.keys import KeySpace
from gateway.store.events import DecisionEvent
from tests.detectors import synth


def test_reads_labelled_clients_from_the_decision_stream(
    redis_url: str, keyspace: KeySpace
) -> None:
    rng = random.Random(3)
    attacker = synth.attacker("a" * 64, rng, "logprob", n=30)
    benign = synth.benign_chat("b" * 64, rng, n=25)
    unlabelled = synth.benign_chat("c" * 64, rng, n=25)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for client in (attacker, benign, unlabelled):
            for i, rec in enumerate(client.records):
                event = DecisionEvent(
                    ts=rec.ts_ms,
                    id=f"{client.client[:4]}{i}",
                    client=rec.client,
                    route=rec.route,
                    decision=rec.decision,
                    status=rec.status,
                    prompt_tokens=rec.prompt_tokens,
                    completion_tokens=rec.completion_tokens,
                    params=rec.params,
                    features=rec.features.to_json(),
                    client_ip=rec.client_ip,
                )
                r.xadd(keyspace.decisions, event.to_fields())  # type: ignore[arg-type]
        r.hset(f"{keyspace.prefix}:labels", mapping={"a" * 64: "harvesting", "b" * 64: "benign"})
        got = {c.client: c for c in read_labelled(redis_url, keyspace.prefix)}
        assert set(got) == {"a" * 64, "b" * 64}
        assert got["a" * 64].attack and not got["b" * 64].attack
        assert got["a" * 64].records == attacker.records
        assert len(got["b" * 64].records) == 25
    finally:
        r.delete(keyspace.decisions, f"{keyspace.prefix}:labels")
        r.close()
