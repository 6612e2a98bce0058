"""Stage: size cap and JSON parsing of the request body."""

from __future__ import annotations

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.errors import error_response
from gateway.exchange import Exchange
from gateway.params import request_params


class BodyTooLarge(Exception):
    pass


async def read_capped(request: Request, cap: int) -> bytes:
    """The request body, refusing to read more than ``cap`` bytes (:class:`BodyTooLarge`)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge
        parts.append(chunk)
    return b"".join(parts)


class ParseBody:
    """Reads the body under the policy's cap (413), and refuses anything but a JSON object
    (400). Runs after identification, so even refused requests are logged to their client."""

    name = "parse"

    async def on_request(self, ex: Exchange) -> Response | None:
        if ex.method == "GET":
            return None
        cap = ex.policy.requests.max_body_bytes
        try:
            if ex.receive_body is not None:
                ex.raw_body = await ex.receive_body(cap)
            if len(ex.raw_body) > cap:
                raise BodyTooLarge
        except BodyTooLarge:
            ex.reasons.append("body_too_large")
            return error_response(
                413, f"Request body is larger than {cap} bytes.", code="request_too_large"
            )
        except ClientDisconnect:
            ex.reasons.append("client_disconnected")
            return Response(status_code=499)
        try:
            parsed = orjson.loads(ex.raw_body)
        except orjson.JSONDecodeError as exc:
            ex.reasons.append("malformed_json")
            return error_response(
                400, f"Request body is not valid JSON: {exc}", code="invalid_json"
            )
        if not isinstance(parsed, dict):
            ex.reasons.append("malformed_json")
            return error_response(400, "Request body must be a JSON object.", code="invalid_json")
        ex.body = parsed
        ex.params = request_params(parsed)  # before any stage changes the body
        ex.stream = parsed.get("stream") is True
        return None
