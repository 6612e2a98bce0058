"""The ``antidistill`` command line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import orjson
import redis.asyncio as aioredis
import typer
from pydantic import SecretStr, ValidationError
from redis.exceptions import RedisError

from detectors.evaluate import eval_command
from detectors.train import train_command
from gateway.cli_support import (
    DataDirOpt,
    PolicyOpt,
    RedisOpt,
    fail,
    load_policy_or_exit,
    parse_duration,
    with_redis,
)
from gateway.identity import client_id_for
from gateway.keys import KeySpace
from gateway.policy import Level, Policy
from gateway.policy_file import PolicyError, load_policy, policy_json_schema
from gateway.provenance.cli import provenance_app
from gateway.replay import replay_command
from gateway.report import report_command
from gateway.settings import Settings, resolve_key_secret
from sim.traffic.cli import sim_app

app = typer.Typer(
    help="antidistill: an API gateway that protects model endpoints against distillation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Check policy files and export their schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys and client ids.", no_args_is_help=True)
client_app = typer.Typer(help="Inspect and set a client's enforcement level.", no_args_is_help=True)
decisions_app = typer.Typer(help="Read the decision log.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(keys_app, name="keys")
app.add_typer(client_app, name="client")
app.add_typer(decisions_app, name="decisions")
app.add_typer(provenance_app, name="provenance")
app.add_typer(sim_app, name="sim")
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("report")(report_command)
policy_app.command("replay")(replay_command)


@app.command()
def serve(
    upstream: Annotated[
        str, typer.Option(envvar="ANTIDISTILL_UPSTREAM", help="Base URL of the model server.")
    ],
    policy: PolicyOpt = None,
    redis: RedisOpt = None,
    host: Annotated[str, typer.Option(envvar="ANTIDISTILL_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="ANTIDISTILL_PORT")] = 8080,
    workers: Annotated[
        int, typer.Option(envvar="ANTIDISTILL_WORKERS", help="Worker processes.")
    ] = 1,
    data_dir: DataDirOpt = Path("var"),
    log_level: Annotated[str, typer.Option(envvar="ANTIDISTILL_LOG_LEVEL")] = "info",
) -> None:
    """Run the gateway in front of an OpenAI-compatible model server."""
    import uvicorn

    from gateway.app import create_app
    from gateway.logs import configure_logging
    from gateway.store.connect import EmbeddedRedis

    configure_logging(log_level)
    try:
        settings = Settings.model_validate(
            {
                "upstream": upstream,
                "policy": policy,
                "redis": redis,
                "host": host,
                "port": port,
                "workers": workers,
                "data_dir": data_dir,
                "log_level": log_level,
            }
        )
    except ValidationError as exc:
        raise fail(f"invalid settings:\n{exc}") from None
    _check_detector_model(load_policy_or_exit(settings.policy))
    # Created once here, before any worker starts, so all workers agree on client ids.
    resolve_key_secret(settings.key_secret, settings.data_dir)
    embedded = EmbeddedRedis(settings.data_dir / "redis") if settings.redis is None else None
    if embedded is not None:
        settings = settings.model_copy(update={"redis": embedded.url})
    # uvicorn shuts down gracefully on SIGTERM, then raises it again; this handler turns
    # that into SystemExit so the `finally` below still stops the embedded Redis.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        if settings.workers == 1:
            target: object = create_app(settings)
        else:
            # Worker processes build their own app from the settings resolved here.
            os.environ["ANTIDISTILL_SETTINGS_JSON"] = settings.to_json_with_secrets()
            target = "gateway.cli:app_from_environment"
        uvicorn.run(
            target,  # type: ignore[arg-type]
            factory=settings.workers > 1,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http="httptools",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        if embedded is not None:
            embedded.close()


def app_from_environment() -> object:
    """App factory for worker processes: the parent's resolved settings, passed as JSON."""
    from gateway.app import create_app
    from gateway.logs import configure_logging

    settings = Settings.model_validate_json(os.environ["ANTIDISTILL_SETTINGS_JSON"])
    configure_logging(settings.log_level)
    return create_app(settings)


