"""Detector worker throughput: decision events per second on one core.

    python bench/detection/worker_throughput.py [--events 50000] [--clients 500]
        [--redis redis://127.0.0.1:6379/0] [--latency]

Fills a decision stream (under a throw-away key prefix) with ``--events`` events of
``--clients`` clients, then drains it with one :class:`DetectorWorker` twice:

1. **read + window update**: XREADGROUP in batches of 1,000, decode, update the in-memory
   windows, persist them (RPUSH/LTRIM) and ACK — scoring switched off (the path the
   5,000 events/s target is about);
2. **end to end** with the shipped model, the default policy's scoring cadence (every 8
   requests or 2 s per client) and campaign linking once at the end.

Reports events/s by wall clock and by this process's CPU time (the worker is one asyncio
task: one core; Redis runs in its own process).

With ``--latency`` it also measures what the in-process worker costs the requests it shares
an event loop with: ``antidistill serve`` in front of the stub upstream
(``bench.stub_upstream``), loaded by ``wrk`` (8 connections, 200 API keys, a chat body with
a varied prompt) with ``detector.enabled`` false and then true, p50/p99 side by side.

Writes ``bench/results/worker_throughput.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
import redis.asyncio as aioredis

from detectors.schema import RequestFeatures, RequestRecord
from detectors.worker import DetectorWorker, Models
from gateway.keys import KeySpace
from gateway.policy import Policy
from gateway.store.events import DecisionEvent

RESULTS = Path(__file__).resolve().parents[1] / "results" / "worker_throughput.json"


class _NeverScores:
    min_requests = 10**9

    def score(self, X: Any) -> Any:
        return np.zeros(len(X))

    def explain(self, x: Any, top: int = 3) -> list[tuple[str, float, float, float]]:
        return []


def _no_features(records: Sequence[RequestRecord]) -> Any:
    return np.zeros(1)


def _events(n: int, clients: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    ids = [f"{rng.getrandbits(256):064x}" for _ in range(clients)]
    start = int(time.time() * 1000) - n * 10
    out = []
    for i in range(n):
        client = ids[rng.randrange(clients)]
        features = RequestFeatures(
            prompt_chars=rng.randrange(20, 2000),
            prompt_words=rng.randrange(5, 300),
            messages=rng.randrange(1, 8),
            user_turns=rng.randrange(1, 4),
            system_chars=rng.choice((0, 0, 200)),
            reasoning_marker=rng.random() < 0.1,
            sketch=rng.getrandbits(64),
            template=rng.getrandbits(64),
        )
        out.append(
            DecisionEvent(
                ts=start + i * 10,
                id=uuid.UUID(int=rng.getrandbits(128)).hex,
                client=client,
                tier="default",
                route="/v1/chat/completions",
                decision="admitted",
                status=200,
                upstream_status=200,
                latency_ms=3.2,
                prompt_tokens=rng.randrange(10, 500),
                completion_tokens=rng.randrange(10, 500),
                reserved_tokens=600,
                params={"model": "m", "max_tokens": 256, "temperature": 0.7, "messages": 2},
                limits={"requests": 50.0, "tokens": 39000.0},
                client_ip=f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
                features=features.to_json(),
            ).to_fields()
        )
    return out


async def _fill(redis: aioredis.Redis, keys: KeySpace, events: list[dict[str, str]]) -> None:
    for i in range(0, len(events), 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for fields in events[i : i + 2000]:
                pipe.xadd(keys.decisions, fields)  # type: ignore[arg-type]
            await pipe.execute()


async def _drain(worker: DetectorWorker, total: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    while worker.stats.events < total:
        if not await worker.step():
            break
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "events": worker.stats.events,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "events_per_s_wall": round(worker.stats.events / wall),
        "events_per_s_cpu": round(worker.stats.events / cpu),
        "scored": worker.stats.scored,
        "max_slice_ms": round(worker.stats.max_slice_s * 1000, 2),
    }


async def _run(url: str, n: int, clients: int, with_model: bool) -> dict[str, Any]:
    redis = aioredis.Redis.from_url(url)
    events = _events(n, clients)
    results: dict[str, Any] = {}
    policy = Policy()
    phases: list[tuple[str, Models | None]] = [
        ("read_and_window_update", Models(_NeverScores(), _no_features))
    ]
    if with_model:
        phases.append(("end_to_end_with_model", None))
    try:
        for name, models in phases:
            keys = KeySpace(f"bench:{uuid.uuid4().hex[:10]}")
            try:
                await _fill(redis, keys, [])
                worker = DetectorWorker(
                    redis, keys, lambda: policy, models=models, batch_size=1000, block_ms=50
                )
                await worker.ensure_group()
                await worker.load()
                await _fill(redis, keys, events)
                results[name] = await _drain(worker, n)
                if models is None:
                    started = time.perf_counter()
                    found = await worker.link_campaigns()
                    results[name]["campaign_linking_s"] = round(time.perf_counter() - started, 3)
                    results[name]["campaigns"] = found
                    results[name]["levels_set"] = worker.stats.levels_set
                print(f"{name:<24} {json.dumps(results[name])}", flush=True)
            finally:
                async for key in redis.scan_iter(match=f"{keys.prefix}:*", count=1000):
                    await redis.delete(key)
    finally:
        await redis.aclose()
    return results


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  local key = "bench-key-" .. (counter % 200)
  wrk.headers["authorization"] = "Bearer " .. key
  local body = '{"model":"stub","max_tokens":16,"messages":[{"role":"user","content":' ..
    '"Explain step by step how topic ' .. counter .. ' works, in detail."}]}'
  return wrk.format(nil, "/v1/chat/completions", nil, body)
end
"""


