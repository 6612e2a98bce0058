"""The operator dashboard: server-rendered pages under ``/admin/``, no JavaScript.

==========================================  ===============================================
``GET  /admin``, ``/admin/``                the login form; a logged-in viewer is sent on
                                            to ``/admin/clients``
``POST /admin/login``                       form field ``token``: sets the session cookie
``POST /admin/logout``                      clears it
``GET  /admin/clients``                     flagged clients (``?all=1``: every client)
``GET  /admin/clients/{id}``                one client: score, evidence, parameters,
                                            samples, links, audit, decisions, actions
``POST /admin/clients/{id}/actions``        an action form → :func:`actions.perform` →
                                            303 back to the client's page
``GET  /admin/campaigns``                   linked campaigns
==========================================  ===============================================

A page needs the session cookie of :mod:`gateway.admin.auth` or an ``Authorization:
Bearer`` header with the admin token; without either it redirects to the login form. Forms
that change state carry the session's CSRF token (checked for cookie sessions; a bearer
header cannot be sent cross-site). Every response carries a strict Content-Security-Policy
(no scripts at all), ``nosniff``, ``no-referrer`` and ``no-store``. Bad form input is a 400
page saying why; Redis unreachable is a 503 page; never a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.admin.actions import KINDS, Action, ActionError, perform
from gateway.admin.api import ALL_METHODS, parse_duration, valid_client_id
from gateway.admin.auth import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_TTL_S,
    check_bearer,
    check_csrf,
    check_session,
    check_token,
    csrf_token,
    make_session,
)
from gateway.admin.context import AdminContext
from gateway.admin.plots import bar_chart, score_chart
from gateway.admin.templates import environment

log = logging.getLogger("antidistill.admin")

LOGIN = "/admin/"
HOME = "/admin/clients"
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 16
RECENT_DECISIONS = 25
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_DONE = {
    "set_level": "Level set.",
    "allowlist": "Client allowlisted.",
    "block": "Client blocked.",
    "reset": "Level reset.",
    "label": "Label saved.",
}


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking: by session cookie (``session`` set, forms need ``csrf``) or by
    bearer header (``session`` None: no CSRF token needed)."""

    session: str | None
    csrf: str


