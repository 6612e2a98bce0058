"""Pieces the CLI's command modules share: common options and running a job on Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import redis.asyncio as aioredis
import typer
from redis.exceptions import RedisError

from gateway import durations
from gateway.keys import KeySpace
from gateway.policy import Policy
from gateway.policy_file import PolicyError, load_policy

RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        envvar="ANTIDISTILL_REDIS",
        help="Redis URL; the embedded server in --data-dir if unset.",
    ),
]
DataDirOpt = Annotated[
    Path,
    typer.Option(
        "--data-dir", envvar="ANTIDISTILL_DATA_DIR", help="Embedded Redis data, spool, key secret."
    ),
]
PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", envvar="ANTIDISTILL_POLICY", help="Policy YAML (for its key prefix)."),
]


def parse_duration(text: str) -> float | None:
    """Seconds in "90s", "10m", "1h30m", "2d"; None for "0", "never" or "none" (no expiry)."""
    try:
        return durations.parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def load_policy_or_exit(path: Path | None) -> Policy:
    if path is None:
        return Policy()
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise fail(str(exc)) from None


RedisJob = Callable[[aioredis.Redis, KeySpace], Awaitable[None]]


def with_redis(redis: str | None, data_dir: Path, policy: Path | None, job: RedisJob) -> None:
    """Run ``job`` against --redis, or the embedded server of --data-dir (attached if a
    gateway runs there, started otherwise)."""
    from gateway.store.connect import EmbeddedRedis

    keys = KeySpace(load_policy_or_exit(policy).store.key_prefix)
    embedded = None if redis else EmbeddedRedis(data_dir / "redis")
    url = redis or embedded.url  # type: ignore[union-attr]

    async def run() -> None:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
        try:
            await job(client, keys)
        finally:
            await client.aclose()

    try:
        asyncio.run(run())
    except (OSError, RedisError) as exc:
        raise fail(f"cannot reach Redis at {url}: {exc}") from None
    finally:
        if embedded is not None:
            embedded.close()
