"""Stage: size cap and JSON parsing of the request body."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from gateway.errors import error_response
from gateway.exchange import Exchange


class ParseBody:
    """Refuses bodies over the policy's cap (413) and anything but a JSON object (400)."""

    name = "parse"

    async def on_request(self, ex: Exchange) -> Response | None:
        if ex.method == "GET":
            return None
        cap = ex.policy.requests.max_body_bytes
        if len(ex.raw_body) > cap:
            ex.reasons.append("body_too_large")
            return error_response(
                413, f"Request body is larger than {cap} bytes.", code="request_too_large"
            )
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
        ex.stream = parsed.get("stream") is True
        return None