@app.command()
def worker(
    redis: RedisOpt = None,
    policy: PolicyOpt = None,
    consumer: Annotated[
        str | None,
        typer.Option(
            "--consumer",
            envvar="ANTIDISTILL_CONSUMER",
            help="Consumer name in the `detector` group (default: host-pid). Reuse a "
            "name to take over that worker's pending entries at once.",
        ),
    ] = None,
    data_dir: DataDirOpt = Path("var"),
    log_level: Annotated[str, typer.Option(envvar="ANTIDISTILL_LOG_LEVEL")] = "info",
) -> None:
    """Run a detector worker: score clients from the decision log and set their levels.

    Any number of workers share the stream's `detector` consumer group. Set
    `detector.in_process: false` in the policy when these replace the in-process worker.
    """
    from gateway.logs import configure_logging
    from gateway.metrics import Metrics
    from gateway.policy_holder import PolicyHolder
    from gateway.store.connect import EmbeddedRedis, connect

    configure_logging(log_level)
    _check_detector_model(load_policy_or_exit(policy))
    policies = PolicyHolder(policy, Metrics())
    keys = KeySpace(policies.current.store.key_prefix)
    embedded = None if redis else EmbeddedRedis(data_dir / "redis")
    url = redis or embedded.url  # type: ignore[union-attr]

    async def run() -> None:
        from detectors.worker import DetectorWorker

        client = connect(url, 5.0)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, policies.reload)
        watcher = asyncio.create_task(policies.watch(2.0)) if policy is not None else None
        detector = DetectorWorker(client, keys, policies.get, consumer=consumer, batch_size=1000)
        try:
            await detector.run(stop)
        finally:
            if watcher is not None:
                watcher.cancel()
            await client.aclose()
            typer.echo(
                f"worker {detector.consumer} stopped: {detector.stats.events} events, "
                f"{detector.stats.scored} scores, {detector.stats.levels_set} levels set",
                err=True,
            )

    try:
        asyncio.run(run())
    except (OSError, RedisError) as exc:
        raise fail(f"cannot reach Redis at {url}: {exc}") from None
    finally:
        if embedded is not None:
            embedded.close()


@app.command("toy-upstream")
def toy_upstream(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9000,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
) -> None:
    """Run the toy OpenAI-compatible model server (a small trained LM and a digits classifier)."""
    from sim.toy_upstream import serve as serve_toy

    serve_toy(host, port)


@keys_app.command("hash")
def keys_hash(
    key: Annotated[str, typer.Argument(help="The API key (use - to read it from stdin).")],
    data_dir: DataDirOpt = Path("var"),
    key_secret: Annotated[
        str | None,
        typer.Option(envvar="ANTIDISTILL_KEY_SECRET", help="The gateway's HMAC secret."),
    ] = None,
) -> None:
    """Print the client id of an API key, as policies and the decision log name it.

    Uses the same secret as `serve`: ANTIDISTILL_KEY_SECRET, else the one kept in --data-dir.
    """
    if key == "-":
        key = sys.stdin.readline().strip()
    secret = resolve_key_secret(SecretStr(key_secret) if key_secret else None, data_dir)
    typer.echo(client_id_for(key, secret))


@policy_app.command("check")
def policy_check(files: Annotated[list[Path], typer.Argument(help="Policy files.")]) -> None:
    """Validate policy files; print file:line: message for every problem."""
    failed = False
    for path in files:
        try:
            load_policy(path)
            typer.echo(f"{path}: ok")
        except PolicyError as exc:
            failed = True
            for issue in exc.issues:
                typer.echo(str(issue), err=True)
    if failed:
        raise typer.Exit(1)


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the policy's JSON Schema."""
    typer.echo(policy_json_schema())


