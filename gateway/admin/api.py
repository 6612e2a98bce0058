"""The admin JSON API, under ``/admin/api/`` (bearer token on every route).

==========================================  ===============================================
``GET  /admin/api/clients``                 ``?flagged=true&since=24h&limit=500``: ranked
                                            client summaries
``GET  /admin/api/clients/{id}``            one client's detail (``?events=2000&since=``)
``POST /admin/api/clients/{id}/actions``    ``{"action", "reason", "level", "label",
                                            "ttl": "24h"|null, "actor"}`` → 201, the audit
                                            entry (see :mod:`gateway.admin.actions`)
``GET  /admin/api/campaigns``               ``?since=``: linked campaigns
``GET  /admin/api/decisions``               ``?client=&count=100``: latest decision events,
                                            newest last
``GET  /admin/api/audit``                   ``?client=&since=&count=200``: the audit trail,
                                            newest first
==========================================  ===============================================

Errors are JSON (``{"error": {"message", "type", "code"}}``): 401 without the token, 400
for bad input, 404 for an unknown client, 503 when Redis cannot be reached; never a 500.
Text in answers (client names, prompt samples, reasons) is returned as data, unescaped, as
``application/json`` with ``nosniff``: escaping is the renderer's job.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import durations
from gateway.admin.actions import Action, ActionError, perform
from gateway.admin.audit import read as read_audit
from gateway.admin.auth import check_bearer
from gateway.admin.context import AdminContext
from gateway.admin.review import to_jsonable
from gateway.errors import error_body

log = logging.getLogger("antidistill.admin")

PREFIX = "/admin/api"
MAX_BODY_BYTES = 16 * 1024
MAX_DURATION_S = 400 * 86_400
_CLIENT_ID = re.compile(r"[0-9a-f]{64}|anonymous")
_COUNT = re.compile(r"[0-9]{1,9}")
_BODY_FIELDS = frozenset({"action", "reason", "level", "label", "ttl", "actor"})
ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}

Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """An answer other than success: status, error code and a message for the caller."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def valid_client_id(text: str) -> bool:
    """A client id as the gateway makes them: 64 lower-case hex digits, or ``anonymous``."""
    return _CLIENT_ID.fullmatch(text) is not None


def parse_duration(text: str) -> float | None:
    """Seconds in ``90s``, ``10m``, ``1h30m``, ``2d``; None for ``never``/``none``/``0``.
    Raises ValueError for anything else, or for more than ``MAX_DURATION_S``."""
    return durations.parse_duration(text, MAX_DURATION_S)


def parse_since(text: str | None, now_ms: float) -> int | None:
    """The time ``text`` (a duration: ``24h``) before ``now_ms``, in ms; None if empty or
    ``all``. Raises ValueError for a bad duration."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    seconds = parse_duration(text)
    return None if seconds is None else int(now_ms - seconds * 1000)


def api_routes(ctx: AdminContext) -> list[BaseRoute]:
    """The API's routes (each checks the bearer token, then the method)."""
    api = _Api(ctx)
    table: list[tuple[str, str, Handler]] = [
        ("/clients", "GET", api.clients),
        ("/clients/{client_id}", "GET", api.client),
        ("/clients/{client_id}/actions", "POST", api.action),
        ("/campaigns", "GET", api.campaigns),
        ("/decisions", "GET", api.decisions),
        ("/audit", "GET", api.audit),
    ]
    # Every method reaches the guard, which answers 405 itself: a method mismatch must not
    # fall through to the /admin 404 or to the proxy.
    return [
        Route(PREFIX + path, api.guard(method, handler), methods=ALL_METHODS)
        for path, method, handler in table
    ]


def json_response(data: Any, status: int = 200) -> Response:
    """``data`` (see :func:`gateway.admin.review.to_jsonable`) as an API answer."""
    return Response(
        orjson.dumps(to_jsonable(data)),
        status_code=status,
        media_type="application/json",
        headers=_HEADERS,
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(message, "admin_error", code),
        status_code=status,
        media_type="application/json",
        headers={**_HEADERS, **(headers or {})},
    )


