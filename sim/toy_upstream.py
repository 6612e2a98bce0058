"""The toy upstream: an OpenAI-compatible server backed by the project's own small models.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/embeddings`` (backed by ``ToyLM``) and ``POST /v1/classify`` (``ToyClassifier``).
The model ``toy-lm-think`` answers ``<think>reasoning</think>answer`` and also returns the
reasoning as ``reasoning_content``. Errors are OpenAI-style JSON; bad bodies get 400.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sim.toy_choices import (
    Choice,
    Segment,
    chat_choice,
    chat_context,
    chat_logprob,
    completion_choice,
    legacy_logprobs,
)
from sim.toy_classifier import ToyClassifier, train_toy_classifier
from sim.toy_lm import ToyLM, load_toy_lm
from sim.toy_requests import (
    BadRequest,
    ChatRequest,
    CompletionRequest,
    parse_chat,
    parse_classify,
    parse_completion,
    parse_embedding,
    parse_json_object,
)

LM_MODEL = "toy-lm"
THINK_MODEL = "toy-lm-think"
DIGITS_MODEL = "toy-digits"
Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, kind: str, code: str, param: str | None = None) -> Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _model_not_found(model: str) -> Response:
    message = f"The model '{model}' does not exist"
    return _error(404, message, "invalid_request_error", "model_not_found", "model")


def _sse(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class _ToyUpstream:
    """Route handlers over one LM and one classifier."""

    def __init__(
        self, lm: ToyLM, classifier: ToyClassifier, latency_s: float, token_delay_s: float
    ) -> None:
        self.lm, self.classifier = lm, classifier
        self.latency_s, self.token_delay_s = latency_s, token_delay_s

    def endpoint(self, parse_and_answer: Callable[[Request], Awaitable[Response]]) -> Handler:
        """Adds the artificial latency and turns ``BadRequest`` into a 400."""

        async def handle(request: Request) -> Response:
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            try:
                return await parse_and_answer(request)
            except BadRequest as exc:
                kind = "invalid_request_error"
                return _error(400, exc.message, kind, "invalid_request", exc.param)

        return handle

    async def models(self, request: Request) -> Response:
        created = int(time.time())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "antidistill-sim"}
            for name in (LM_MODEL, THINK_MODEL, DIGITS_MODEL)
        ]
        return JSONResponse({"object": "list", "data": data})

    # -- chat ---------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        req = parse_chat(parse_json_object(await request.body()), self.lm.vocab_size)
        model = req.sampling.model
        if model not in (LM_MODEL, THINK_MODEL):
            return _model_not_found(model)
        context = chat_context(self.lm, req.messages)
        choices = await run_in_threadpool(self._chat_choices, req, context, model == THINK_MODEL)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        usage = _usage(len(context), sum(c.completion_tokens for c in choices))
        if req.sampling.stream:
            return self._stream(self._chat_chunks(req, choices, meta, usage))
        body = [
            {
                "index": i,
                "message": self._chat_message(choice),
                "logprobs": self._chat_logprobs(req, choice.tokens),
                "finish_reason": choice.finish_reason,
            }
            for i, choice in enumerate(choices)
        ]
        return JSONResponse({**meta, "object": "chat.completion", "choices": body, "usage": usage})

    def _chat_choices(self, req: ChatRequest, context: list[int], think: bool) -> list[Choice]:
        return [
            chat_choice(self.lm, context, req.sampling, i, think) for i in range(req.sampling.n)
        ]

    @staticmethod
    def _chat_message(choice: Choice) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": choice.text}
        if choice.reasoning is not None:
            message["reasoning_content"] = choice.reasoning
        return message

    @staticmethod
    def _chat_logprobs(req: ChatRequest, segments: list[Segment]) -> dict[str, Any] | None:
        if req.sampling.top_logprobs is None:
            return None
        return {"content": [chat_logprob(s) for s in segments]}

    async def _chat_chunks(
        self, req: ChatRequest, choices: list[Choice], meta: dict[str, Any], usage: dict[str, int]
    ) -> AsyncIterator[dict[str, Any]]:
        base = {**meta, "object": "chat.completion.chunk"}
        if req.sampling.include_usage:
            base["usage"] = None

        def chunk(index: int, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
            entry = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            return {**base, "choices": [{**entry, **extra}]}

        for i, choice in enumerate(choices):
            yield chunk(i, {"role": "assistant", "content": ""})
            for segment in choice.segments:
                delta: dict[str, Any] = {"content": segment.text}
                if segment.reasoning:
                    delta["reasoning_content"] = segment.text
                tokens = [segment] if segment.token is not None else []
                yield chunk(i, delta, logprobs=self._chat_logprobs(req, tokens))
                await self._token_delay()
            yield chunk(i, {}, finish_reason=choice.finish_reason)
        if req.sampling.include_usage:
            yield {**base, "choices": [], "usage": usage}

    # -- legacy completions -------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        req = parse_completion(parse_json_object(await request.body()), self.lm.vocab_size)
        if req.sampling.model != LM_MODEL:
            return _model_not_found(req.sampling.model)
        prompts = [self.lm.tokenize(p) for p in req.prompts]
        choices = await run_in_threadpool(self._completion_choices, req, prompts)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": LM_MODEL}
        usage = _usage(sum(map(len, prompts)), sum(c.completion_tokens for c in choices))
        if req.sampling.stream:
            return self._stream(self._completion_chunks(req, choices, meta, usage))
        body = [
            {
                "index": i,
                "text": choice.text,
                "logprobs": None
                if req.sampling.top_logprobs is None
                else legacy_logprobs(choice.segments),
                "finish_reason": choice.finish_reason,
            }
            for i, choice in enumerate(choices)
        ]
        return JSONResponse({**meta, "object": "text_completion", "choices": body, "usage": usage})

    def _completion_choices(self, req: CompletionRequest, prompts: list[list[int]]) -> list[Choice]:
        n = req.sampling.n
        return [
            completion_choice(self.lm, prompt, req.sampling, p * n + j)
            for p, prompt in enumerate(prompts)
            for j in range(n)
        ]

    async def _completion_chunks(
        self,
        req: CompletionRequest,
        choices: list[Choice],
        meta: dict[str, Any],
        usage: dict[str, int],
    ) -> AsyncIterator[dict[str, Any]]:
        base = {**meta, "object": "text_completion"}
        for i, choice in enumerate(choices):
            offset = 0
            for segment in choice.segments:
                logprobs = None
                if req.sampling.top_logprobs is not None:
                    logprobs = legacy_logprobs([segment], offset)
                entry = {"index": i, "text": segment.text, "logprobs": logprobs}
                yield {**base, "choices": [{**entry, "finish_reason": None}]}
                offset += len(segment.text)
                await self._token_delay()
            entry = {"index": i, "text": "", "logprobs": None}
            yield {**base, "choices": [{**entry, "finish_reason": choice.finish_reason}]}
        if req.sampling.include_usage:
            yield {**base, "choices": [], "usage": usage}

    # -- embeddings and classification --------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        req = parse_embedding(parse_json_object(await request.body()))
        if req.model != LM_MODEL:
            return _model_not_found(req.model)
        data: list[dict[str, Any]] = []
        for i, text in enumerate(req.inputs):
            vector = self.lm.embed(text)
            encoded: Any = vector.tolist()
            if req.base64:
                encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(len(self.lm.tokenize(text)) for text in req.inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": LM_MODEL, "usage": usage})

    async def classify(self, request: Request) -> Response:
        req = parse_classify(parse_json_object(await request.body()))
        if req.model != DIGITS_MODEL:
            return _model_not_found(req.model)
        probabilities = await run_in_threadpool(self.classifier.predict_proba, req.inputs)
        labels = [int(np.argmax(row)) for row in probabilities]
        body = {"model": DIGITS_MODEL, "probabilities": probabilities, "labels": labels}
        return JSONResponse(body)

    # -- streaming ----------------------------------------------------------------------

    async def _token_delay(self) -> None:
        if self.token_delay_s > 0:
            await asyncio.sleep(self.token_delay_s)

    @staticmethod
    def _stream(chunks: AsyncIterator[dict[str, Any]]) -> Response:
        async def body() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield _sse(chunk)
            yield b"data: [DONE]\n\n"

        headers = {"cache-control": "no-cache"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 / 405 answers, in the OpenAI error shape."""
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail, "invalid_request_error", str(exc.status_code))


