"""Response stage: counts output tokens and ends a stream that outruns its reservation."""

from __future__ import annotations

from typing import Any

from gateway.exchange import Exchange


def _usage(ex: Exchange, body: dict[str, Any]) -> None:
    usage = body.get("usage")
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            ex.prompt_tokens = prompt
        if isinstance(completion, int):
            ex.completion_tokens = completion
            ex.usage_reported = True


def _chunk_tokens(choice: dict[str, Any]) -> int:
    """Tokens in one streamed choice: its logprob entries if sent, else 1 per text piece."""
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        entries = logprobs.get("content") or logprobs.get("tokens")
        if isinstance(entries, list):
            return len(entries)
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return 1 if isinstance(text, str) and text else 0


def _cut_at(reserved: int) -> int:
    """Counted tokens past which a stream is cut: the reservation plus a little slack,
    since a chunk count only approximates tokens (servers send tag-only or empty chunks).
    The cut guards against upstreams that ignore max_tokens, not against one extra chunk."""
    return reserved + max(4, reserved // 20)


class Meter:
    name = "meter"

    def on_json(self, ex: Exchange, body: dict[str, Any]) -> bool:
        _usage(ex, body)
        return False

    def on_event(self, ex: Exchange, event: dict[str, Any]) -> bool:
        if event.get("usage"):
            _usage(ex, event)
            return False
        choices = event.get("choices")
        if not isinstance(choices, list) or ex.usage_reported:
            return False
        ex.completion_tokens += sum(_chunk_tokens(c) for c in choices if isinstance(c, dict))
        if ex.output_tokens_reserved > 0 and ex.completion_tokens > _cut_at(
            ex.output_tokens_reserved
        ):
            ex.stream_cut = True
            ex.reasons.append("stream_reservation_exhausted")
        return False
