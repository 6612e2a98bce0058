"""Exactness across processes: two gateways on one Redis admit no more than the limit."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx
import redis
import yaml

from gateway.keys import KeySpace
from tests.gateway.conftest import wait_for_events
from tests.servers import free_port, run_cli

CHAT = {"model": "plain", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}


def test_two_gateway_processes_admit_exactly_the_limit(
    tmp_path: Path, redis_url: str, keyspace: KeySpace, scripted_upstream, redis_sync: redis.Redis
) -> None:
    upstream, _ = scripted_upstream
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "store": {"key_prefix": keyspace.prefix},
                "tiers": {
                    "default": {
                        "limits": {
                            "requests_per_minute": 5,
                            "tokens_per_minute": None,
                            "tokens_per_day": None,
                            "max_concurrent": None,
                        }
                    }
                },
            }
        )
    )
    env = {"ANTIDISTILL_KEY_SECRET": "s", "ANTIDISTILL_LOG_LEVEL": "warning"}
    ports = [free_port(), free_port()]

    def args(port: int, data: str) -> list[str]:
        return ["serve", "--upstream", upstream, "--policy", str(policy), "--redis", redis_url,
                "--port", str(port), "--data-dir", str(tmp_path / data)]  # fmt: skip

    with (
        run_cli(args(ports[0], "a"), f"http://127.0.0.1:{ports[0]}/healthz", Path.cwd(), env),
        run_cli(args(ports[1], "b"), f"http://127.0.0.1:{ports[1]}/healthz", Path.cwd(), env),
    ):

        def send(i: int) -> httpx.Response:
            port = ports[i % 2]
            return httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json=CHAT,
                headers={"authorization": "Bearer shared-key"},
                timeout=30,
            )

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(send, range(60)))
        events = wait_for_events(redis_sync, keyspace, 60)
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 5
    assert statuses.count(429) == 55
    for r in responses:
        if r.status_code == 429:
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert r.headers["x-ratelimit-limit-requests"] == "5"
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(events) == 60
