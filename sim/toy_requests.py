"""Validation of the toy upstream's OpenAI-style request bodies into frozen dataclasses.

Every problem raises ``BadRequest`` (answered as an OpenAI-style 400); unknown fields are
ignored, as vLLM does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_TOKENS_LIMIT = 2048
DEFAULT_MAX_TOKENS = 64
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_PROMPTS = 64
N_DIGIT_FEATURES = 64


class BadRequest(Exception):
    """The body is not a valid request; ``param`` names the offending field if known."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Sampling:
    """Generation parameters shared by chat and legacy completions."""

    model: str
    max_tokens: int
    temperature: float
    seed: int | None
    n: int
    top_logprobs: int | None  # None: no logprobs asked for
    logit_bias: dict[int, float]
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class ChatRequest:
    sampling: Sampling
    messages: tuple[str, ...]


@dataclass(frozen=True)
class CompletionRequest:
    sampling: Sampling
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    base64: bool


@dataclass(frozen=True)
class ClassifyRequest:
    model: str
    inputs: tuple[tuple[float, ...], ...]


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # incl. JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _int(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer", name)
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}", name)
    return value


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"'{name}' must be a number", name)
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}", name)
    return float(value)


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean", name)
    return value


def _model(body: dict[str, Any], default: str) -> str:
    value = body.get("model", default)
    if not isinstance(value, str):
        raise BadRequest("'model' must be a string", "model")
    return value


def _logit_bias(body: dict[str, Any], vocab_size: int) -> dict[int, float]:
    value = body.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("'logit_bias' must be an object of token id -> bias", "logit_bias")
    bias: dict[int, float] = {}
    for key, raw in value.items():
        try:
            token_id = int(key)
        except ValueError:
            raise BadRequest(f"logit_bias key {key!r} is not a token id", "logit_bias") from None
        if not 0 <= token_id < vocab_size:
            raise BadRequest(f"logit_bias token id {token_id} is not in vocab", "logit_bias")
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not -100 <= raw <= 100:
            raise BadRequest("logit_bias values must be numbers in -100..100", "logit_bias")
        bias[token_id] = float(raw)
    return bias


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise BadRequest("'stop' must be a string or a list of up to 4 strings", "stop")
    return tuple(s for s in stops if s)


def _sampling(body: dict[str, Any], vocab_size: int, top_logprobs: int | None) -> Sampling:
    max_tokens = _int(body, "max_completion_tokens", None, 1, MAX_TOKENS_LIMIT)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, MAX_TOKENS_LIMIT)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("'seed' must be an integer", "seed")
    return Sampling(
        model=_model(body, "toy-lm"),
        max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        seed=seed,
        n=_int(body, "n", 1, 1, MAX_N) or 1,
        top_logprobs=top_logprobs,
        logit_bias=_logit_bias(body, vocab_size),
        stop=_stop(body),
        stream=_bool(body, "stream"),
        include_usage=_bool(options or {}, "include_usage"),
    )


def _message_text(message: Any, index: int) -> str:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest(f"{where} must be an object with a string 'role'", "messages")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(t, str) for t in texts):
            return " ".join(t for t in texts if isinstance(t, str))
    raise BadRequest(f"{where}.content must be a string or a list of text parts", "messages")


def parse_chat(body: dict[str, Any], vocab_size: int) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    texts = tuple(_message_text(m, i) for i, m in enumerate(messages))
    top: int | None = None
    if _bool(body, "logprobs"):
        top = _int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    elif body.get("top_logprobs") not in (None, 0):
        raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return ChatRequest(sampling=_sampling(body, vocab_size, top), messages=texts)


def parse_completion(body: dict[str, Any], vocab_size: int) -> CompletionRequest:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompt' must be a string or a non-empty list of strings", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise BadRequest(f"at most {MAX_PROMPTS} prompts per request", "prompt")
    top = _int(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    return CompletionRequest(sampling=_sampling(body, vocab_size, top), prompts=tuple(prompts))


def parse_embedding(body: dict[str, Any]) -> EmbeddingRequest:
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise BadRequest("'input' must be a string or a non-empty list of strings", "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return EmbeddingRequest(
        model=_model(body, "toy-lm"), inputs=tuple(inputs), base64=encoding == "base64"
    )


def _feature_vector(row: Any) -> tuple[float, ...]:
    if (
        isinstance(row, list)
        and len(row) == N_DIGIT_FEATURES
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
    ):
        vector = tuple(float(v) for v in row)
        if all(v == v and abs(v) != float("inf") for v in vector):
            return vector
    raise BadRequest(f"each input must be a list of {N_DIGIT_FEATURES} numbers", "inputs")


def parse_classify(body: dict[str, Any]) -> ClassifyRequest:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list of feature vectors", "inputs")
    return ClassifyRequest(
        model=_model(body, "toy-digits"), inputs=tuple(_feature_vector(r) for r in inputs)
    )