def _latency(redis_url: str, seconds: int) -> dict[str, Any]:
    """p50/p99 of the gateway with the in-process detector off and on (needs wrk)."""
    if shutil.which("wrk") is None:
        return {"skipped": "wrk not installed"}

    def port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def wait(url: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{url} did not come up")

    def ms(text: str) -> float:
        """wrk's "456.00us", "1.23ms" or "1.02s" in milliseconds."""
        for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if text.endswith(unit):
                return float(text[: -len(unit)]) * factor
        raise ValueError(f"unknown wrk latency {text!r}")

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_SCRIPT)
        up_port = port()
        stub = subprocess.Popen(
            [sys.executable, "-m", "bench.stub_upstream", "--port", str(up_port)],
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            wait(f"http://127.0.0.1:{up_port}/v1/models")
            for enabled in (False, True):
                prefix = f"benchlat:{uuid.uuid4().hex[:8]}"
                policy = Path(tmp) / f"policy-{enabled}.yaml"
                policy.write_text(
                    "tiers:\n  default:\n    limits:\n      requests_per_minute: 1000000000\n"
                    "      tokens_per_minute: 1000000000\n      tokens_per_day: 1000000000000\n"
                    f"store:\n  key_prefix: {prefix}\n"
                    f"detector:\n  enabled: {str(enabled).lower()}\n"
                )
                gw_port = port()
                gw = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gateway",
                        "serve",
                        "--upstream",
                        f"http://127.0.0.1:{up_port}",
                        "--port",
                        str(gw_port),
                        "--policy",
                        str(policy),
                        "--redis",
                        redis_url,
                        "--data-dir",
                        str(Path(tmp) / "data"),
                        "--log-level",
                        "warning",
                    ]
                )
                try:
                    wait(f"http://127.0.0.1:{gw_port}/readyz")
                    time.sleep(3)  # the detector's model loads
                    cmd = [
                        "wrk",
                        "-t2",
                        "-c8",
                        f"-d{seconds}s",
                        "--latency",
                        "-s",
                        str(script),
                        f"http://127.0.0.1:{gw_port}",
                    ]
                    subprocess.run([*cmd[:4], "-d2s", *cmd[5:]], capture_output=True, check=True)
                    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
                    p50 = re.search(r"50%\s+(\S+)", text).group(1)  # type: ignore[union-attr]
                    p99 = re.search(r"99%\s+(\S+)", text).group(1)  # type: ignore[union-attr]
                    name = "detector_on" if enabled else "detector_off"
                    r = redis.Redis.from_url(redis_url)
                    scored = sum(1 for _ in r.scan_iter(match=f"{prefix}:*:detector", count=1000))
                    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
                        r.delete(key)
                    r.close()
                    out[name] = {
                        "requests_per_s": rps,
                        "p50_ms": ms(p50),
                        "p99_ms": ms(p99),
                        "clients_scored": scored,
                    }
                    print(f"{name:<24} {json.dumps(out[name])}", flush=True)
                finally:
                    gw.terminate()
                    gw.wait(timeout=20)
        finally:
            stub.terminate()
            stub.wait(timeout=20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-model", action="store_true", help="Skip the end-to-end run.")
    parser.add_argument("--latency", action="store_true", help="Also the in-process impact.")
    parser.add_argument("--seconds", type=int, default=10, help="wrk run length (--latency).")
    args = parser.parse_args()
    results = asyncio.run(_run(args.redis, args.events, args.clients, not args.no_model))
    if args.latency:
        results["in_process_latency"] = _latency(args.redis, args.seconds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": "python bench/detection/worker_throughput.py "
                f"--events {args.events} --clients {args.clients}"
                + (" --latency" if args.latency else ""),
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                "python": platform.python_version(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
