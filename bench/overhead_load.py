"""Load generation for the overhead benchmark: wrk with a Lua script, or aiohttp."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = (
    '{"model":"stub","messages":[{"role":"user","content":"Say hello in two words."}],'
    '"max_tokens":16}'
)
BENCH_KEY = "bench-key"

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
