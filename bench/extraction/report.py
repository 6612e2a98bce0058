"""Tables, JSON results and the benchmark's own section of ``BENCHMARKS.md``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from threadpoolctl import ThreadpoolController

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "bench" / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"

Cell = str | int | float | None


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small budgets: seconds, for tests")
    parser.add_argument(
        "--write-benchmarks",
        action="store_true",
        help="replace this benchmark's section of BENCHMARKS.md with the new table",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON result goes"
    )
    return parser.parse_args(argv)


def one_thread() -> AbstractContextManager[Any]:
    """``with one_thread():`` BLAS / OpenMP (and torch) use one thread: on a small shared
    machine their worker threads spin against each other and every other process (measured
    here: a tiny numpy training step 12x slower with two BLAS threads than with one)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    limiter: AbstractContextManager[Any] = ThreadpoolController().limit(limits=1)
    return limiter


def fmt(value: Cell, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 10 ** (-digits) or abs(value) >= 1e6):
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """A GitHub-markdown table (also readable as plain text)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join(lines)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", module, *args])


def machine() -> str:
    system = f"{platform.system()} {platform.machine()}"
    return f"{system}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def write_json(results_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"extraction_{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def section(title: str, command: str, body: str, note: str, elapsed_s: float) -> str:
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"### {title}\n\n"
        f"`{command}` — {date}, {machine()}, {elapsed_s:.0f} s.\n\n"
        f"{body}\n\n{note.strip()}\n"
    )


def update_benchmarks(name: str, text: str, path: Path = BENCHMARKS) -> None:
    """Replaces the text between this benchmark's markers (appended at the end if missing);
    every other part of the file is left as it was."""
    start, end = f"<!-- extraction-{name}:start -->", f"<!-- extraction-{name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(updated)


def publish(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    *,
    module: str,
    name: str,
    title: str,
    text: str,
    note: str | Callable[[], str],
    elapsed_s: float,
    results: dict[str, Any],
) -> None:
    """What every benchmark does with its results: JSON under the results directory and,
    with ``--write-benchmarks``, its section of ``BENCHMARKS.md`` (``note`` may be a
    callable, when writing it costs work that a plain run should not do)."""
    command = command_line(module, argv)
    payload = {"command": command, "quick": args.quick, "seconds": round(elapsed_s, 1)}
    path = write_json(args.results_dir, name, {**payload, **results})
    print(f"wrote {path} ({elapsed_s:.1f} s)")
    if args.write_benchmarks:
        body = note() if callable(note) else note
        update_benchmarks(name, section(title, command, text, body, elapsed_s))
