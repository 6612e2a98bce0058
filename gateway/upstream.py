"""The pooled upstream HTTP client (aiohttp: measured fastest as a proxy's client here)."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDictProxy

from gateway.policy import Upstream as UpstreamPolicy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "accept-encoding",
}
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _connection_listed(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("connection", "")
    return {h.strip().lower() for h in value.split(",") if h.strip()}


def request_headers(headers: Mapping[str, str], api_key: str | None) -> dict[str, str]:
    """Headers to send upstream: end-to-end ones only, the client's credentials replaced."""
    drop = _NOT_FORWARDED | _connection_listed(headers)
    out = {k: v for k, v in headers.items() if k not in drop}
    out["accept-encoding"] = "identity"
    if api_key:
        out["authorization"] = f"Bearer {api_key}"
    return out


def response_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """Upstream response headers worth passing back to the client."""
    drop = _NOT_RETURNED | _connection_listed({"connection": headers.get("connection", "")})
    return {k.lower(): v for k, v in headers.items() if k.lower() not in drop}


class UpstreamClient:
    def __init__(self, base_url: str, config: UpstreamPolicy, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._config = config
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._config.max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self._config.connect_timeout_s,
                sock_read=self._config.read_timeout_s,
            ),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> aiohttp.ClientResponse:
        """Send a request and return once the response headers are in."""
        assert self._session is not None, "UpstreamClient.start() was not called"
        try:
            return await self._session.request(
                method,
                self.base_url + path,
                headers=request_headers(headers, self._api_key),
                data=body,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(
                504, "upstream_timeout", "The model server did not answer in time."
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                502,
                "upstream_unavailable",
                f"The model server could not be reached ({type(exc).__name__}).",
            ) from None

    async def reachable(self, timeout_s: float = 2.0) -> bool:
        """Whether the upstream answers HTTP at all (any status counts)."""
        assert self._session is not None
        try:
            async with self._session.get(
                self.base_url + "/", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                await resp.read()
                return True
        except (TimeoutError, aiohttp.ClientError):
            return False
