"""The detector worker against a real Redis, with a stand-in scorer (and the real model)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from detectors.schema import RequestFeatures, RequestRecord
from detectors.window_codec import pack, unpack
from detectors.worker import GROUP, DetectorWorker, Models
from gateway.keys import KeySpace
from gateway.policy import Policy
from gateway.ratelimit.limiter import Limiter
from gateway.store.connect import connect
from gateway.store.events import DecisionEvent
from tests.detectors.standin import Campaign, StandIn, featurize

ATTACKER = "a" * 64
BENIGN = "b" * 64
_ids = itertools.count()


def models(link: Any = None) -> Models:
    return Models(StandIn(), featurize, link)


def policy(**detector: Any) -> Policy:
    shadow = detector.pop("shadow", False)
    clients = detector.pop("clients", {})
    base = {"min_requests": 5, "score_every_requests": 5, "score_every_s": 60.0}
    return Policy.model_validate(
        {"shadow": shadow, "clients": clients, "detector": {**base, **detector}}
    )


def event(client: str, attack: bool, ts: int = 1_000) -> dict[str, str]:
    features = RequestFeatures(prompt_words=12, reasoning_marker=attack, sketch=7, template=9)
    return DecisionEvent(
        ts=ts + next(_ids),
        id=f"r{next(_ids)}",
        client=client,
        route="/v1/chat/completions",
        decision="admitted",
        status=200,
        prompt_tokens=20,
        completion_tokens=30,
        params={"max_tokens": 64},
        features=features.to_json(),
    ).to_fields()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url, 5.0)  # with timeouts, as the gateway connects
    yield client
    await client.aclose()


async def send(redis: aioredis.Redis, keys: KeySpace, client: str, n: int, attack: bool) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for _ in range(n):
            pipe.xadd(keys.decisions, event(client, attack))  # type: ignore[arg-type]
        await pipe.execute()


async def drain(worker: DetectorWorker, rounds: int = 20) -> None:
    for _ in range(rounds):
        if not await worker.step():
            break


def make(redis: aioredis.Redis, keys: KeySpace, p: Policy, **kw: Any) -> DetectorWorker:
    kw.setdefault("models", models())
    return DetectorWorker(redis, keys, lambda: p, block_ms=10, **kw)


async def test_attacker_is_raised_and_benign_left_alone(
    redis: aioredis.Redis, keyspace: KeySpace
) -> None:
    worker = make(redis, keyspace, policy())
    await worker.ensure_group()
    await send(redis, keyspace, ATTACKER, 12, attack=True)
    await send(redis, keyspace, BENIGN, 12, attack=False)
    await drain(worker)
    limiter = Limiter(redis)
    attacker = await limiter.get_level(keyspace.level(ATTACKER))
    assert attacker.level == "block"
    assert attacker.reasons[:2] == ("detector:1.00", "reasoning_share_high")
    assert attacker.expires_at_ms is not None
    assert (await limiter.get_level(keyspace.level(BENIGN))).level == "allow"
    stored = await redis.hgetall(worker.detector_key(ATTACKER))
    assert stored[b"level"] == b"block" and float(stored[b"score"]) == 1.0
    # one batch of 12: scored once, after all of it
    assert stored[b"window"] == b"12" and stored[b"flagged_after"] == b"12"
    benign = await redis.hgetall(worker.detector_key(BENIGN))
    assert benign[b"level"] == b"allow" and float(benign[b"score"]) == 0.0
    # every entry was acknowledged
    pending = await redis.xpending(keyspace.decisions, GROUP)
    assert pending["pending"] == 0
    assert worker.stats.lag[0][:2] == (ATTACKER, 12)


async def test_not_scored_before_min_requests(redis: aioredis.Redis, keyspace: KeySpace) -> None:
    worker = make(redis, keyspace, policy(min_requests=10))
    await worker.ensure_group()
    await send(redis, keyspace, ATTACKER, 9, attack=True)
    await drain(worker)
    assert not await redis.exists(worker.detector_key(ATTACKER))
    await send(redis, keyspace, ATTACKER, 1, attack=True)
    await drain(worker)
    assert await redis.hget(worker.detector_key(ATTACKER), "level") == b"block"


async def test_steps_down_with_hysteresis(redis: aioredis.Redis, keyspace: KeySpace) -> None:
    p = policy(window_size=10, min_requests=10, score_every_requests=1, min_hold_s=0)
    worker = make(redis, keyspace, p)
    await worker.ensure_group()
    await send(redis, keyspace, ATTACKER, 10, attack=True)
    await drain(worker)
    limiter = Limiter(redis)
    assert (await limiter.get_level(keyspace.level(ATTACKER))).level == "block"
    await send(redis, keyspace, ATTACKER, 1, attack=False)  # score 0.9: kept (>= 0.97 - 0.1)
    await drain(worker)
    assert (await limiter.get_level(keyspace.level(ATTACKER))).level == "block"
    await send(redis, keyspace, ATTACKER, 1, attack=False)  # 0.8: below 0.87, >= 0.75
    await drain(worker)
    assert (await limiter.get_level(keyspace.level(ATTACKER))).level == "throttle"
    await send(redis, keyspace, ATTACKER, 2, attack=False)  # 0.6: below 0.75, >= 0.6
    await drain(worker)
    assert (await limiter.get_level(keyspace.level(ATTACKER))).level == "degrade"
    await send(redis, keyspace, ATTACKER, 8, attack=False)  # 0.0
    await drain(worker)
    assert (await limiter.get_level(keyspace.level(ATTACKER))).level == "allow"


async def test_shadow_logs_the_would_be_level_only(
    redis: aioredis.Redis, keyspace: KeySpace
) -> None:
    worker = make(redis, keyspace, policy(shadow=True))
    await worker.ensure_group()
    await send(redis, keyspace, ATTACKER, 10, attack=True)
    await drain(worker)
    assert not await redis.exists(keyspace.level(ATTACKER))
    raw = await redis.hget(worker.shadow_key, ATTACKER)
    assert raw is not None
    shadow = orjson.loads(raw)
    assert shadow["level"] == "block" and shadow["reasons"][0] == "detector:1.00"
    assert await redis.hget(worker.detector_key(ATTACKER), "shadow") == b"1"


async def test_allowlisted_client_is_never_enforced_upon(
    redis: aioredis.Redis, keyspace: KeySpace
) -> None:
    worker = make(redis, keyspace, policy(clients={ATTACKER: {"allowlist": True}}))
    await worker.ensure_group()
    await send(redis, keyspace, ATTACKER, 10, attack=True)
    await drain(worker)
    assert not await redis.exists(keyspace.level(ATTACKER))
    assert await redis.hget(worker.detector_key(ATTACKER), "score") == b"1.0000"


async def test_operator_level_is_not_lowered(redis: aioredis.Redis, keyspace: KeySpace) -> None:
    limiter = Limiter(redis)
    await limiter.set_level(keyspace.level(BENIGN), "block", ["operator:manual"], 600)
    worker = make(redis, keyspace, policy())
    await worker.ensure_group()
    await send(redis, keyspace, BENIGN, 10, attack=False)
    await drain(worker)
    level = await limiter.get_level(keyspace.level(BENIGN))
    assert level.level == "block" and level.reasons == ("operator:manual",)


async def test_a_new_worker_resumes_the_persisted_window(
    redis: aioredis.Redis, keyspace: KeySpace
) -> None:
    p = policy(min_requests=8)
    first = make(redis, keyspace, p, consumer="first")
    await first.ensure_group()
    await send(redis, keyspace, ATTACKER, 4, attack=True)
    await drain(first)
    second = make(redis, keyspace, p, consumer="second")
    await send(redis, keyspace, ATTACKER, 4, attack=True)
    await drain(second)
    assert len(second.window_of(ATTACKER)) == 8
    assert await redis.hget(second.detector_key(ATTACKER), "level") == b"block"


async def test_stale_pending_entries_of_a_dead_consumer_are_claimed(
    redis: aioredis.Redis, keyspace: KeySpace
) -> None:
    worker = make(redis, keyspace, policy(), consumer="alive", claim_idle_ms=0)
    await worker.ensure_group()
    await send(redis, keyspace, ATTACKER, 10, attack=True)
    # a consumer that read the entries and died before acknowledging them
    await redis.xreadgroup(GROUP, "dead", {keyspace.decisions: ">"}, count=100)
    assert (await redis.xpending(keyspace.decisions, GROUP))["pending"] == 10
    await drain(worker)
    assert worker.stats.claimed == 10
    assert (await redis.xpending(keyspace.decisions, GROUP))["pending"] == 0
    assert await redis.hget(worker.detector_key(ATTACKER), "level") == b"block"


async def test_workers_sharing_the_group_score_whole_windows(
    redis: aioredis.Redis, keyspace: KeySpace
) -> None:
    p = policy(min_requests=20, score_every_requests=1)
    one = make(redis, keyspace, p, consumer="one", batch_size=3, peers_every_s=0.0)
    two = make(redis, keyspace, p, consumer="two", batch_size=3, peers_every_s=0.0)
    await one.ensure_group()
    await send(redis, keyspace, ATTACKER, 20, attack=True)
    await send(redis, keyspace, BENIGN, 20, attack=False)
    for _ in range(30):
        done = await asyncio.gather(one.step(), two.step())
        if not any(done):
            break
    assert one.stats.events and two.stats.events
    assert one.stats.events + two.stats.events == 40
    # Neither worker saw all 20 of a client's requests, yet the scores used full windows.
    assert await redis.hget(one.detector_key(ATTACKER), "window") == b"20"
    assert await redis.hget(one.detector_key(ATTACKER), "level") == b"block"
    assert await redis.hget(one.detector_key(BENIGN), "level") == b"allow"


async def test_campaign_score_raises_every_linked_account(
    redis: aioredis.Redis, keyspace: KeySpace
) -> None:
    light = ["c" * 64, "d" * 64, "e" * 64]

    def link(windows: Any) -> list[Campaign]:
        return [Campaign(tuple(c for c in light if c in windows), ("template", "ja4"))]

    worker = make(redis, keyspace, policy(min_requests=50), models=models(link))
    await worker.ensure_group()
    for client in light:  # each account alone is below min_requests
        await send(redis, keyspace, client, 4, attack=True)
    await drain(worker)
    assert await worker.link_campaigns() == 1
    limiter = Limiter(redis)
    for client in light:
        level = await limiter.get_level(keyspace.level(client))
        assert level.level == "block"
        assert "campaign_link:template" in level.reasons
        assert "campaign_link:ja4" in level.reasons
        assert any(r.startswith("campaign:") for r in level.reasons)


async def test_review_keys_are_written(redis: aioredis.Redis, keyspace: KeySpace) -> None:
    """What operators review: explanation, score history, flagged set, audit, campaigns."""
    light = ["c" * 64, "d" * 64]

    def link(windows: Any) -> list[Campaign]:
        return [Campaign(tuple(c for c in light if c in windows), ("template",))]

    worker = make(redis, keyspace, policy(), models=models(link))
    await worker.ensure_group()
    await send(redis, keyspace, ATTACKER, 12, attack=True)
    await send(redis, keyspace, BENIGN, 12, attack=False)
    await drain(worker)
    stored = await redis.hgetall(keyspace.detector(ATTACKER))
    assert orjson.loads(stored[b"explain"]) == [["reasoning_share", 1.0, 1.0, 0.0]]
    history = await redis.lrange(keyspace.score_history(ATTACKER), 0, -1)
    ts, score, level = history[-1].decode().split()
    assert int(ts) > 0 and float(score) == 1.0 and level == "block"
    assert await redis.zrange(keyspace.flagged, 0, -1) == [ATTACKER.encode()]
    audit = await redis.xrange(keyspace.audit)
    assert len(audit) == 1
    fields = {k.decode(): v.decode() for k, v in audit[0][1].items()}
    assert fields["actor"] == "detector" and fields["action"] == "detector_level"
    assert fields["client"] == ATTACKER and fields["level"] == "block"
    assert fields["previous_level"] == "allow" and "reasoning_share_high" in fields["reason"]
    # campaigns are stored with what links them
    for client in light:
        await send(redis, keyspace, client, 6, attack=True)
    await drain(worker)
    assert await worker.link_campaigns() == 1
    campaigns = await redis.hgetall(keyspace.campaigns)
    (stored_campaign,) = [orjson.loads(v) for v in campaigns.values()]
    assert stored_campaign["members"] == light and stored_campaign["links"] == ["template"]
    assert (await redis.hget(keyspace.detector(light[0]), "campaign")) == (
        stored_campaign["id"].encode()
    )
    await worker.publish_stats()
    stats = orjson.loads(await redis.hget(keyspace.detector_stats, worker.consumer))
    assert stats["events"] == 36 and stats["scored"] >= 4


def test_compact_form_round_trips() -> None:
    record = RequestRecord(
        ts_ms=5,
        client=ATTACKER,
        route="/v1/chat/completions",
        status=200,
        decision="admitted",
        prompt_tokens=3,
        completion_tokens=4,
        params={"logprobs": True, "top_logprobs": 5},
        features=RequestFeatures(1, 2, 3, 4, 5, True, 2**64 - 1, 2**63),
        client_ip="10.0.0.1",
        tls_fingerprint="t13d",
        org_id="org",
    )
    assert unpack(ATTACKER, pack(record)) == record
    assert len(pack(record)) < 200


async def test_a_raised_level_is_held_for_min_hold_s(
    redis: aioredis.Redis, keyspace: KeySpace
) -> None:
    p = policy(window_size=10, min_requests=10, score_every_requests=1, min_hold_s=600)
    worker = make(redis, keyspace, p)
    await worker.ensure_group()
    await send(redis, keyspace, ATTACKER, 10, attack=True)
    await drain(worker)
    await send(redis, keyspace, ATTACKER, 10, attack=False)  # score 0: held anyway
    await drain(worker)
    level = await Limiter(redis).get_level(keyspace.level(ATTACKER))
    assert level.level == "block"
    assert await redis.hget(worker.detector_key(ATTACKER), "score") == b"0.0000"


@pytest.mark.parametrize("model", ["additive", "combined"])
async def test_the_shipped_model_through_the_worker(
    redis: aioredis.Redis, keyspace: KeySpace, model: str
) -> None:
    """The real detector, fed simulated decision events through the stream."""
    from sim.traffic import generate

    if model == "combined":
        pytest.importorskip("torch")
    attacker = generate("self_instruct", seed=3, clients=1, duration_s=3600)[0]
    benign = generate("eval_harness", seed=3, clients=1, duration_s=1200)[0]
    chosen = Policy.model_validate({"detector": {"model": model}})
    worker = DetectorWorker(redis, keyspace, lambda: chosen, block_ms=10)
    await worker.ensure_group()
    await worker.load()
    async with redis.pipeline(transaction=False) as pipe:
        for sim in (attacker, benign):
            for i, r in enumerate(sim.records[:120]):
                pipe.xadd(  # type: ignore[arg-type]
                    keyspace.decisions,
                    DecisionEvent(
                        ts=r.ts_ms,
                        id=f"{sim.client[:8]}-{i}",
                        client=sim.client,
                        route=r.route,
                        decision=r.decision,
                        status=r.status,
                        prompt_tokens=r.prompt_tokens,
                        completion_tokens=r.completion_tokens,
                        params=r.params,
                        client_ip=r.client_ip,
                        tls_fingerprint=r.tls_fingerprint,
                        org_id=r.org_id,
                        features=r.features.to_json(),
                    ).to_fields(),
                )
        await pipe.execute()
    await drain(worker, rounds=40)
    limiter = Limiter(redis)
    caught = await limiter.get_level(keyspace.level(attacker.client))
    assert caught.level in ("degrade", "throttle", "block"), caught
    assert caught.reasons[0].startswith("detector:")
    assert len(caught.reasons) > 1  # the features that drove the score
    assert (await limiter.get_level(keyspace.level(benign.client))).level == "allow"
    assert (worker.models.sequence is not None) == (model == "combined")


async def test_the_worker_recovers_when_the_stream_is_gone(
    redis: aioredis.Redis, keyspace: KeySpace
) -> None:
    """A Redis restarted without persistence loses the stream and the group with it."""
    worker = make(redis, keyspace, policy())
    task = asyncio.create_task(worker.run())
    try:
        await send(redis, keyspace, BENIGN, 3, attack=False)
        for _ in range(100):
            if worker.stats.events == 3:
                break
            await asyncio.sleep(0.02)
        await redis.delete(keyspace.decisions)
        for _ in range(200):  # the worker notices and creates the stream and group again
            await asyncio.sleep(0.05)
            if await redis.exists(keyspace.decisions):
                break
        await send(redis, keyspace, ATTACKER, 10, attack=True)
        for _ in range(200):
            if await redis.hget(worker.detector_key(ATTACKER), "level") == b"block":
                break
            await asyncio.sleep(0.05)
        assert await redis.hget(worker.detector_key(ATTACKER), "level") == b"block"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_antidistill_worker_command(redis_url: str, keyspace: KeySpace, tmp_path: Any) -> None:
    """``antidistill worker`` as a process: joins the group, scores, stops on SIGTERM."""
    import signal
    import subprocess
    import sys
    import time

    import redis as sync_redis

    from sim.traffic import generate

    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(f"store:\n  key_prefix: {keyspace.prefix}\n")
    r = sync_redis.Redis.from_url(redis_url)
    args = ["--redis", redis_url, "--policy", str(policy_path), "--consumer", "cli-1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "worker", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not r.exists(keyspace.decisions):  # the worker created stream and group
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        sim = generate("self_instruct", seed=4, clients=1, duration_s=3600)[0]
        for i, rec in enumerate(sim.records[:40]):
            r.xadd(
                keyspace.decisions,
                DecisionEvent(  # type: ignore[arg-type]
                    ts=rec.ts_ms,
                    id=str(i),
                    client=sim.client,
                    route=rec.route,
                    decision=rec.decision,
                    status=rec.status,
                    prompt_tokens=rec.prompt_tokens,
                    completion_tokens=rec.completion_tokens,
                    params=rec.params,
                    features=rec.features.to_json(),
                ).to_fields(),
            )
        while r.hget(keyspace.level(sim.client), "level") not in (
            b"degrade",
            b"throttle",
            b"block",
        ):
            assert proc.poll() is None and time.monotonic() < deadline + 10
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        assert b"worker cli-1 stopped: 40 events" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        r.close()
