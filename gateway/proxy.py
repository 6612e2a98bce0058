"""The proxy endpoint: route lookup, the stage chain, forwarding, and the record step."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable

import aiohttp
import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import error_body, error_response
from gateway.exchange import Exchange
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.policy import Policy
from gateway.record import decision_event, settlement_for
from gateway.sse import SseEvent, iter_events
from gateway.stages.parse import read_capped
from gateway.store.decision_log import DecisionLog
from gateway.upstream import UpstreamClient, UpstreamError, response_headers

log = logging.getLogger("antidistill.proxy")

_MAX_SSE_EVENT_BYTES = 1 << 20


class Proxy:
    """Handles every request to a path the policy routes."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        pipeline: Pipeline,
        upstream: UpstreamClient,
        decisions: DecisionLog,
        metrics: Metrics,
    ) -> None:
        self._policy = policy
        self._pipeline = pipeline
        self._upstream = upstream
        self._decisions = decisions
        self._metrics = metrics

    async def handle(self, request: Request) -> Response:
        policy = self._policy()
        route = policy.route_for(request.url.path)
        if route is None:
            return error_response(
                404, f"No route for {request.url.path[:200]!r}.", code="not_found"
            )
        if request.method != route.method:
            return error_response(
                405,
                f"{route.path} accepts {route.method} only.",
                code="method_not_allowed",
                headers={"allow": route.method},
            )
        ex = Exchange(
            id=uuid.uuid4().hex,
            route=route,
            policy=policy,
            method=request.method,
            headers={
                k.decode("latin-1").lower(): v.decode("latin-1")
                for k, v in request.scope["headers"]
            },
            raw_body=b"",
            receive_body=functools.partial(read_capped, request),
        )
        answer = await self._pipeline.run_request(ex)
        if answer is not None:
            return self._answer(ex, answer)
        ex.decision = "admitted"
        return await self._forward(ex)

    def _answer(self, ex: Exchange, response: Response) -> Response:
        """The gateway answers itself: log the decision and return."""
        ex.decision = "rejected"
        ex.status = response.status_code
        self._finish(ex)
        return response

    def _finish(self, ex: Exchange) -> None:
        self._metrics.count_decision(ex.route.path, ex.decision, ex.level, ex.reasons)
        marks = ex.state.get("provenance_marks") or ()
        self._decisions.record(
            decision_event(ex), settlement_for(ex), [orjson.dumps(m) for m in marks]
        )

    async def _forward(self, ex: Exchange) -> Response:
        body: bytes | None = None
        if ex.method != "GET":
            body = orjson.dumps(ex.body) if ex.body_modified else ex.raw_body
        path = ex.route.upstream_path or ex.route.path
        sent = time.perf_counter()
        try:
            upstream = await self._upstream.send(ex.method, path, ex.headers, body)
        except UpstreamError as exc:
            ex.decision = "error"
            ex.reasons.append(exc.code)
            ex.status = exc.status
            self._finish(ex)
            return error_response(
                exc.status,
                exc.message,
                type_="upstream_error",
                code=exc.code,
                headers=ex.response_headers,
            )
        ex.upstream_latency_ms = round((time.perf_counter() - sent) * 1000, 3)
        ex.upstream_status = upstream.status
        self._metrics.upstream_latency.labels(route=ex.route.path).observe(
            ex.upstream_latency_ms / 1000
        )
        headers = {**response_headers(upstream.headers), **ex.response_headers}
        if upstream.content_type == "text/event-stream":
            return _StreamResponse(self._pipeline, self._finish, ex, upstream, headers)
        try:
            content = await upstream.read()
        except (aiohttp.ClientError, TimeoutError):
            upstream.release()
            ex.decision = "error"
            ex.reasons.append("upstream_broken_response")
            ex.status = 502
            self._finish(ex)
            return error_response(
                502,
                "The model server's response broke off.",
                type_="upstream_error",
                code="upstream_unavailable",
            )
        upstream.release()
        if upstream.content_type == "application/json" and content[:1] == b"{":
            try:
                parsed = orjson.loads(content)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict) and self._pipeline.run_json(ex, parsed):
                content = orjson.dumps(parsed)
        ex.status = upstream.status
        self._finish(ex)
        return Response(content, status_code=upstream.status, headers=headers)


class _StreamResponse(Response):
    """Passes an upstream SSE stream through event by event, logging when it ends."""

    def __init__(
        self,
        pipeline: Pipeline,
        finish: Callable[[Exchange], None],
        ex: Exchange,
        upstream: aiohttp.ClientResponse,
        headers: dict[str, str],
    ) -> None:
        self._pipeline = pipeline
        self._finish = finish
        self._ex = ex
        self._upstream = upstream
        self.status_code = upstream.status
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = self._ex
        ex.status = self.status_code
        try:
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    if not ex.state.get("stream_done"):  # gone before the end, not after
                        ex.reasons.append("client_disconnected")
                    group.cancel_scope.cancel()

                group.start_soon(watch_disconnect)
                await self._relay(send)
                group.cancel_scope.cancel()
        finally:
            if ex.stream_cut or "client_disconnected" in ex.reasons:
                self._upstream.close()  # stop the upstream generating for nobody
            else:
                self._upstream.release()
            self._finish(ex)

    async def _relay(self, send: Send) -> None:
        ex, pipeline = self._ex, self._pipeline
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last: SseEvent | None = None
        try:
            async for event in iter_events(self._upstream.content.iter_any(), _MAX_SSE_EVENT_BYTES):
                payload = event.raw
                if event.data is not None:
                    changed = pipeline.run_event(ex, event.data)
                    if ex.stream_cut:
                        payload = _final_chunk(last)
                        await send(
                            {"type": "http.response.body", "body": payload, "more_body": True}
                        )
                        break
                    if changed:
                        payload = event.encode()
                    last = event
                await send({"type": "http.response.body", "body": payload, "more_body": True})
        except (aiohttp.ClientError, TimeoutError):
            ex.reasons.append("upstream_stream_broken")
            broken = error_body(
                "The model server's stream broke off.", "upstream_error", "upstream_unavailable"
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + broken + b"\n\n",
                    "more_body": True,
                }
            )
        ex.state["stream_done"] = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _final_chunk(last: SseEvent | None) -> bytes:
    """A closing chunk (finish_reason "length") modelled on the last one sent, then [DONE]."""
    chunk: dict[str, object] = {"object": "chat.completion.chunk", "choices": []}
    if last is not None and last.data is not None:
        chunk = {k: last.data[k] for k in ("id", "object", "created", "model") if k in last.data}
        choices = last.data.get("choices")
        if isinstance(choices, list):
            chunk["choices"] = [
                {"index": c.get("index", 0), "delta": {}, "finish_reason": "length"}
                if "delta" in c
                else {"index": c.get("index", 0), "text": "", "finish_reason": "length"}
                for c in choices
                if isinstance(c, dict)
            ]
    return b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
