"""Where the admin surface is mounted: the API, the dashboard, and a 404 for
every other ``/admin`` path (those are never proxied to the upstream)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.admin.api import ALL_METHODS, api_routes, error_response
from gateway.admin.context import AdminContext
from gateway.admin.dashboard import routes as dashboard_routes


def admin_routes(ctx: AdminContext) -> list[BaseRoute]:
    """The admin API's routes, then the dashboard's; none at all when no admin token is
    configured."""
    if not ctx.token:
        return []
    return [*api_routes(ctx), *dashboard_routes(ctx)]


def admin_not_found_routes() -> list[BaseRoute]:
    """``/admin`` and ``/admin/*`` answered 404: mount after :func:`admin_routes` and before
    the proxy's catch-all, whether or not admin is enabled."""
    return [
        Route("/admin", _not_found, methods=ALL_METHODS),
        Route("/admin/{path:path}", _not_found, methods=ALL_METHODS),
    ]


async def _not_found(request: Request) -> Response:
    return error_response(404, "not_found", "Not found.")
