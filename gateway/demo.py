"""``antidistill demo``: the mission on one machine — harvesters caught, users left alone.

Starts the toy upstream and a gateway (embedded Redis, the default policy's detector
running in-process) as child processes, then sends simulated traffic through the real
gateway: benign clients (chat users, coding assistants, an app backend) and harvesting
clients (self-instruct, reasoning elicitation, a logprob sweep), each from the traffic
simulator (``sim.traffic``), all at once. It prints when each attacker was flagged and
what it was answered from then on, the flagged-client summary with reason codes, and a
short tail of the decision log; then stops both processes. About a minute; no torch.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.identity import client_id_for
from gateway.keys import KeySpace
from gateway.policy_file import parse_policy
from gateway.ratelimit.limiter import Limiter
from gateway.settings import resolve_key_secret
from gateway.store.connect import EmbeddedRedis
from gateway.store.reader import format_event, read_latest
from sim.traffic.client import SimClient

ENFORCED = ("degrade", "throttle", "block")
# (scenario, clients, seed)
BENIGN = (
    ("chat_user", 3, 21),
    ("coding_assistant", 2, 22),
    ("app_backend", 2, 23),
    ("eval_harness", 1, 24),
)
ATTACKS = (("self_instruct", 1, 31), ("reasoning_elicitation", 1, 32), ("logprob_sweep", 1, 33))
SPEED = 80.0  # simulated seconds per real second
SIM_S = 1200.0  # 20 simulated minutes: 15 s of real time
# The default policy, with the default tier's limits multiplied by SPEED (time compression
# multiplies every client's rate by SPEED; limits scaled with it bind where they would in
# real time), and a small tier for bob to show rate limiting.
DEMO_POLICY = """\
version: 1
tiers:
  default:
    limits:
      requests_per_minute: 4800
      tokens_per_minute: 3200000
      tokens_per_day: 1000000
      max_concurrent: 64
  small:
    limits:
      requests_per_minute: 8
      tokens_per_minute: 4000
requests:
  max_body_bytes: 65536
store:
  retention:
    keep_prompt_samples: true  # so the report shows what each client asked
clients:
  "{bob}":
    name: bob
    tier: small
