"""Logprob protection: the per-position math and the LogprobGuard stage."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.controls import ControlLadder, ControlSet, resolve
from gateway.exchange import Exchange
from gateway.policy import Policy, Route, RouteKind
from gateway.protect.logprobs import keep_highest, noise_key, noise_unit, protect_position
from gateway.stages.logprobs import LogprobGuard

KEY = noise_key(b"secret")
SECRET = b"secret"

# -- one position -------------------------------------------------------------------------

_VALUES = st.lists(st.floats(-30.0, 0.0, allow_nan=False), min_size=1, max_size=21)


@given(
    _VALUES,
    st.floats(0.0, 5.0),
    st.integers(0, 8),
    st.binary(min_size=16, max_size=16),
)
@settings(max_examples=400, deadline=None)
def test_noise_is_bounded_and_keeps_the_order(
    values: list[float], noise: float, decimals: int, context: bytes
) -> None:
    tokens = [f"t{i}" for i in range(len(values))]
    out = protect_position(tokens, values, decimals=decimals, noise=noise, key=KEY, context=context)
    slack = noise + 0.5 * 10.0**-decimals + 1e-9
    assert all(abs(o - v) <= slack and o <= 0.0 for o, v in zip(out, values, strict=True))
    for i in range(len(values)):
        for j in range(len(values)):
            if values[i] > values[j] or (values[i] == values[j] and i < j):
                assert out[i] >= out[j]  # order kept, so the top stays on top
    top = max(range(len(values)), key=lambda i: values[i])
    assert out[top] == max(out)
    again = protect_position(
        tokens, values, decimals=decimals, noise=noise, key=KEY, context=context
    )
    assert again == out  # deterministic


def test_same_token_same_value_and_noise_depends_on_context() -> None:
    out = protect_position(
        ["a", "b", "a"], [-1.0, -2.0, -1.0], decimals=6, noise=0.5, key=KEY, context=b"x" * 16
    )
    assert out[0] == out[2]
    units = {round(noise_unit(KEY, bytes([i]) * 16, "a"), 12) for i in range(50)}
    assert len(units) == 50 and all(-1.0 <= u < 1.0 for u in units)
    assert noise_unit(KEY, b"c" * 16, "a") != noise_unit(noise_key(b"other"), b"c" * 16, "a")


def test_rounding_without_noise() -> None:
    assert protect_position(["a", "b"], [-0.12345, 0.2], decimals=2) == [-0.12, 0.0]
    assert str(protect_position(["a"], [-0.0001], decimals=3)[0]) == "0.0"  # no "-0.0"


def test_keep_highest() -> None:
    assert keep_highest([-3.0, -1.0, None, -2.0], 2) == [1, 3]
    assert keep_highest([-1.0, -1.0, -1.0], 2) == [0, 1]


# -- the stage ----------------------------------------------------------------------------


def exchange(
    kind: RouteKind = RouteKind.OPENAI_CHAT,
    *,
    shadow: bool = False,
    body: dict[str, Any] | None = None,
    **controls: Any,
) -> Exchange:
    path = "/v1/chat/completions" if kind is RouteKind.OPENAI_CHAT else "/v1/completions"
    body = body or {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    ex = Exchange(
        id="t",
        route=Route(path=path, kind=kind),
        policy=Policy(shadow=shadow),
        method="POST",
        headers={},
        raw_body=orjson.dumps(body),
        body=body,
    )
    ex.controls = resolve("allow", ControlLadder(allow=ControlSet(**controls)))
    return ex


def chat_entry(token: str, lp: float, tops: list[tuple[str, float]]) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": lp,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in tops],
    }


TOPS = [(" the", -0.4123456), (" a", -1.5555555), (" an", -2.25), (" one", -3.1), (" two", -4.0)]
TOPS += [(f" x{i}", -5.0 - i) for i in range(5)]


def chat_body(tokens: tuple[str, ...] = (" the", " a", " cat")) -> dict[str, Any]:
    entries = []
    for token in tokens:
        lp = dict(TOPS).get(token, -6.5)
        entries.append(chat_entry(token, lp, TOPS))
    return {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(tokens)},
                "logprobs": {"content": entries, "refusal": None},
                "finish_reason": "stop",
            }
        ],
    }


def test_rounds_and_truncates_chat_logprobs() -> None:
    ex = exchange(top_logprobs_max=3, logprob_decimals=3)
    body = chat_body()
    assert LogprobGuard(SECRET).on_json(ex, body)
    entries = body["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == [" the", " a", " cat"]
    assert entries[0]["logprob"] == -0.412 and entries[2]["logprob"] == -6.5
    assert [t["token"] for t in entries[0]["top_logprobs"]] == [" the", " a", " an"]
    assert [t["logprob"] for t in entries[0]["top_logprobs"]] == [-0.412, -1.556, -2.25]
    assert ex.modifications == ["logprobs_rounded:3", "top_logprobs_truncated:3"]


@given(st.lists(st.floats(-20.0, 0.0), min_size=2, max_size=5), st.floats(0.01, 2.0))
@settings(max_examples=150, deadline=None)
def test_top_token_never_changes_under_noise(values: list[float], noise: float) -> None:
    values = sorted(values, reverse=True)
    tops = [(f"t{i}", v) for i, v in enumerate(values)]
    body = {"choices": [{"index": 0, "logprobs": {"content": [chat_entry("t1", values[1], tops)]}}]}
    ex = exchange(logprob_noise=noise, logprob_decimals=2)
    LogprobGuard(SECRET).on_json(ex, body)
    entry = body["choices"][0]["logprobs"]["content"][0]
    out = [t["logprob"] for t in entry["top_logprobs"]]
    assert [t["token"] for t in entry["top_logprobs"]] == [t for t, _ in tops]
    assert out[0] == max(out) and entry["logprob"] <= out[0]
    assert entry["logprob"] == out[1]  # the sampled token keeps one value
    assert all(abs(a - b) <= noise + 0.005 + 1e-9 for a, b in zip(out, values, strict=True))
    assert set(ex.modifications) == {"logprobs_rounded:2", f"logprobs_noised:{noise:g}"}


def stream_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat body as one chunk per token, the way servers stream it."""
    choice = body["choices"][0]
    return [
        {"choices": [{"index": 0, "delta": {"content": e["token"]}, "logprobs": {"content": [e]}}]}
        for e in choice["logprobs"]["content"]
    ]