class Refused(Exception):
    """A request answered with an error page (status, heading, message for the operator)."""

    def __init__(self, status: int, heading: str, message: str, back: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.heading = heading
        self.message = message
        self.back = back  # a link back (built here, never taken from the request)


Handler = Callable[[Request, Viewer | None], Awaitable[Response]]


def routes(ctx: AdminContext) -> list[BaseRoute]:
    """The dashboard's routes, for :func:`gateway.admin.routes.admin_routes`."""
    return Dashboard(ctx, environment()).routes()


class Dashboard:
    def __init__(self, ctx: AdminContext, env: Environment) -> None:
        self._ctx = ctx
        self._env = env

    def routes(self) -> list[BaseRoute]:
        table: list[tuple[str, str, Handler, bool]] = [
            ("/admin", "GET", self.root, False),
            ("/admin/", "GET", self.index, False),
            ("/admin/login", "POST", self.login, False),
            ("/admin/logout", "POST", self.logout, False),
            ("/admin/clients", "GET", self.clients, True),
            ("/admin/clients/{client_id}", "GET", self.client, True),
            ("/admin/clients/{client_id}/actions", "POST", self.act, True),
            ("/admin/campaigns", "GET", self.campaigns, True),
        ]
        # Every method reaches the guard, which answers 405 itself: a mismatch must not fall
        # through to the /admin 404 or to the proxy.
        return [
            Route(path, self._guard(method, handler, login), methods=list(ALL_METHODS))
            for path, method, handler, login in table
        ]

    # -- pages ------------------------------------------------------------------------

    async def root(self, request: Request, viewer: Viewer | None) -> Response:
        return _redirect(LOGIN)

    async def index(self, request: Request, viewer: Viewer | None) -> Response:
        if viewer is not None:
            return _redirect(HOME)
        return self._page("login.html", None, error="")

    async def login(self, request: Request, viewer: Viewer | None) -> Response:
        form = await _form(request)
        if not check_token(form.get("token"), self._ctx.token):
            log.warning("admin login refused", extra={"client_ip": _peer(request)})
            return self._page("login.html", None, status=401, error="Wrong token.")
        response = _redirect(HOME)
        response.set_cookie(
            SESSION_COOKIE,
            make_session(self._ctx.token, time.time()),
            max_age=SESSION_TTL_S,
            path="/admin",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request, viewer: Viewer | None) -> Response:
        if viewer is not None:
            self._check_csrf(viewer, await _form(request))
        response = _redirect(LOGIN)
        response.delete_cookie(SESSION_COOKIE, path="/admin", httponly=True, samesite="strict")
        return response

    async def clients(self, request: Request, viewer: Viewer | None) -> Response:
        show_all = request.query_params.get("all", "").lower() in ("1", "true", "yes")
        found = await self._ctx.review.clients(flagged=not show_all)
        return self._page(
            "clients.html",
            viewer,
            nav="all" if show_all else "flagged",
            clients=found,
            show_all=show_all,
        )

    async def client(self, request: Request, viewer: Viewer | None) -> Response:
        client_id = _client_id(request)
        detail = await self._ctx.review.client(client_id)
        if detail is None:
            raise Refused(404, "Unknown client", f"The gateway has never seen {client_id}.")
        thresholds = self._ctx.policy().detector.thresholds.model_dump()
        decisions = sorted(detail.summary.decisions.items())
        return self._page(
            "client.html",
            viewer,
            detail=detail,
            notice=_DONE.get(request.query_params.get("done", ""), ""),
            score_svg=score_chart(detail.history, thresholds),
            evidence_svg=bar_chart(
                [(e.feature, e.contribution) for e in detail.evidence], value_format="{:+.3f}"
            ),
            decisions_svg=bar_chart([(k, float(v)) for k, v in decisions], value_format="{:,.0f}"),
            recent=list(reversed(detail.recent[-RECENT_DECISIONS:])),
            action_url=f"/admin/clients/{quote(client_id, safe='')}/actions",
        )

    async def act(self, request: Request, viewer: Viewer | None) -> Response:
        client_id = _client_id(request)
        form = await _form(request)
        assert viewer is not None  # the guard sent anyone else to the login page
        self._check_csrf(viewer, form)
        page = f"/admin/clients/{quote(client_id, safe='')}"
        action = _action(form, page)
        if not await self._ctx.review.known(client_id):
            raise Refused(404, "Unknown client", f"The gateway has never seen {client_id}.")
        try:
            entry = await perform(
                self._ctx.redis, self._ctx.keys, client_id, action, form.get("actor", "")
            )
        except ActionError as exc:
            raise Refused(400, "Action refused", str(exc), page) from None
        log.info(
            "admin action",
            extra={"actor": entry.actor, "action": entry.action, "client": client_id},
        )
        return _redirect(f"{page}?done={quote(entry.action, safe='')}")

    async def campaigns(self, request: Request, viewer: Viewer | None) -> Response:
        found = await self._ctx.review.campaigns()
        return self._page("campaigns.html", viewer, nav="campaigns", campaigns=found)

    # -- plumbing ---------------------------------------------------------------------

    def _guard(
        self, method: str, handler: Handler, needs_login: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the method check and the login, with errors as pages and the
        security headers on every response."""
        allowed = (method, "HEAD") if method == "GET" else (method,)

        async def endpoint(request: Request) -> Response:
            viewer = self._viewer(request)
            response: Response
            try:
                if request.method not in allowed:
                    raise Refused(405, "Method not allowed", f"This page accepts {method} only.")
                if needs_login and viewer is None:
                    response = _redirect(LOGIN)
                else:
                    response = await handler(request, viewer)
            except Refused as exc:
                response = self._page(
                    "error.html",
                    viewer,
                    status=exc.status,
                    heading=exc.heading,
                    message=exc.message,
                    back=exc.back or (HOME if viewer is not None else LOGIN),
                )
                if exc.status == 405:
                    response.headers["allow"] = ", ".join(allowed)
            except (RedisError, OSError) as exc:
                log.warning("dashboard: store unavailable (%s)", type(exc).__name__)
                response = self._page(
                    "error.html",
                    viewer,
                    status=503,
                    heading="Store unavailable",
                    message="Redis cannot be reached; try again in a moment.",
                    back=HOME if viewer is not None else LOGIN,
                )
            response.headers.update(SECURITY_HEADERS)
            return response

        return endpoint

    def _viewer(self, request: Request) -> Viewer | None:
        token = self._ctx.token
        if check_bearer(request.headers.get("authorization"), token):
            return Viewer(session=None, csrf="")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None and check_session(cookie, token, time.time()):
            return Viewer(session=cookie, csrf=csrf_token(token, cookie))
        return None

    def _check_csrf(self, viewer: Viewer, form: dict[str, str]) -> None:
        if viewer.session is None:
            return  # bearer header: not something a cross-site form can send
        if not check_csrf(form.get(CSRF_FIELD), self._ctx.token, viewer.session):
            raise Refused(
                403,
                "Form expired",
                "The form's security token does not match your session; "
                "reload the page and try again.",
            )

    def _page(
        self, template: str, viewer: Viewer | None, *, status: int = 200, **values: Any
    ) -> HTMLResponse:
        values.setdefault("nav", "")
        html = self._env.get_template(template).render(
            viewer=viewer, csrf=viewer.csrf if viewer else "", status=status, **values
        )
        return HTMLResponse(html, status_code=status)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _client_id(request: Request) -> str:
    client_id = str(request.path_params["client_id"])
    if not valid_client_id(client_id):
        raise Refused(
            404, "Unknown client", f"{client_id[:200]!r} is not a client id (64 hex digits)."
        )
    return client_id


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as one value per field (raises
    :class:`Refused` for another type, an oversized or undecodable body, repeated or too
    many fields)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Refused(400, "Bad form", "Expected a form (application/x-www-form-urlencoded).")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, "Form too large", f"The form is over {MAX_FORM_BYTES} bytes.")
    try:
        fields = parse_qs(
            body.decode("ascii"),
            keep_blank_values=True,
            max_num_fields=MAX_FORM_FIELDS,
            encoding="utf-8",
            errors="strict",
        )
    except ValueError:  # UnicodeDecodeError too
        raise Refused(400, "Bad form", "The form could not be decoded.") from None
    repeated = sorted(name[:40] for name, values in fields.items() if len(values) > 1)
    if repeated:
        raise Refused(400, "Bad form", f"Fields given more than once: {', '.join(repeated)}.")
    return {name: values[0] for name, values in fields.items()}


def _action(form: dict[str, str], back: str) -> Action:
    """The action an action form asks for (raises :class:`Refused` with the reason)."""
    kind = form.get("kind", "")
    if kind not in KINDS:
        raise Refused(400, "Action refused", f"Unknown action {kind[:40]!r}.", back)
    ttl_s: float | None = None
    if "ttl" in form:
        try:
            ttl_s = parse_duration(form["ttl"])
        except ValueError as exc:
            raise Refused(400, "Action refused", f"ttl: {exc}", back) from None
    action = Action(
        kind=kind,
        reason=form.get("reason", ""),
        level=form.get("level") or None,
        label=form.get("label") or None,
        ttl_s=ttl_s,
    )
    try:
        return action.validated()
    except ActionError as exc:
        raise Refused(400, "Action refused", str(exc), back) from None


def _peer(request: Request) -> str:
    return request.client.host if request.client else ""
