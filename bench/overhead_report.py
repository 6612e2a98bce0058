"""The overhead benchmark's results: rows, added latency, tables and the BENCHMARKS.md section."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
START, END = "<!-- overhead:start -->", "<!-- overhead:end -->"
GATEWAYS = ("embedded", "redis", "embedded-no-detector")


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
