"""Turns the toy LM's sampled tokens into OpenAI choices: text pieces, stop strings,
``<think>`` reasoning, and logprobs in the chat and the legacy completions formats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sim.toy_lm import GeneratedToken, ToyLM
from sim.toy_requests import Sampling

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>\n\n"
_SEED_MASK = 2**64 - 1


@dataclass(frozen=True)
class Segment:
    """A piece of output text; ``token`` is None for markup or a piece cut by a stop."""

    text: str
    token: GeneratedToken | None = None
    top: tuple[tuple[str, float], ...] = ()
    reasoning: bool = False


@dataclass(frozen=True)
class Choice:
    segments: tuple[Segment, ...]
    finish_reason: str  # "stop" or "length"
    completion_tokens: int

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def reasoning(self) -> str | None:
        parts = [s.text for s in self.segments if s.reasoning]
        return "".join(parts) if parts else None

    @property
    def tokens(self) -> list[Segment]:
        return [s for s in self.segments if s.token is not None]


def chat_context(lm: ToyLM, messages: Sequence[str]) -> list[int]:
    """Each message's tokens followed by ``<eos>``, as the model was trained on turns."""
    ids: list[int] = []
    for text in messages:
        ids += [*lm.tokenize(text), lm.eos_id]
    return ids


def _seed(sampling: Sampling, index: int, salt: int = 0) -> int | None:
    return None if sampling.seed is None else (sampling.seed + index + salt) & _SEED_MASK


def _generate(
    lm: ToyLM, context: list[int], sampling: Sampling, budget: int, seed: int | None
) -> list[GeneratedToken]:
    return lm.generate_ids(
        context,
        max_tokens=budget,
        temperature=sampling.temperature,
        seed=seed,
        logit_bias=sampling.logit_bias,
        top_logprobs=sampling.top_logprobs or 0,
    )


def _segments(
    lm: ToyLM, tokens: Sequence[GeneratedToken], previous: int | None, reasoning: bool = False
) -> list[Segment]:
    out: list[Segment] = []
    for token in tokens:
        top = tuple(
            (lm.piece(t.token_id, previous_id=previous), t.logprob) for t in token.top_logprobs
        )
        text = lm.piece(token.token_id, previous_id=previous)
        out.append(Segment(text=text, token=token, top=top, reasoning=reasoning))
        previous = token.token_id
    return out


def _apply_stop(
    segments: list[Segment], stops: Sequence[str], finish: str
) -> tuple[tuple[Segment, ...], str, int]:
    """Cuts the output before the stop string that completes first."""
    n_tokens = sum(1 for s in segments if s.token is not None)
    text = "".join(s.text for s in segments)
    found = [(i + len(stop), i) for stop in stops if (i := text.find(stop)) >= 0]
    if not found:
        return tuple(segments), finish, n_tokens
    end, cut = min(found)
    kept: list[Segment] = []
    consumed, start = 0, 0
    for segment in segments:
        if start < end and segment.token is not None:
            consumed += 1  # tokens generated until the stop string was complete
        if start + len(segment.text) <= cut:
            kept.append(segment)
        elif start < cut:
            kept.append(Segment(text=segment.text[: cut - start], reasoning=segment.reasoning))
        start += len(segment.text)
    return tuple(kept), "stop", consumed


def chat_choice(
    lm: ToyLM, context: list[int], sampling: Sampling, index: int, think: bool
) -> Choice:
    """One chat reply; with ``think`` it is ``<think>reasoning</think>answer``."""
    budget = sampling.max_tokens
    segments: list[Segment] = []
    if think:
        reasoning = _generate(lm, context, sampling, max(1, budget // 2), _seed(sampling, index))
        segments += [Segment(THINK_OPEN), *_segments(lm, reasoning, None, reasoning=True)]
        segments.append(Segment(THINK_CLOSE))
        context = [*context, *(t.token_id for t in reasoning), lm.eos_id]
        budget -= len(reasoning)
    answer = _generate(lm, context, sampling, budget, _seed(sampling, index, salt=7919))
    segments += _segments(lm, answer, None)
    finish = "length" if len(answer) >= budget else "stop"
    return Choice(*_apply_stop(segments, sampling.stop, finish))


def completion_choice(lm: ToyLM, prompt: list[int], sampling: Sampling, index: int) -> Choice:
    """One continuation of ``prompt`` (token ids), spaced as a continuation of its text."""
    tokens = _generate(lm, prompt, sampling, sampling.max_tokens, _seed(sampling, index))
    segments = _segments(lm, tokens, prompt[-1] if prompt else None)
    finish = "length" if len(tokens) >= sampling.max_tokens else "stop"
    return Choice(*_apply_stop(segments, sampling.stop, finish))


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprob(segment: Segment) -> dict[str, Any]:
    """One entry of ``choices[i].logprobs.content`` (the segment must carry a token)."""
    assert segment.token is not None
    return {
        "token": segment.text,
        "logprob": segment.token.logprob,
        "bytes": _bytes(segment.text),
        "top_logprobs": [
            {"token": piece, "logprob": lp, "bytes": _bytes(piece)} for piece, lp in segment.top
        ],
    }


def legacy_logprobs(segments: Sequence[Segment], offset: int = 0) -> dict[str, Any]:
    """Legacy completions logprobs; ``text_offset`` counts from ``offset`` in the output."""
    result: dict[str, list[Any]] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    for segment in segments:
        if segment.token is not None:
            result["tokens"].append(segment.text)
            result["token_logprobs"].append(segment.token.logprob)
            result["top_logprobs"].append(dict(segment.top))
            result["text_offset"].append(offset)
        offset += len(segment.text)
    return result