"""


def _body_key(body: dict[str, Any]) -> str:
    return hashlib.sha256(
        orjson.dumps(body.get("messages"), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def replay_upstream(clients: Sequence[SimClient]) -> Starlette:
    """An OpenAI-shaped upstream that answers each simulated request with the number of
    tokens the simulator planned for it (usage reported, streamed or not)."""
    plan: dict[str, tuple[int, int]] = {}
    for c in clients:
        for record, body in zip(c.records, c.bodies or (), strict=True):
            plan[_body_key(body)] = (record.prompt_tokens, record.completion_tokens)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "toy-lm", "object": "model"}]})

    async def chat(request: Request) -> Response:
        body = await request.json()
        prompt, completion = plan.get(_body_key(body), (20, 16))
        if isinstance(body.get("max_tokens"), int):
            completion = max(1, min(completion, body["max_tokens"]))
        text = " ".join(["word"] * min(completion, 32))
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        meta = {"id": "chatcmpl-replay", "created": 0, "model": "toy-lm"}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse(
                {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}
            )

        async def events() -> AsyncIterator[bytes]:
            chunk = {**meta, "object": "chat.completion.chunk"}
            delta = {"role": "assistant", "content": text}
            for piece in (
                {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                {**chunk, "choices": [], "usage": usage},
            ):
                yield b"data: " + orjson.dumps(piece) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


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


@dataclass
class _Client:
    """One simulated client as the gateway saw it."""

    name: str  # the API key the live driver used: sim-<family>-<n>
    family: str
    attack: bool
    client_id: str


def _simulate() -> list[SimClient]:
    from sim.traffic import generate

    sims: list[SimClient] = []
    for scenario, n, seed in (*BENIGN, *ATTACKS):
        sims += generate(scenario, seed=seed, clients=n, duration_s=SIM_S, keep_bodies=True)
    return sims


def _mission(gw: str, sims: list[SimClient], secret: bytes) -> list[_Client]:
    from sim.traffic.live import run as drive

    benign = sorted({s.family for s in sims if not s.attack})
    attacks = sorted({s.family for s in sims if s.attack})
    _say(
        f"\n1. {len(sims)} simulated clients at once, {SIM_S / 60:.0f} simulated minutes "
        f"{SPEED:.0f}x faster (`antidistill sim run`'s driver):"
    )
    _say(f"   benign:     {', '.join(benign)}")
    _say(f"   harvesting: {', '.join(attacks)}")
    result = asyncio.run(drive(gw, sims, speed=SPEED, duration_s=90, concurrency=8))
    _say(f"   sent {result.sent} requests in {result.elapsed_s:.1f}s")
    return [_Client(k.key, k.family, k.attack, client_id_for(k.key, secret)) for k in result.keys]


async def _report(redis_url: str, keys: KeySpace, clients: list[_Client]) -> tuple[int, int]:
    """The flagged-client summary; returns (attackers enforced upon, benign clients flagged)."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        limiter = Limiter(redis)
        _, events = await read_latest(redis, keys, 50_000)
        rows = []
        for c in clients:
            stored = await limiter.get_level(keys.level(c.client_id))
            detector = await redis.hgetall(f"{keys.client_tag(c.client_id)}:detector")
            raw = detector.get(b"score")
            score = raw.decode() if isinstance(raw, bytes) else "-"
            mine = [e for e in events if e.client == c.client_id]
            statuses = Counter(e.status for e in mine)
            lag = "-"
            for i, e in enumerate(mine):
                if e.level in ENFORCED or e.status == 403:
                    lag = f"{i + 1} / {(e.ts - mine[0].ts) / 1000:.1f}s"
                    break
            rows.append((c, statuses, stored.level, score, lag, ",".join(stored.reasons) or "-"))
    finally:
        await redis.aclose()
    _say("\nFlagged-client summary (lag: requests / seconds from the client's first request to")
    _say("the first one answered at degrade or above; clients under 20 requests are not scored):")
    _say(
        f"   {'client':<28}{'truth':<8}{'sent':>5}{'200':>5}{'403':>5}{'429':>5}  "
        f"{'level':<9}{'score':>6}  {'lag':<12}reasons"
    )
    for c, statuses, level, score, lag, reasons in sorted(
        rows, key=lambda r: (not r[0].attack, r[0].name)
    ):
        _say(
            f"   {c.name:<28}{'attack' if c.attack else 'benign':<8}"
            f"{sum(statuses.values()):>5}{statuses[200]:>5}{statuses[403]:>5}{statuses[429]:>5}  "
            f"{level:<9}{score:>6}  {lag:<12}{reasons}"
        )
    caught = sum(1 for c, _, level, *_ in rows if c.attack and level in ENFORCED)
    flagged = sum(1 for c, _, level, *_ in rows if not c.attack and level != "allow")
    return caught, flagged


def _limits_and_operator(gw: str, redis_url: str, keys: KeySpace, secret: bytes) -> None:
    with httpx.Client(timeout=60) as client:
        _say("\n2. rate limits still apply: bob (tier 'small', 8 per minute) fires 12 at once:")
        statuses = [
            client.post(
                gw + "/v1/chat/completions",
                json=_chat(f"question {i}"),
                headers={"authorization": "Bearer demo-bob"},
            )
            for i in range(12)
        ]
        counts = Counter(r.status_code for r in statuses)
        last = next((r for r in statuses if r.status_code == 429), None)
        _say(
            f"   {dict(counts)}"
            + (f"; 429 says Retry-After: {last.headers['retry-after']}s" if last else "")
        )
        carol = client_id_for("demo-carol", secret)
        _say(f"\n3. an operator blocks carol ({carol[:12]}…) with `antidistill client set-level`:")
        asyncio.run(_block(redis_url, keys, carol))
        r = client.post(
            gw + "/v1/chat/completions",
            json=_chat("hello"),
            headers={"authorization": "Bearer demo-carol"},
        )
        _say(f"   {r.status_code} {r.json()['error']['code']}")


async def _block(redis_url: str, keys: KeySpace, client_id: str) -> None:
    from gateway.admin.actions import Action, perform

    redis = aioredis.Redis.from_url(redis_url)
    try:
        action = Action("block", reason="key reported stolen", ttl_s=600)
        await perform(redis, keys, client_id, action, actor="demo-operator")
    finally:
        await redis.aclose()


