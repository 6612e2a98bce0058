"""A tiny deterministic reasoning teacher, and a student that learns from its answers.

The teacher (an OpenAI-compatible chat upstream, model ``arith-think``) adds two numbers
of up to ``digits`` digits the way a reasoning model answers: column by column in a
``<think>`` block (also returned as ``reasoning_content``), then the sum::

    <think>5+6+0=11
    2+1+1=04
    7+8+0=15
    4+3+1=08
    </think>8541

Streamed, the reasoning arrives step by step and the ``<think>`` tag itself is split
across two chunks.

The student (:class:`LookupStudent`) is a generic rule learner that knows nothing about
arithmetic: it reads every digit of the teacher's reasoning (from ``reasoning_content``,
else from a ``<think>`` block) followed by the answer's digits (least-significant first,
zero-padded: the order most favourable to it), and for each position of that digit
sequence memorises a lookup table over the few earlier digits that predict it best. It
answers by generating the sequence position by position. With the reasoning visible every
position is a function of at most three earlier digits (a copy, or one column's sum);
without it, an answer digit depends on all the lower digits through the carries, which no
small table captures.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "arith-think"
_QUESTION = re.compile(r"(\d+)\s*\+\s*(\d+)")
I64 = npt.NDArray[np.int64]
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def question(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def reasoning_steps(a: int, b: int, digits: int) -> list[str]:
    """One line per column, units first: ``digit+digit+carry=two-digit sum``."""
    steps, carry = [], 0
    for i in range(digits):
        x, y = a // 10**i % 10, b // 10**i % 10
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total:02d}\n")
        carry = total // 10
    return steps


def create_teacher(digits: int) -> Starlette:
    """The teacher upstream: ``POST /v1/chat/completions``, streamed or not."""

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        text = str(body["messages"][-1]["content"])
        match = _QUESTION.search(text)
        if match is None:
            error = {"message": "ask 'What is A + B?'", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=400)
        a, b = int(match.group(1)), int(match.group(2))
        steps = reasoning_steps(a, b, digits)
        reasoning, answer = "".join(steps), str(a + b)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": MODEL}
        completion = len(reasoning + answer) // 4 + 1
        usage = {
            "prompt_tokens": len(text) // 4 + 1,
            "completion_tokens": completion,
            "total_tokens": len(text) // 4 + 1 + completion,
        }
        if body.get("stream"):
            return StreamingResponse(_chunks(meta, steps, answer), media_type="text/event-stream")
        message = {
            "role": "assistant",
            "content": f"<think>{reasoning}</think>{answer}",
            "reasoning_content": reasoning,
        }
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return JSONResponse(
            {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def _chunks(meta: dict[str, Any], steps: list[str], answer: str) -> AsyncIterator[bytes]:
    base = {**meta, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    yield chunk({"content": "<thi"})  # a tag split across chunks
    yield chunk({"content": "nk>"})
    for step in steps:
        yield chunk({"content": step, "reasoning_content": step})
    yield chunk({"content": "</think>"})
    yield chunk({"content": answer})
    yield chunk({}, finish="stop")
    yield b"data: [DONE]\n\n"


# -- the student ---------------------------------------------------------------------------


def digits_of(number: int, width: int) -> list[int]:
    """Least-significant first, zero-padded to ``width``."""
    return [number // 10**i % 10 for i in range(width)]


def parse_reply(message: dict[str, Any]) -> tuple[str, str]:
    """(reasoning, answer text) of a chat message as a client sees it."""
    content = str(message.get("content") or "")
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    think = _THINK.search(content)
    if think is not None:
        reasoning = reasoning or think.group(1)
        content = content[think.end() :]
    return str(reasoning or ""), content


def trace(reasoning: str, answer: str, digits: int) -> list[int] | None:
    """Every digit of the reasoning, then the answer's digits (least-significant first)."""
    numbers = re.findall(r"\d+", answer)
    if not numbers:
        return None
    steps = [int(c) for c in reasoning if c.isdigit()]
    return steps + digits_of(int(numbers[-1]), digits + 1)


def _keys(x: I64, subset: tuple[int, ...]) -> I64:
    keys = np.zeros(len(x), dtype=np.int64)
    for f in subset:
        keys = keys * 10 + x[:, f]
    return keys


def _leave_one_out_hits(keys: I64, y: I64, size: int) -> int:
    """Samples a majority-vote lookup over ``keys`` gets right when each is left out."""
    counts = np.bincount(keys * 10 + y, minlength=size * 10).reshape(size, 10)
    top = np.partition(counts, -2, axis=1)
    first, second = top[:, -1], top[:, -2]
    return int((first * ((first - 1) > second)).sum())


class LookupStudent:
    """For each position of the digit trace, the lookup table over the (at most ``arity``)
    earlier digits — of the question or of the trace so far — that predicts it best when
    each training example is left out. Generic: it is never told which digits matter."""

    def __init__(self, digits: int, arity: int = 3) -> None:
        self.digits, self.arity = digits, arity

    def _question(self, problems: Sequence[tuple[int, int]]) -> I64:
        rows = [digits_of(a, self.digits) + digits_of(b, self.digits) for a, b in problems]
        return np.asarray(rows, dtype=np.int64).reshape(len(problems), 2 * self.digits)

    def fit(
        self, problems: Sequence[tuple[int, int]], traces: Sequence[list[int] | None]
    ) -> LookupStudent:
        lengths = Counter(len(t) for t in traces if t is not None)
        self.length_ = lengths.most_common(1)[0][0]
        keep = [i for i, t in enumerate(traces) if t is not None and len(t) == self.length_]
        question = self._question([problems[i] for i in keep])
        answers = np.asarray([traces[i] for i in keep], dtype=np.int64)
        data = np.concatenate([question, answers], axis=1)
        width, n = question.shape[1], len(data)
        self.rules_: list[tuple[tuple[int, ...], I64]] = []
        for pos in range(self.length_):
            x, y = data[:, : width + pos], data[:, width + pos]
            best: tuple[int, tuple[int, ...]] = (-1, ())
            for arity in range(1, self.arity + 1):
                for subset in itertools.combinations(range(x.shape[1]), arity):
                    hits = _leave_one_out_hits(_keys(x, subset), y, 10**arity)
                    if hits > best[0]:
                        best = (hits, subset)
                if best[0] >= 0.99 * n:
                    break
            subset = best[1]
            size = 10 ** len(subset)
            counts = np.bincount(_keys(x, subset) * 10 + y, minlength=size * 10)
            counts = counts.reshape(size, 10)
            fallback = int(np.bincount(y, minlength=10).argmax())
            table = np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), fallback)
            self.rules_.append((subset, table.astype(np.int64)))
        return self

    def predict(self, problems: Sequence[tuple[int, int]]) -> list[int]:
        x = self._question(problems)
        for subset, table in self.rules_:
            x = np.concatenate([x, table[_keys(x, subset)][:, None]], axis=1)
        answer = x[:, -(self.digits + 1) :]
        return [int(sum(int(d) * 10**i for i, d in enumerate(row))) for row in answer]
