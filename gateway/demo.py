"""``antidistill demo``: the whole gateway at work on one machine, start to stop.

Starts the toy upstream and a gateway (embedded Redis) as child processes, sends a short
mix of traffic through it, prints what the gateway decided, and stops both cleanly.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from gateway.identity import client_id_for
from gateway.keys import KeySpace
from gateway.policy_file import parse_policy
from gateway.ratelimit.limiter import Limiter
from gateway.settings import resolve_key_secret
from gateway.store.connect import EmbeddedRedis
from gateway.store.reader import format_event, read_latest

DEMO_POLICY = """\
version: 1
tiers:
  default:
    limits:
      requests_per_minute: 8
      tokens_per_minute: 4000
      tokens_per_day: 100000
      max_concurrent: 4
requests:
  max_body_bytes: 65536
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], stdout=out, stderr=out)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _say(text: str) -> None:
    print(text, flush=True)


def _chat(content: str, **extra: object) -> dict[str, object]:
    return {
        "model": "toy-lm",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 24,
        **extra,
    }


def _traffic(gw: str, client: httpx.Client) -> Counter[str]:
    """The demo's traffic mix; returns a count of HTTP statuses seen."""
    seen: Counter[str] = Counter()

    def post(
        key: str | None,
        body: object = None,
        raw: bytes | None = None,
        path: str = "/v1/chat/completions",
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        r = (
            client.post(gw + path, json=body, headers=headers)
            if raw is None
            else client.post(
                gw + path, content=raw, headers={**headers, "content-type": "application/json"}
            )
        )
        seen[str(r.status_code)] += 1
        return r

    _say("\n1. alice chats normally (3 requests, one streamed):")
    for prompt in ("how was your weekend", "what do you like to cook"):
        r = post("demo-alice", _chat(prompt))
        _say(f"   {r.status_code}  {r.json()['choices'][0]['message']['content'][:60]!r}")
    with client.stream(
        "POST",
        gw + "/v1/chat/completions",
        json=_chat("tell me about music", stream=True),
        headers={"authorization": "Bearer demo-alice"},
    ) as r:
        chunks = sum(1 for line in r.iter_lines() if line.startswith("data: "))
        seen[str(r.status_code)] += 1
    _say(f"   {r.status_code}  streamed {chunks} server-sent events")

    _say("\n2. bob fires 12 requests at once (limit: 8 per minute):")
    statuses = [post("demo-bob", _chat(f"question {i}")) for i in range(12)]
    counts = Counter(r.status_code for r in statuses)
    last = next((r for r in statuses if r.status_code == 429), None)
    _say(
        f"   {dict(counts)}"
        + (f"; 429 says Retry-After: {last.headers['retry-after']}s" if last else "")
    )

    _say("\n3. bad input:")
    for label, r in (
        ("malformed JSON", post("demo-alice", raw=b"{oops")),
        ("no API key", post(None, _chat("hi"))),
        ("100 kB body", post("demo-alice", raw=b'{"x":"' + b"a" * 100_000 + b'"}')),
        ("unknown path", post("demo-alice", _chat("hi"), path="/v1/secret")),
    ):
        _say(f"   {label:<15} -> {r.status_code} {r.json()['error']['code']}")
    return seen


async def _block_and_report(redis_url: str, keys: KeySpace, client_id: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await Limiter(redis).set_level(keys.level(client_id), "block", ["operator:demo"], 600)
    finally:
        await redis.aclose()


async def _print_log(redis_url: str, keys: KeySpace, count: int) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        _, events = await read_latest(redis, keys, count)
    finally:
        await redis.aclose()
    _say(f"\nDecision log ({len(events)} events, newest last):")
    for event in events:
        _say("   " + format_event(event, as_json=False))
    by = Counter((e.client[:12], e.decision, e.status) for e in events)
    _say("\nSummary (client, decision, status: count):")
    for (client, decision, status), n in sorted(by.items()):
        _say(f"   {client:<12}  {decision:<8} {status}: {n}")


def run_demo(data_dir: Path) -> int:
    """Run the demo; returns the process exit code."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    policy_path = data_dir / "demo-policy.yaml"
    policy_path.write_text(DEMO_POLICY)
    keys = KeySpace(parse_policy(DEMO_POLICY).store.key_prefix)
    secret = resolve_key_secret(None, data_dir)
    up_port, gw_port = _free_port(), _free_port()
    up, gw = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    _say(f"antidistill demo — toy model server on {up}, gateway on {gw}, data in {data_dir}")
    embedded = EmbeddedRedis(data_dir / "redis")
    try:
        with (
            _process(
                ["toy-upstream", "--port", str(up_port)], data_dir / "toy-upstream.log"
            ) as up_proc,
            _process(
                [
                    "serve",
                    "--upstream",
                    up,
                    "--port",
                    str(gw_port),
                    "--policy",
                    str(policy_path),
                    "--redis",
                    embedded.url,
                    "--data-dir",
                    str(data_dir),
                    "--log-level",
                    "warning",
                ],
                data_dir / "gateway.log",
            ) as gw_proc,
        ):
            _wait(up + "/v1/models", up_proc)
            _wait(gw + "/readyz", gw_proc)
            with httpx.Client(timeout=60) as client:
                seen = _traffic(gw, client)
                carol = client_id_for("demo-carol", secret)
                _say(
                    f"\n4. an operator blocks carol ({carol[:12]}…) "
                    "with `antidistill client set-level`:"
                )
                asyncio.run(_block_and_report(embedded.url, keys, carol))
                r = client.post(
                    gw + "/v1/chat/completions",
                    json=_chat("hello"),
                    headers={"authorization": "Bearer demo-carol"},
                )
                seen[str(r.status_code)] += 1
                _say(f"   {r.status_code} {r.json()['error']['code']}")
            time.sleep(0.5)  # the decision log is written just after each response
            asyncio.run(_print_log(embedded.url, keys, sum(seen.values())))
        _say(
            "\nStopped the gateway and the toy model server. Logs: "
            f"{data_dir / 'gateway.log'}, {data_dir / 'toy-upstream.log'}"
        )
        return 0
    except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as exc:
        _say(f"demo failed: {exc}; see the logs in {data_dir}")
        return 1
    finally:
        embedded.close()
