"""Stage: who is asking (API key → client id, trusted edge metadata)."""

from __future__ import annotations

from starlette.responses import Response

from gateway.errors import error_response
from gateway.exchange import Exchange
from gateway.identity import Rejection, identify


class Identify:
    name = "identify"

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    async def on_request(self, ex: Exchange) -> Response | None:
        result = identify(ex.headers, ex.policy, self._secret)
        if isinstance(result, Rejection):
            ex.reasons.append(result.code)
            return error_response(
                401,
                result.message,
                code=result.code,
                headers={"www-authenticate": 'Bearer realm="antidistill"'},
            )
        ex.client = result
        return None
