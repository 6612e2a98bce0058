"""Real servers on loopback for tests: ASGI apps in a thread, CLI commands as processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from sim.loopback import free_port, serve_app

__all__ = ["free_port", "run_cli", "serve_app", "wait_http"]


def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def run_cli(
    args: list[str], ready_url: str, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``antidistill ARGS`` as a process until the block ends; waits for ``ready_url``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            wait_http(ready_url)
        except httpx.TransportError:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(
                f"antidistill {' '.join(args)} did not start:\n{err.decode()[-3000:]}"
            ) from None
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