class _Api:
    def __init__(self, ctx: AdminContext) -> None:
        self._ctx = ctx

    def guard(self, method: str, handler: Handler) -> Handler:
        """``handler`` behind the token and the method check, with errors as JSON."""
        token = self._ctx.token

        async def endpoint(request: Request) -> Response:
            if not check_bearer(request.headers.get("authorization"), token):
                return error_response(
                    401,
                    "unauthorized",
                    "A valid admin token is required (Authorization: Bearer <token>).",
                    {"www-authenticate": 'Bearer realm="antidistill-admin"'},
                )
            if request.method != method:
                return error_response(
                    405,
                    "method_not_allowed",
                    f"{request.url.path[:200]} accepts {method} only.",
                    {"allow": method},
                )
            try:
                return await handler(request)
            except ApiError as exc:
                return error_response(exc.status, exc.code, exc.message)
            except (RedisError, OSError) as exc:
                log.warning("admin API: store unavailable (%s)", type(exc).__name__)
                return error_response(503, "store_unavailable", "The store cannot be reached.")

        return endpoint

    async def clients(self, request: Request) -> Response:
        query = request.query_params
        found = await self._ctx.review.clients(
            flagged=_flag(query.get("flagged")),
            since_ms=_since(query.get("since")),
            limit=_count(query.get("limit"), "limit", default=500, high=5_000),
        )
        return json_response({"clients": found, "count": len(found)})

    async def client(self, request: Request) -> Response:
        client_id = _client_id(request.path_params["client_id"])
        query = request.query_params
        detail = await self._ctx.review.client(
            client_id,
            events=_count(query.get("events"), "events", default=2_000, high=20_000),
            since_ms=_since(query.get("since")),
        )
        if detail is None:
            raise ApiError(404, "unknown_client", "The gateway has never seen this client.")
        return json_response(detail)

    async def action(self, request: Request) -> Response:
        client_id = _client_id(request.path_params["client_id"])
        action, actor = _action(await _json_body(request))
        if not await self._ctx.review.known(client_id):
            raise ApiError(404, "unknown_client", "The gateway has never seen this client.")
        try:
            entry = await perform(self._ctx.redis, self._ctx.keys, client_id, action, actor)
        except ActionError as exc:
            raise ApiError(400, "invalid_action", str(exc)) from None
        log.info(
            "admin action",
            extra={"actor": entry.actor, "action": entry.action, "client": client_id},
        )
        return json_response(entry, status=201)

    async def campaigns(self, request: Request) -> Response:
        found = await self._ctx.review.campaigns(since_ms=_since(request.query_params.get("since")))
        return json_response({"campaigns": found, "count": len(found)})

    async def decisions(self, request: Request) -> Response:
        query = request.query_params
        client = query.get("client")
        events = await self._ctx.review.decisions(
            client=_client_id(client) if client else None,
            count=_count(query.get("count"), "count", default=100, high=2_000),
        )
        return json_response({"decisions": events, "count": len(events)})

    async def audit(self, request: Request) -> Response:
        query = request.query_params
        client = query.get("client")
        entries = await read_audit(
            self._ctx.redis,
            self._ctx.keys,
            client=_client_id(client) if client else None,
            count=_count(query.get("count"), "count", default=200, high=1_000),
            since_ms=_since(query.get("since")),
        )
        return json_response({"entries": entries, "count": len(entries)})


def _client_id(text: str) -> str:
    if not valid_client_id(text):
        raise ApiError(
            400, "invalid_client", "A client id is 64 lower-case hex digits or 'anonymous'."
        )
    return text


def _flag(text: str | None) -> bool:
    if text is None or text.lower() in ("", "0", "false", "no"):
        return False
    if text.lower() in ("1", "true", "yes"):
        return True
    raise ApiError(400, "invalid_parameter", "flagged must be true or false.")


def _since(text: str | None) -> int | None:
    try:
        return parse_since(text, time.time() * 1000)
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", f"since: {exc}") from None


def _count(text: str | None, name: str, *, default: int, high: int) -> int:
    if text is None or text == "":
        return default
    if _COUNT.fullmatch(text) is None or not 1 <= int(text) <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer from 1 to {high}.")
    return int(text)


async def _json_body(request: Request) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"The body is over {MAX_BODY_BYTES} bytes.")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "The body is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    unknown = sorted(str(k)[:40] for k in doc if k not in _BODY_FIELDS)
    if unknown:
        raise ApiError(400, "invalid_json", f"Unknown fields: {', '.join(unknown)}.")
    return doc


def _action(doc: dict[str, Any]) -> tuple[Action, str]:
    """The action and actor a request body asks for (raises :class:`ApiError`)."""
    for name in ("action", "reason"):
        if not isinstance(doc.get(name), str):
            raise ApiError(400, "invalid_action", f"{name} is required and must be a string.")
    for name in ("level", "label", "actor"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise ApiError(400, "invalid_action", f"{name} must be a string or null.")
    action = Action(
        kind=doc["action"],
        reason=doc["reason"],
        level=doc.get("level") or None,
        label=doc.get("label") or None,
        ttl_s=_ttl(doc.get("ttl")),
    )
    try:
        return action.validated(), doc.get("actor") or ""
    except ActionError as exc:
        raise ApiError(400, "invalid_action", str(exc)) from None


def _ttl(value: Any) -> float | None:
    """A TTL as sent: a duration string, a number of seconds, or null (no expiry)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ApiError(400, "invalid_action", f"ttl: {exc}") from None
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= MAX_DURATION_S
    ):
        return float(value)
    raise ApiError(400, "invalid_action", "ttl must be a duration like 24h, or null.")
