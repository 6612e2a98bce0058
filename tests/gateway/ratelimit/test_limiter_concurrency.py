"""Exactness under contention: OS processes with their own connections race for one client.

The contrast is a known gateway bug that admitted 663 tokens against a 100 TPM limit
(LiteLLM issue #18730): with one atomic script per request there is nothing to race.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from gateway.keys import KeySpace
from tests.gateway.ratelimit.hammer import CLIENT

ROOT = Path(__file__).resolve().parents[3]
PROCS = 4
ATTEMPTS = 200  # in all, split over the processes
TOKEN_T_MS = 600.0  # 100 tokens per minute


def race(redis_url: str, prefix: str, scenario: str) -> list[dict[str, Any]]:
    """Run the hammer in PROCS processes at once; all their outcomes."""
    workers = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.gateway.ratelimit.hammer", redis_url, prefix),
                *(scenario, str(ATTEMPTS // PROCS), str(seed), str(PROCS)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(PROCS)
    ]
    outcomes: list[dict[str, Any]] = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        outcomes += json.loads(out)
    assert len(outcomes) == ATTEMPTS
    return outcomes


def elapsed_ms(outcomes: list[dict[str, Any]]) -> int:
    times: list[int] = [o["now_ms"] for o in outcomes]
    return max(times) - min(times) + 1


@pytest.fixture
def prefix() -> str:
    return f"adrace:{uuid.uuid4().hex[:12]}"


def test_exactly_the_request_limit_is_admitted(redis_url: str, prefix: str) -> None:
    outcomes = race(redis_url, prefix, "requests")
    admitted = sum(o["allowed"] for o in outcomes)
    # 5 per minute, burst 5: one more could only refill after 12 s.
    assert 5 <= admitted <= 5 + elapsed_ms(outcomes) // 12_000
    assert admitted == 5, elapsed_ms(outcomes)
    assert {o["reason"] for o in outcomes if not o["allowed"]} == {"rate_limited"}


def test_admitted_tokens_never_exceed_the_limit(redis_url: str, prefix: str) -> None:
    outcomes = race(redis_url, prefix, "tokens")
    admitted = sum(o["cost"] for o in outcomes if o["allowed"])
    refill = elapsed_ms(outcomes) / TOKEN_T_MS  # < 1 token unless the race took > 0.6 s
    assert admitted <= 100 + refill
    # Greedy packing is tight: every denied request was bigger than what was left.
    smallest_denied = min(o["cost"] for o in outcomes if not o["allowed"])
    assert admitted + smallest_denied > 100


def test_request_and_token_limits_together_reserve_all_or_nothing(
    redis_url: str, prefix: str
) -> None:
    outcomes = race(redis_url, prefix, "both")
    allowed = [o for o in outcomes if o["allowed"]]
    tokens = sum(o["cost"] for o in allowed)
    assert 0 < len(allowed) <= 10
    assert tokens <= 100 + elapsed_ms(outcomes) / TOKEN_T_MS
    # The request counter moved by exactly T = 6 s per admitted request: no denied request
    # (rate-limited on tokens) reserved a request unit.
    client = Redis.from_url(redis_url)
    try:
        tat = float(client.get(KeySpace(prefix).limit(CLIENT, "requests")) or 0)
    finally:
        client.close()
    first = min(o["now_ms"] for o in allowed)
    assert 0 <= tat - (first + 6_000 * len(allowed)) < 1