def create_app(
    *,
    lm: ToyLM | None = None,
    classifier: ToyClassifier | None = None,
    latency_s: float = 0.0,
    token_delay_s: float = 0.0,
) -> Starlette:
    """The toy upstream app; loads the shipped LM and trains the classifier if not given.

    ``latency_s`` delays every request before it is answered; ``token_delay_s`` delays
    each streamed token chunk.
    """
    toy = _ToyUpstream(
        lm if lm is not None else load_toy_lm(),
        classifier if classifier is not None else train_toy_classifier(),
        latency_s,
        token_delay_s,
    )
    routes = [
        Route("/v1/models", toy.endpoint(toy.models), methods=["GET"]),
        Route("/v1/chat/completions", toy.endpoint(toy.chat), methods=["POST"]),
        Route("/v1/completions", toy.endpoint(toy.completions), methods=["POST"]),
        Route("/v1/embeddings", toy.endpoint(toy.embeddings), methods=["POST"]),
        Route("/v1/classify", toy.endpoint(toy.classify), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


def serve(host: str, port: int, *, latency_s: float = 0.0, token_delay_s: float = 0.0) -> None:
    """Runs the toy upstream with uvicorn until interrupted."""
    app = create_app(latency_s=latency_s, token_delay_s=token_delay_s)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the toy OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--token-delay-s", type=float, default=0.0)
    args = parser.parse_args(argv)
    serve(args.host, args.port, latency_s=args.latency_s, token_delay_s=args.token_delay_s)


if __name__ == "__main__":
    main()
