"""The composition root: ``create_app(settings)`` builds and wires every part, once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import signal
from collections.abc import AsyncIterator

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admin.context import AdminContext
from gateway.admin.routes import admin_not_found_routes, admin_routes
from gateway.keys import KeySpace
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.policy import Policy
from gateway.policy_holder import PolicyHolder
from gateway.proxy import Proxy
from gateway.ratelimit.limiter import Limiter
from gateway.settings import Settings, resolve_key_secret
from gateway.stages.admit import Admit
from gateway.stages.dawn import DawnMark
from gateway.stages.identify import Identify
from gateway.stages.logprobs import LogprobGuard
from gateway.stages.meter import Meter
from gateway.stages.parse import ParseBody
from gateway.stages.probabilities import ProbabilityGuard
from gateway.stages.reasoning import ReasoningFilter
from gateway.stages.shape import Shape
from gateway.stages.watermark import TextWatermark
from gateway.store.connect import EmbeddedRedis, connect
from gateway.store.decision_log import DecisionLog
from gateway.store.spool import Spool
from gateway.upstream import UpstreamClient

log = logging.getLogger("antidistill")

DETECTOR_REDIS_TIMEOUT_S = 5.0
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def create_app(settings: Settings) -> Starlette:
    """The gateway as an ASGI app. Everything it holds lives on this app, nothing global."""
    metrics = Metrics()
    policies = PolicyHolder(settings.policy, metrics)
    policy = policies.current
    keys = KeySpace(policy.store.key_prefix)
    secret = resolve_key_secret(settings.key_secret, settings.data_dir)
    embedded = EmbeddedRedis(settings.data_dir / "redis") if settings.redis is None else None
    redis_url = embedded.url if embedded is not None else str(settings.redis)
    redis = connect(redis_url, settings.redis_timeout_s)
    limiter = Limiter(redis)
    upstream_key = (
        settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
    )
    upstream = UpstreamClient(settings.upstream_base, policy.upstream, upstream_key)
    decisions = DecisionLog(
        redis,
        keys,
        limiter,
        Spool(settings.spool_path.parent),
        metrics,
        max_events=policy.store.retention.max_events,
        deadline_s=settings.redis_timeout_s,
    )
    provenance_key = hmac.new(secret, b"antidistill-provenance", hashlib.sha256).digest()
    pipeline = Pipeline(
        request_stages=[
            Identify(secret),
            ParseBody(),
            Admit(limiter, keys, metrics, deadline_s=settings.redis_timeout_s),
            Shape(redis, keys),
        ],
        # Order matters: count what the upstream sent, withhold reasoning, then mark and
        # perturb what is left.
        response_stages=[
            Meter(),
            ReasoningFilter(),
            TextWatermark(provenance_key),
            LogprobGuard(provenance_key),
            DawnMark(provenance_key),
            ProbabilityGuard(provenance_key),
        ],
    )
    proxy = Proxy(policies.get, pipeline, upstream, decisions, metrics)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            redis_ok = bool(await redis.ping())
        except (RedisError, OSError):
            redis_ok = False
        upstream_ok = await upstream.reachable()
        ready = redis_ok and upstream_ok
        return JSONResponse(
            {
                "status": "ready" if ready else "not_ready",
                "redis": redis_ok,
                "upstream": upstream_ok,
            },
            status_code=200 if ready else 503,
        )

    async def metrics_endpoint(request: Request) -> Response:
        try:
            await metrics.refresh(redis, keys)
        except (RedisError, OSError) as exc:  # the process's own metrics still answer
            log.warning("metrics: cannot read the review gauges from Redis (%s)", exc)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await upstream.start()
        decisions.start()
        watcher = (
            asyncio.create_task(policies.watch(settings.policy_poll_s), name="policy-watch")
            if settings.policy is not None and settings.policy_poll_s > 0
            else None
        )
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, policies.reload)
        detector = await _start_detector(app, policy, redis_url, keys, policies)
        log.info(
            "gateway ready",
            extra={
                "upstream": settings.upstream_base,
                "policy": str(settings.policy or "built-in default"),
                "redis": redis_url.split("://", 1)[0],
            },
        )
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            if detector is not None:
                detector.cancel()
                await asyncio.wait({detector})  # a failure was logged when it happened
                await app.state.detector_redis.aclose()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await decisions.close()
            await upstream.close()
            await redis.aclose()
            if embedded is not None:
                embedded.close()

    admin = AdminContext.create(redis, keys, policies.get, settings.admin_token_value)
    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            *admin_routes(admin),  # none without an admin token
            *admin_not_found_routes(),  # /admin/... is never proxied
            Route("/{path:path}", proxy.handle, methods=_ALL_METHODS),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.policies = policies
    app.state.decisions = decisions
    app.state.keys = keys
    app.state.redis = redis
    app.state.limiter = limiter
    app.state.admin = admin
    app.state.detector = None
    return app


async def _start_detector(
    app: Starlette, policy: Policy, redis_url: str, keys: KeySpace, policies: PolicyHolder
) -> asyncio.Task[None] | None:
    """The in-process detector worker, as a task on the request loop (DESIGN §1).

    It has its own Redis connections (its reads block for up to half a second), creates
    its consumer group before the gateway takes requests, so no event is missed, and loads
    the model inside the task, in a thread, so start-up does not wait for it.
    """
    if not (policy.detector.enabled and policy.detector.in_process):
        return None
    from detectors.worker import DetectorWorker

    redis = connect(redis_url, DETECTOR_REDIS_TIMEOUT_S)
    app.state.detector_redis = redis
    worker = DetectorWorker(redis, keys, policies.get)
    try:
        await worker.ensure_group()
    except (RedisError, OSError) as exc:
        log.warning("detector worker: cannot create its consumer group yet (%s)", exc)
    app.state.detector = worker

    task = asyncio.create_task(worker.run(), name="detector-worker")
    task.add_done_callback(_report_detector_exit)
    return task


def _report_detector_exit(task: asyncio.Task[None]) -> None:
    """The worker is off the hot path: if it dies the gateway keeps serving (levels stay as
    they are), and the failure goes to the log, where operators look."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error(
            "detector worker stopped; enforcement levels are no longer updated",
            exc_info=(type(exc), exc, exc.__traceback__),
        )