def test_noise_is_the_same_streamed_or_not_for_repeats_and_for_other_clients() -> None:
    guard = LogprobGuard(SECRET)
    whole = chat_body()
    guard.on_json(exchange(logprob_noise=0.3), whole)
    streamed = stream_chunks(chat_body())
    ex = exchange(logprob_noise=0.3)
    for event in streamed:
        guard.on_event(ex, event)
    assert [e["choices"][0]["logprobs"]["content"][0] for e in streamed] == whole["choices"][0][
        "logprobs"
    ]["content"]
    # once per request, not per chunk
    assert ex.modifications == [
        "logprobs_rounded:3",
        "logprobs_noised:0.3",
        "top_logprobs_truncated:5",
    ]
    repeat = chat_body()
    guard.on_json(exchange(logprob_noise=0.3), repeat)
    assert repeat == whole  # averaging repeats gains nothing
    other = chat_body()
    guard.on_json(exchange(logprob_noise=0.3, logprob_decimals=8), other)
    assert other != chat_body()


def test_noise_differs_by_context_and_bound() -> None:
    guard = LogprobGuard(SECRET)
    a, b, c = chat_body(), chat_body(), chat_body()
    guard.on_json(exchange(logprob_noise=0.3, logprob_decimals=6), a)
    body = {"model": "m", "messages": [{"role": "user", "content": "other"}]}
    guard.on_json(exchange(logprob_noise=0.3, logprob_decimals=6, body=body), b)
    guard.on_json(exchange(logprob_noise=0.31, logprob_decimals=6, body=body), c)
    first = [e["logprob"] for e in a["choices"][0]["logprobs"]["content"]]
    assert first != [e["logprob"] for e in b["choices"][0]["logprobs"]["content"]]
    assert [e["logprob"] for e in b["choices"][0]["logprobs"]["content"]] != [
        e["logprob"] for e in c["choices"][0]["logprobs"]["content"]
    ]
    # Fields that do not change the distribution do not buy a fresh draw.
    d = chat_body()
    extra = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "z", "n": 3}
    guard.on_json(exchange(logprob_noise=0.3, logprob_decimals=6, body=extra), d)
    assert [e["logprob"] for e in d["choices"][0]["logprobs"]["content"]] == first


