"""OpenAI-style error responses."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response


def error_body(message: str, type_: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code}})


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON error in the shape OpenAI clients parse: ``{"error": {message, type, code}}``."""
    return Response(
        error_body(message, type_, code),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )
