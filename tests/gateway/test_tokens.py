from __future__ import annotations

from gateway.policy import RouteKind, Tokens
from gateway.tokens import estimate_prompt_tokens, output_reservation

CFG = Tokens(default_max_tokens=100, chars_per_token=4)


def test_chat_prompt_estimate() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "a" * 40},
            {"role": "user", "content": [{"type": "text", "text": "b" * 8}]},
        ]
    }
    assert estimate_prompt_tokens(RouteKind.OPENAI_CHAT, body, CFG) == 12 + 8


def test_bad_shapes_do_not_crash() -> None:
    for body in ({"messages": "x"}, {"messages": [1, None]}, {"prompt": {"a": 1}}, {}):
        estimate_prompt_tokens(RouteKind.OPENAI_CHAT, body, CFG)
        estimate_prompt_tokens(RouteKind.OPENAI_COMPLETIONS, body, CFG)
        output_reservation(RouteKind.OPENAI_CHAT, body, CFG)


def test_output_reservation() -> None:
    assert output_reservation(RouteKind.OPENAI_CHAT, {}, CFG) == 100
    assert output_reservation(RouteKind.OPENAI_CHAT, {"max_tokens": 7, "n": 3}, CFG) == 21
    assert (
        output_reservation(
            RouteKind.OPENAI_CHAT, {"max_completion_tokens": 9, "max_tokens": 7}, CFG
        )
        == 9
    )
    assert output_reservation(RouteKind.OPENAI_CHAT, {"max_tokens": True}, CFG) == 100
    assert (
        output_reservation(
            RouteKind.OPENAI_COMPLETIONS, {"max_tokens": 5, "prompt": ["a", "b"]}, CFG
        )
        == 10
    )
    assert output_reservation(RouteKind.EMBEDDINGS, {"max_tokens": 5}, CFG) == 0
