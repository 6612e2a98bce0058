"""The request path as an explicit, ordered chain of small stages.

A request stage may change the :class:`Exchange` and may answer early by returning a
response; the first one that answers ends the chain. Response stages see what comes back
from the upstream: whole JSON bodies, or one server-sent event at a time when streaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from starlette.responses import Response

from gateway.exchange import Exchange


class RequestStage(Protocol):
    name: str

    async def on_request(self, ex: Exchange) -> Response | None:
        """Change ``ex`` and return None to go on, or return the response to answer with."""
        ...


class ResponseStage(Protocol):
    name: str

    def on_json(self, ex: Exchange, body: dict[str, Any]) -> bool:
        """Inspect or change a whole JSON response in place; True if it was changed."""
        ...

    def on_event(self, ex: Exchange, event: dict[str, Any]) -> bool:
        """Inspect or change one streamed event in place; True if it was changed.

        Setting ``ex.stream_cut`` ends the stream cleanly after this event.
        """
        ...


class Pipeline:
    """The ordered stages of one gateway; built once by the composition root."""

    def __init__(
        self, request_stages: Sequence[RequestStage], response_stages: Sequence[ResponseStage]
    ) -> None:
        self.request_stages = tuple(request_stages)
        self.response_stages = tuple(response_stages)

    async def run_request(self, ex: Exchange) -> Response | None:
        for stage in self.request_stages:
            answer = await stage.on_request(ex)
            if answer is not None:
                return answer
        return None

    def run_json(self, ex: Exchange, body: dict[str, Any]) -> bool:
        changed = False
        for stage in self.response_stages:
            changed = stage.on_json(ex, body) or changed
        return changed

    def run_event(self, ex: Exchange, event: dict[str, Any]) -> bool:
        changed = False
        for stage in self.response_stages:
            changed = stage.on_event(ex, event) or changed
            if ex.stream_cut:
                break
        return changed
