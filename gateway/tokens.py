"""Token estimates made before the upstream answers (settled to its ``usage`` afterwards)."""

from __future__ import annotations

import math
from typing import Any

from gateway.policy import RouteKind, Tokens

_PER_MESSAGE_OVERHEAD = 4


def _text_length(value: Any) -> int:
    """Characters of text in a prompt-like value (strings, lists of parts, token id lists)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, int):
                total += 4  # a token id counts as one token
            elif isinstance(item, dict):
                total += _text_length(item.get("text")) + _text_length(item.get("content"))
            else:
                total += _text_length(item)
        return total
    return 0


def estimate_prompt_tokens(kind: RouteKind, body: dict[str, Any] | None, cfg: Tokens) -> int:
    """Prompt tokens a request will cost, from its text length."""
    if body is None:
        return 0
    if kind is RouteKind.OPENAI_CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return 0
        chars = sum(_text_length(m.get("content")) for m in messages if isinstance(m, dict))
        return math.ceil(chars / cfg.chars_per_token) + _PER_MESSAGE_OVERHEAD * len(messages)
    if kind is RouteKind.OPENAI_COMPLETIONS:
        return math.ceil(_text_length(body.get("prompt")) / cfg.chars_per_token)
    if kind is RouteKind.EMBEDDINGS:
        return math.ceil(_text_length(body.get("input")) / cfg.chars_per_token)
    return 0


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def output_reservation(kind: RouteKind, body: dict[str, Any] | None, cfg: Tokens) -> int:
    """Output tokens to reserve: max_tokens (or the policy default) times the choices asked."""
    if body is None or kind not in (RouteKind.OPENAI_CHAT, RouteKind.OPENAI_COMPLETIONS):
        return 0
    max_tokens = (
        _positive_int(body.get("max_completion_tokens"))
        or _positive_int(body.get("max_tokens"))
        or cfg.default_max_tokens
    )
    choices = _positive_int(body.get("n")) or 1
    prompts = body.get("prompt")
    if (
        kind is RouteKind.OPENAI_COMPLETIONS
        and isinstance(prompts, list)
        and prompts
        and all(isinstance(p, str | list) for p in prompts)
    ):
        choices *= len(prompts)  # a batch of prompts, not one prompt of token ids
    return max_tokens * choices
