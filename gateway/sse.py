"""Server-sent events, split without buffering more than one event."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(slots=True)
class SseEvent:
    """One event: its bytes as received and, when its data is a JSON object, the object."""

    raw: bytes
    data: dict[str, Any] | None
    done: bool = False

    def encode(self) -> bytes:
        """The event as it should be sent on: re-serialised from ``data``."""
        assert self.data is not None
        return b"data: " + orjson.dumps(self.data) + b"\n\n"


def parse_event(raw: bytes) -> SseEvent:
    payload: list[bytes] = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            payload.append(line[5:].removeprefix(b" "))
    text = b"\n".join(payload)
    if text.strip() == b"[DONE]":
        return SseEvent(raw, None, done=True)
    if not text:
        return SseEvent(raw, None)
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return SseEvent(raw, None)
    return SseEvent(raw, data if isinstance(data, dict) else None)


async def iter_events(
    chunks: AsyncIterable[bytes], max_event_bytes: int
) -> AsyncIterator[SseEvent]:
    """Events from a byte stream, split at blank lines (``\\n\\n`` or ``\\r\\n\\r\\n``).

    A run of bytes longer than ``max_event_bytes`` without a blank line is passed on as it
    is, so a misbehaving upstream cannot make the gateway buffer without bound.
    """
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if b"\r\n" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            raw, buffer = buffer[: end + 2], buffer[end + 2 :]
            yield parse_event(raw)
        if len(buffer) > max_event_bytes:
            yield SseEvent(buffer, None)
            buffer = b""
    if buffer.strip():
        yield parse_event(buffer)
