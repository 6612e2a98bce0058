"""A scripted OpenAI-shaped HTTP server for failure tests (slow, erroring, long streams).

Where a test needs real model output it uses the toy upstream (``sim.toy_upstream``); this
one answers fixed shapes so a test controls timing and status exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def _chat(content: str, completion_tokens: int) -> dict[str, object]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": completion_tokens,
            "total_tokens": 7 + completion_tokens,
        },
    }


def create_scripted_upstream() -> Starlette:
    """Behaviour is chosen by the request's ``model``: ``slow:<s>``, ``status:<code>``,
    ``stream:<n>`` (n one-token chunks, ignoring max_tokens), ``echo-headers``; else a
    fixed answer. Every request seen is appended to ``app.state.seen``."""

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        request.app.state.seen.append({"headers": dict(request.headers), "body": body})
        model = str(body.get("model", ""))
        if model.startswith("slow:"):
            await asyncio.sleep(float(model.split(":")[1]))
        if model.startswith("status:"):
            code = int(model.split(":")[1])
            return JSONResponse(
                {"error": {"message": "scripted", "type": "x", "code": "scripted"}},
                status_code=code,
            )
        if model == "echo-headers":
            return JSONResponse(_chat(orjson.dumps(dict(request.headers)).decode(), 1))
        if model.startswith("stream:"):
            n = int(model.split(":")[1])

            async def events() -> AsyncIterator[bytes]:
                for i in range(n):
                    chunk = {
                        "id": "c",
                        "object": "chat.completion.chunk",
                        "model": model,
                        "choices": [
                            {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                        ],
                    }
                    yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                    await asyncio.sleep(0)
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(_chat("Scripted answer.", 3), headers={"x-upstream": "scripted"})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", chat, methods=["POST"]),
            Route("/v1/embeddings", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/", models),
        ]
    )
    app.state.seen = []
    return app
