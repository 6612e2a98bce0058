"""Fixtures: a real gateway on loopback, in front of a real upstream, on a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.keys import KeySpace
from gateway.settings import Settings
from tests.gateway.scripted_upstream import create_scripted_upstream
from tests.servers import serve_app


@pytest.fixture
def scripted_upstream() -> Iterator[tuple[str, Starlette]]:
    app = create_scripted_upstream()
    with serve_app(app) as url:
        yield url, app


@pytest.fixture
def redis_sync(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


GatewayFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def gateway(redis_url: str, keyspace: KeySpace, tmp_path: Path) -> GatewayFactory:
    """Start a gateway: ``with gateway(upstream_url, policy={...}) as url: ...``.

    The policy dict is written to a YAML file (its key prefix set to this test's own).
    """

    @contextmanager
    def start(
        upstream: str, policy: dict[str, Any] | None = None, **settings: Any
    ) -> Iterator[str]:
        doc = dict(policy or {})
        doc.setdefault("store", {})
        doc["store"] = {**doc["store"], "key_prefix": keyspace.prefix}
        path = tmp_path / f"policy-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(doc))
        config = Settings(
            upstream=upstream,
            policy=path,
            redis=settings.pop("redis", redis_url),
            data_dir=tmp_path / "data",
            key_secret="test-secret",
            **settings,
        )
        with serve_app(create_app(config)) as url:
            yield url

    return start


def wait_for_events(
    client: redis.Redis, keys: KeySpace, count: int, timeout_s: float = 10.0
) -> list[dict[str, str]]:
    """Decision events once at least ``count`` are in the stream."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = client.xrange(keys.decisions)
        if len(rows) >= count or time.monotonic() > deadline:
            return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]
        time.sleep(0.05)
