"""A fast OpenAI-shaped stub upstream for overhead benchmarks (fixed answers, no model).

python -m bench.stub_upstream --port 9100
"""

from __future__ import annotations

import argparse

from aiohttp import web

CHAT = (
    b'{"id":"chatcmpl-stub","object":"chat.completion","created":0,"model":"stub",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}'
)
MODELS = b'{"object":"list","data":[{"id":"stub","object":"model","owned_by":"bench"}]}'


async def chat(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=CHAT, content_type="application/json")


async def models(request: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