def legacy_body() -> dict[str, Any]:
    return {
        "object": "text_completion",
        "choices": [
            {
                "index": 0,
                "text": " only windows",
                "logprobs": {
                    "tokens": [" only", " windows"],
                    "token_logprobs": [-6.7844488, -9.8079623],
                    "top_logprobs": [
                        {" is": -2.1805717, ".": -2.7934, " and": -3.1, " only": -6.7844488},
                        {" ever": -3.2968415, " talked": -3.5107387},
                    ],
                    "text_offset": [0, 5],
                },
                "finish_reason": "length",
            }
        ],
    }


def test_legacy_completions() -> None:
    ex = exchange(RouteKind.OPENAI_COMPLETIONS, top_logprobs_max=2, logprob_decimals=2)
    body = legacy_body()
    assert LogprobGuard(SECRET).on_json(ex, body)
    lp = body["choices"][0]["logprobs"]
    assert lp["token_logprobs"] == [-6.78, -9.81]
    assert lp["top_logprobs"] == [{" is": -2.18, ".": -2.79}, {" ever": -3.3, " talked": -3.51}]
    assert lp["tokens"] == [" only", " windows"] and lp["text_offset"] == [0, 5]
    noisy = legacy_body()
    ex = exchange(RouteKind.OPENAI_COMPLETIONS, logprob_noise=1.0, logprob_decimals=4)
    LogprobGuard(SECRET).on_json(ex, noisy)
    lp = noisy["choices"][0]["logprobs"]
    top = lp["top_logprobs"][0]
    assert lp["token_logprobs"][0] == top[" only"]  # sampled token: one value
    assert max(top, key=top.__getitem__) == " is"


def test_drop_prompt_logprobs_other_routes_and_shadow() -> None:
    body = chat_body()
    assert LogprobGuard(SECRET).on_json(exchange(logprobs="drop"), body)
    assert body["choices"][0]["logprobs"] is None
    prompt = {
        "prompt_logprobs": [None, {"5": {"logprob": -1.23456, "rank": 1, "decoded_token": "a"}}],
        "choices": [],
    }
    ex = exchange(logprob_decimals=2)
    assert LogprobGuard(SECRET).on_json(ex, prompt)
    assert prompt["prompt_logprobs"][1]["5"]["logprob"] == -1.23
    embeddings = chat_body()
    assert not LogprobGuard(SECRET).on_json(exchange(RouteKind.EMBEDDINGS), embeddings)
    shadow = exchange(shadow=True, logprob_decimals=1)
    body = chat_body()
    assert not LogprobGuard(SECRET).on_json(shadow, body)
    assert body == chat_body()
    assert shadow.modifications == [
        "shadow:logprobs_rounded:1",
        "shadow:top_logprobs_truncated:5",
    ]


@pytest.mark.parametrize("odd", [None, "x", [1], {"content": "x"}, {"content": [None, 3]}])
def test_malformed_logprobs_pass(odd: Any) -> None:
    body = {"choices": [{"index": 0, "logprobs": copy.deepcopy(odd)}, "junk"]}
    LogprobGuard(SECRET).on_json(exchange(logprob_noise=0.5), body)
    assert body["choices"][0]["logprobs"] == odd


def test_spellings_of_one_request_draw_the_same_noise() -> None:
    from gateway.stages.logprobs import _canonical

    as_string = {"messages": [{"role": "user", "content": "hi there"}]}
    as_parts = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
            }
        ]
    }
    assert _canonical(as_string) == _canonical(as_parts)
    assert _canonical({"prompt": ["abc"]}) == _canonical({"prompt": "abc"})
    assert _canonical({"prompt": "abc"}) != _canonical({"prompt": "ABC"})
