"""Done-when, at small scale: a live gateway with the default policy (the detector running
in-process) flags and enforces on simulated attackers and leaves benign clients alone.

Traffic comes from the simulator's live driver (``sim.traffic.live.run``, the code behind
``antidistill sim run``), time-compressed, through the gateway. The enforcement lag —
requests and seconds from a client's first request to the first request the gateway
answered at ``degrade`` or above — is read from the decision log, printed (``pytest -s``)
and bounded.

Upstreams: the toy LM answers every prompt in a few dozen tokens, where a real model asked
to "answer in full detail" writes hundreds — and answer length is part of what the detector
learnt. The main test therefore puts a *replay upstream* behind the gateway: it answers
each simulated request with as many tokens as the simulator planned for it (its
``completion_tokens``), so the gateway meters the traffic the model was trained on. The
``antidistill sim run`` test uses the toy upstream itself.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from gateway.demo import replay_upstream
from gateway.identity import client_id_for
from gateway.keys import KeySpace
from sim.toy_upstream import create_app as create_toy_upstream
from sim.traffic import SimClient, generate
from sim.traffic.live import run as drive
from tests.gateway.conftest import GatewayFactory, gateway, redis_sync  # noqa: F401
from tests.servers import serve_app

ENFORCED = ("degrade", "throttle", "block")
SECRET = b"test-secret"  # the gateway fixture's key secret
SPEED = 80.0  # simulated seconds per real second
SIM_S = 1200.0  # 20 minutes of simulated traffic: 15 s of real time
# The default policy with its rate limits scaled by SPEED: time compression multiplies every
# client's request rate by SPEED, and the limits with it keep rate limiting where it would be
# in real time (otherwise every simulated client would mostly see 429s).
COMPRESSED_LIMITS = {
    "tiers": {
        "default": {
            "limits": {
                "requests_per_minute": 60 * SPEED,
                "tokens_per_minute": 40_000 * SPEED,
                "tokens_per_day": 1_000_000,
                "max_concurrent": 64,
            }
        }
    }
}


@pytest.fixture(scope="module")
def toy_upstream() -> Iterator[str]:
    with serve_app(create_toy_upstream()) as url:
        yield url


def _sims(scenario: str, seed: int, n: int) -> list[SimClient]:
    return generate(scenario, seed=seed, clients=n, duration_s=SIM_S, keep_bodies=True)


def _events(r: redis.Redis, keys: KeySpace) -> dict[str, list[dict[str, str]]]:
    """Each client's events in the order its requests arrived (the stream is in the order
    responses finished: a long answer admitted before the level rose is logged after
    requests refused by it)."""
    by_client: dict[str, list[dict[str, str]]] = {}
    for _, fields in r.xrange(keys.decisions):
        event = {k.decode(): v.decode() for k, v in fields.items()}
        by_client.setdefault(event["client"], []).append(event)
    for events in by_client.values():
        events.sort(key=lambda e: int(e["ts"]))
    return by_client


def _lag(events: list[dict[str, str]]) -> tuple[int, float] | None:
    """(requests, seconds) from the first request to the first answered at an enforced
    level; None if never."""
    for i, e in enumerate(events):
        if e["level"] in ENFORCED or e["status"] == "403":
            return i + 1, (int(e["ts"]) - int(events[0]["ts"])) / 1000
    return None


def _detector(r: redis.Redis, keys: KeySpace, client: str) -> dict[str, str]:
    raw = r.hgetall(f"{keys.client_tag(client)}:detector")
    return {k.decode(): v.decode() for k, v in raw.items()}


def _level(r: redis.Redis, keys: KeySpace, client: str) -> str:
    raw = r.hget(keys.level(client), "level")
    return raw.decode() if raw else "allow"


def test_default_policy_flags_attackers_and_leaves_benign_clients_alone(
    gateway: GatewayFactory,  # noqa: F811
    redis_sync: redis.Redis,  # noqa: F811
    keyspace: KeySpace,
) -> None:
    attackers = [
        *_sims("self_instruct", 11, 1),
        *_sims("reasoning_elicitation", 12, 1),
        *_sims("logprob_sweep", 13, 1),
    ]
    benign = [
        *_sims("chat_user", 14, 3),
        *_sims("coding_assistant", 15, 2),
        *_sims("app_backend", 16, 2),
        # legitimate look-alikes: systematic, templated, temperature 0, high volume
        *generate("eval_harness", seed=17, clients=1, duration_s=600, keep_bodies=True),
        *generate("batch_labelling", seed=18, clients=1, duration_s=600, keep_bodies=True),
    ]
    with (
        serve_app(replay_upstream([*attackers, *benign])) as upstream,
        gateway(upstream, policy=COMPRESSED_LIMITS) as url,
    ):
        result = asyncio.run(
            drive(url, [*attackers, *benign], speed=SPEED, duration_s=25, concurrency=8)
        )
        time.sleep(1.0)  # the last events reach the stream and the worker
        events = _events(redis_sync, keyspace)
        lines = [f"sent {result.sent} of {result.planned} in {result.elapsed_s:.1f}s"]
        for key in result.keys:
            client = client_id_for(key.key, SECRET)
            mine = events.get(client, [])
            detector = _detector(redis_sync, keyspace, client)
            lag = _lag(mine)
            lines.append(
                f"{key.key:<28} {'attack' if key.attack else 'benign'} sent {len(mine):>3} "
                f"level {_level(redis_sync, keyspace, client):<8} score "
                f"{detector.get('score', '-'):<6} lag {lag} {detector.get('reasons', '')}"
            )
        print("\n" + "\n".join(lines))
        for key in result.keys:
            client = client_id_for(key.key, SECRET)
            mine = events.get(client, [])
            assert mine, key.key
            if key.attack:
                lag = _lag(mine)
                assert lag is not None, f"{key.key} was never enforced upon"
                requests, _seconds = lag
                assert requests <= 60, f"{key.key}: enforced only after {requests} requests"
                # from then on it is answered degraded, throttled or refused
                later = mine[requests - 1 :]
                assert all(e["level"] in ENFORCED or e["status"] == "403" for e in later)
                assert _level(redis_sync, keyspace, client) in ENFORCED
            else:
                assert _level(redis_sync, keyspace, client) == "allow", key.key
                assert all(e["level"] == "allow" for e in mine), key.key
                assert all(e["status"] == "200" for e in mine), key.key


def test_antidistill_sim_run_is_enforced_upon(
    gateway: GatewayFactory,  # noqa: F811
    toy_upstream: str,
    redis_sync: redis.Redis,  # noqa: F811
    keyspace: KeySpace,
) -> None:
    """The literal Done-when: ``antidistill sim run --target URL --scenario NAME``."""
    with gateway(toy_upstream, policy={}) as url:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "sim",
                "run",
                "--target",
                url,
                "--scenario",
                "logprob_sweep",
                "--clients",
                "1",
                "--speed",
                "300",
                "--duration",
                "10",
                "--seed",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        time.sleep(1.0)
        client = client_id_for("sim-logprob_sweep-1", SECRET)
        level = _level(redis_sync, keyspace, client)
        lag = _lag(_events(redis_sync, keyspace).get(client, []))
        print(f"\n{out.stdout}\nlevel {level}, lag {lag}")
        assert level in ENFORCED, out.stdout
        assert lag is not None
