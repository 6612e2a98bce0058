from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.sse import iter_events, parse_event


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _collect(*parts: bytes, cap: int = 1 << 20) -> list[bytes]:
    return [e.raw async for e in iter_events(_chunks(*parts), cap)]


async def test_events_split_across_chunks() -> None:
    raw = await _collect(b'data: {"a"', b": 1}\n", b"\ndata: [DONE]\n\n")
    assert raw == [b'data: {"a": 1}\n\n', b"data: [DONE]\n\n"]


async def test_crlf_and_trailing_partial() -> None:
    raw = await _collect(b"data: 1\r\n\r\ndata: 2")
    assert raw == [b"data: 1\n\n", b"data: 2"]


async def test_unbounded_event_is_flushed() -> None:
    raw = await _collect(b"x" * 100, b"y" * 100, cap=150)
    assert b"".join(raw) == b"x" * 100 + b"y" * 100


def test_parse_event() -> None:
    assert parse_event(b"data: [DONE]\n\n").done
    assert parse_event(b'data: {"k": 2}\n\n').data == {"k": 2}
    assert parse_event(b"data: [1]\n\n").data is None
    assert parse_event(b": comment\n\n").data is None
    assert parse_event(b"data: {bad\n\n").data is None