@client_app.command("set-level")
def client_set_level(
    client: Annotated[str, typer.Argument(help="Client id (see `antidistill keys hash`).")],
    level: Annotated[Level, typer.Argument(help="allow, watch, degrade, throttle or block.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept as a reason code.")],
    ttl: Annotated[
        str, typer.Option("--ttl", help="How long: 30m, 12h, 7d; 'never' for no expiry.")
    ] = "24h",
    redis: RedisOpt = None,
    data_dir: DataDirOpt = Path("var"),
    policy: PolicyOpt = None,
) -> None:
    """Set a client's enforcement level by hand (the detector never lowers it); the change
    goes to the audit trail with your user name."""
    from gateway.admin.actions import Action, ActionError, perform
    from gateway.ratelimit.limiter import Limiter

    ttl_s = parse_duration(ttl)
    try:
        action = Action("set_level", reason, level=level.value, ttl_s=ttl_s).validated()
    except ActionError as exc:
        raise fail(str(exc)) from None

    async def job(client_redis: aioredis.Redis, keys: KeySpace) -> None:
        await perform(client_redis, keys, client, action, actor=os.environ.get("USER") or "cli")
        shown = await Limiter(client_redis).get_level(keys.level(client))
        typer.echo(
            f"{client}: {shown.level} ({', '.join(shown.reasons)})"
            + (f", expires in {ttl}" if ttl_s else ", no expiry")
        )

    with_redis(redis, data_dir, policy, job)


@client_app.command("show")
def client_show(
    client: Annotated[str, typer.Argument(help="Client id.")],
    redis: RedisOpt = None,
    data_dir: DataDirOpt = Path("var"),
    policy: PolicyOpt = None,
) -> None:
    """Print a client's enforcement level and decision-log summary."""
    from gateway.ratelimit.limiter import Limiter

    async def job(client_redis: aioredis.Redis, keys: KeySpace) -> None:
        level = await Limiter(client_redis).get_level(keys.level(client))
        summary = await client_redis.hgetall(keys.summary(client))
        typer.echo(
            orjson.dumps(
                {
                    "client": client,
                    "level": level.level,
                    "reasons": list(level.reasons),
                    "expires_at_ms": level.expires_at_ms,
                    "summary": {_text(k): _text(v) for k, v in summary.items()},
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )

    with_redis(redis, data_dir, policy, job)


@decisions_app.command("tail")
def decisions_tail(
    client: Annotated[str | None, typer.Option("--client", help="Only this client id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    count: Annotated[
        int, typer.Option("--count", "-n", help="How many of the latest events.")
    ] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    redis: RedisOpt = None,
    data_dir: DataDirOpt = Path("var"),
    policy: PolicyOpt = None,
) -> None:
    """Print the latest decisions, oldest first."""
    from gateway.store.reader import format_event, read_after, read_latest

    async def job(client_redis: aioredis.Redis, keys: KeySpace) -> None:
        last_id, events = await read_latest(client_redis, keys, count, client)
        for event in events:
            typer.echo(format_event(event, as_json))
        while follow:
            last_id, events = await read_after(client_redis, keys, last_id, client)
            for event in events:
                typer.echo(format_event(event, as_json))

    try:
        with_redis(redis, data_dir, policy, job)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
def demo(
    data_dir: DataDirOpt = Path("var/demo"),
    toy_upstream: Annotated[
        bool,
        typer.Option(
            "--toy-upstream",
            help="Use the toy LM as the model server (its answers are short whatever is "
            "asked) instead of the replay upstream.",
        ),
    ] = False,
) -> None:
    """Simulated users and harvesters through a live gateway: who gets flagged, and why."""
    from gateway.demo import run_demo

    raise typer.Exit(run_demo(data_dir, toy=toy_upstream))


def _check_detector_model(policy: Policy) -> None:
    """Refuse to start a detector that cannot load the model the policy names."""
    if not policy.detector.enabled:
        return
    from detectors.scoring import ModelUnavailable, check_model

    try:
        check_model(policy.detector.model)
    except ModelUnavailable as exc:
        raise fail(f"cannot start the detector: {exc}") from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def main() -> None:
    app()