async def _write_report(redis_url: str, policy_text: str, path: Path) -> int:
    """The HTML report of the demo's flagged clients; returns how many it lists."""
    from gateway.report import collect, write_atomically
    from gateway.report_templates import render_html

    policy = parse_policy(policy_text)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        report = await collect(
            redis,
            KeySpace(policy.store.key_prefix),
            policy,
            since="1h",
            since_ms=int(time.time() * 1000) - 3_600_000,
            flagged_only=True,
            limit=50,
            now_ms=int(time.time() * 1000),
        )
    finally:
        await redis.aclose()
    write_atomically(path, render_html(report))
    return len(report.clients)


async def _print_log(redis_url: str, keys: KeySpace, count: int) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        _, events = await read_latest(redis, keys, count)
    finally:
        await redis.aclose()
    _say(f"\nDecision log, the last {len(events)} events:")
    for event in events:
        _say("   " + format_event(event, as_json=False))


@contextmanager
def _serve_in_thread(app: Starlette, port: int) -> Iterator[None]:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextmanager
def _upstream(toy: bool, sims: list[SimClient], port: int, data_dir: Path) -> Iterator[str]:
    """The model server: the toy LM (a child process), or the replay upstream (a thread)."""
    url = f"http://127.0.0.1:{port}"
    if toy:
        with _process(["toy-upstream", "--port", str(port)], data_dir / "upstream.log") as proc:
            _wait(url + "/v1/models", proc)
            yield url
        return
    with _serve_in_thread(replay_upstream(sims), port):
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/v1/models", timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the replay upstream did not start") from None
                time.sleep(0.05)
        yield url


def run_demo(data_dir: Path, toy: bool = False) -> int:
    """Run the demo; returns the process exit code.

    The model server is a *replay upstream* that answers each simulated request with as
    many tokens as the simulator planned for it (a production model asked for detailed
    answers writes hundreds of tokens); with ``toy`` it is the toy LM, whose answers are a
    few dozen tokens whatever is asked — which hides part of what harvesting looks like.
    """
    started = time.monotonic()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    secret = resolve_key_secret(None, data_dir)
    policy_text = DEMO_POLICY.format(bob=client_id_for("demo-bob", secret))
    policy_path = data_dir / "demo-policy.yaml"
    policy_path.write_text(policy_text)
    keys = KeySpace(parse_policy(policy_text).store.key_prefix)
    up_port, gw_port = _free_port(), _free_port()
    gw = f"http://127.0.0.1:{gw_port}"
    model = "toy LM" if toy else "replay upstream (answers as long as the simulator planned)"
    _say(f"antidistill demo — model server: {model}; gateway on {gw}; data in {data_dir}")
    try:
        sims = _simulate()
    except ImportError as exc:
        _say(f"demo needs the traffic simulator's text: pip install 'antidistill[sim]' ({exc})")
        return 1
    embedded = EmbeddedRedis(data_dir / "redis")
    try:
        with (
            _upstream(toy, sims, up_port, data_dir) as up,
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
            _wait(gw + "/readyz", gw_proc)
            clients = _mission(gw, sims, secret)
            time.sleep(1.0)  # the last decisions reach the log and the detector
            caught, flagged = asyncio.run(_report(embedded.url, keys, clients))
            _limits_and_operator(gw, embedded.url, keys, secret)
            time.sleep(0.5)  # the decision log is written just after each response
            asyncio.run(_print_log(embedded.url, keys, 6))
            listed = asyncio.run(_write_report(embedded.url, policy_text, data_dir / "report.html"))
        attackers = sum(1 for c in clients if c.attack)
        benign = len(clients) - attackers
        _say(
            f"\nResult: {caught}/{attackers} harvesting clients degraded or blocked; "
            f"{flagged}/{benign} benign clients flagged. ({time.monotonic() - started:.0f}s)"
        )
        _say(
            f"\nThe review report ({listed} flagged clients, with score plots and reasons): "
            f"{data_dir / 'report.html'}\n"
            f"  again: antidistill report --data-dir {data_dir} --policy {policy_path} "
            "--format html --out report.html"
        )
        _say(f"Stopped the gateway and the model server. Logs in {data_dir}.")
        return 0
    except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as exc:
        _say(f"demo failed: {exc}; see the logs in {data_dir}")
        return 1
    finally:
        embedded.close()
