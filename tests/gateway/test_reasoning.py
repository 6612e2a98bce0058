"""Reasoning withholding: the think-tag state machine and the ReasoningFilter stage."""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.controls import ControlLadder, ControlSet, resolve
from gateway.exchange import Exchange
from gateway.policy import Policy, Route, RouteKind
from gateway.protect.think import CLOSE, ELLIPSIS, OPEN, ThinkFilter, align
from gateway.stages.reasoning import ReasoningFilter

TRICKY = (
    "a<b <thin <think>r1 </thin k</think> mid<think><think>r2</think></think> x<think>\nlast </th"
)


def expected(text: str, limit: int | None = None) -> str:
    """What a client may see of ``text``: every block removed, or cut to ``limit``."""

    def block(m: re.Match[str]) -> str:
        if limit is None:
            return ""
        inner, close = m.group(1), m.group(2)
        return OPEN + inner[:limit] + (ELLIPSIS if len(inner) > limit else "") + close

    return re.sub(r"<think>(.*?)(</think>|\Z)", block, text, flags=re.S)


def run(pieces: list[str], limit: int | None = None) -> str:
    f = ThinkFilter(limit)
    return "".join(f.feed(p).text for p in pieces) + f.feed("", final=True).text


# -- the state machine --------------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, 0, 3])
def test_every_split_point_of_every_chunk_pair(limit: int | None) -> None:
    want = expected(TRICKY, limit)
    n = len(TRICKY)
    for i in range(n + 1):
        for j in range(i, n + 1):
            assert run([TRICKY[:i], TRICKY[i:j], TRICKY[j:]], limit) == want, (i, j)


def test_drop_and_truncate_examples() -> None:
    assert run(["Hi <th", "ink>secret</th", "ink> there"]) == "Hi  there"
    assert run(["<think>abcdef</think>ok"], 3) == "<think>abc…</think>ok"
    assert run(["<think>ab</think>ok"], 3) == "<think>ab</think>ok"
    assert run(["x<think>never closed"]) == "x"
    assert run(["keep <thinking> and </think> as text"]) == "keep <thinking> and </think> as text"
    assert run(["a <thi"]) == "a <thi"  # a tag start at the very end is text after all


_PIECES = st.sampled_from(["<", "<t", "<th", "<think>", "</", "</think>", ">", "k", "a", " ", "\n"])


@given(st.lists(_PIECES, max_size=40), st.lists(st.integers(0, 200), max_size=8))
@settings(max_examples=300, deadline=None)
def test_any_split_yields_exactly_the_visible_text(parts: list[str], cuts: list[int]) -> None:
    text = "".join(parts)
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    for limit in (None, 2):
        assert run(pieces, limit) == expected(text, limit)


@given(st.lists(_PIECES, max_size=40))
@settings(max_examples=200, deadline=None)
def test_never_leaks_and_holds_only_a_tag_prefix(parts: list[str]) -> None:
    """After every piece, what went out is exactly the visible text of what is decided, and
    what is held is the start of the awaited tag and nothing more."""
    f = ThinkFilter()
    seen, sent = "", ""
    for part in parts:
        seen += part
        sent += f.feed(part).text
        tag = CLOSE if f.inside else OPEN
        assert len(f.pending) < len(tag) and tag.startswith(f.pending)
        assert sent == expected(seen[: len(seen) - len(f.pending)])


def test_align_skips_untokenised_tags_and_their_whitespace() -> None:
    text = "<think>ab c</think>\n\nyes"
    assert align(text, ["ab", " c", "yes"]) == [(7, 9), (9, 11), (21, 24)]
    assert align(text, ["ab", "zz"]) == [(7, 9)]
    assert align("x y", ["x", None, "y"]) == [(0, 1)]


# -- the stage ----------------------------------------------------------------------------


def exchange(
    reasoning: str = "drop",
    max_chars: int = 0,
    kind: RouteKind = RouteKind.OPENAI_CHAT,
    shadow: bool = False,
) -> Exchange:
    route = Route(path="/v1/chat/completions", kind=kind)
    ex = Exchange(
        id="t",
        route=route,
        policy=Policy(shadow=shadow),
        method="POST",
        headers={},
        raw_body=b"{}",
    )
    ladder = ControlLadder(
        allow=ControlSet(reasoning=reasoning, reasoning_max_chars=max_chars)  # type: ignore[arg-type]
    )
    ex.controls = resolve("allow", ladder)
    return ex


def entry(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}


def chat_message() -> dict[str, Any]:
    reasoning, answer = ["all", " star", " oh"], ["that", " might", " be"]
    return {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": f"<think>{''.join(reasoning)}</think>\n\n{''.join(answer)}",
                    "reasoning_content": "".join(reasoning),
                },
                "logprobs": {"content": [entry(t) for t in reasoning + answer]},
                "finish_reason": "stop",
            }
        ]
    }


def test_drops_reasoning_and_its_logprobs_from_a_message() -> None:
    ex, body = exchange(), chat_message()
    assert ReasoningFilter().on_json(ex, body)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "\n\nthat might be"}
    assert [e["token"] for e in choice["logprobs"]["content"]] == ["that", " might", " be"]
    assert ex.modifications == ["reasoning_dropped"]


def test_truncates_each_reasoning() -> None:
    ex, body = exchange("truncate", 4), chat_message()
    assert ReasoningFilter().on_json(ex, body)
    message = body["choices"][0]["message"]
    assert message["content"] == "<think>all …</think>\n\nthat might be"
    assert message["reasoning_content"] == "all …"
    tokens = [e["token"] for e in body["choices"][0]["logprobs"]["content"]]
    assert tokens == ["all", "that", " might", " be"]  # " star" was cut off
    assert ex.modifications == ["reasoning_truncated"]


def test_keep_and_no_reasoning_change_nothing() -> None:
    body = chat_message()
    assert not ReasoningFilter().on_json(exchange("keep"), body)
    assert body == chat_message()
    plain = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}
    ex = exchange()
    assert not ReasoningFilter().on_json(ex, plain)
    assert ex.modifications == []


def test_shadow_records_without_changing() -> None:
    ex, body = exchange(shadow=True), chat_message()
    assert not ReasoningFilter().on_json(ex, body)
    assert body == chat_message()
    assert ex.modifications == ["shadow:reasoning_dropped"]


def test_vllm_style_reasoning_field_with_logprobs_over_all_tokens() -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "yes", "reasoning_content": "hmm ok"},
                "logprobs": {"content": [entry(t) for t in ["hmm", " ok", "</think>", "yes"]]},
            }
        ]
    }
    assert ReasoningFilter().on_json(exchange(), body)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "yes"}
    assert [e["token"] for e in body["choices"][0]["logprobs"]["content"]] == ["yes"]


def chunk(content: str | None, tokens: list[str] | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    logprobs = None if tokens is None else {"content": [entry(t) for t in tokens]}
    return {
        "id": "c1",
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}],
    }


def stream(ex: Exchange, events: list[dict[str, Any]]) -> tuple[str, list[str], list[Any]]:
    """Runs events through one filter: (content sent, logprob tokens sent, the events)."""
    stage = ReasoningFilter()
    events = [
        *events,
        {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    text, tokens = "", []
    for event in events:
        stage.on_event(ex, event)
        for choice in event["choices"]:
            text += choice["delta"].get("content") or ""
            if ex.controls is not None and ex.controls.reasoning == "drop":
                assert "reasoning_content" not in choice["delta"]
            if choice.get("logprobs"):
                tokens += [e["token"] for e in choice["logprobs"]["content"]]
    return text, tokens, events


def test_stream_with_split_tags_and_token_logprobs() -> None:
    tokens = ["Hi", " <", "think", ">", "sec", "ret", "</", "think", ">", " ok", " <", "b", ">"]
    text, sent, events = stream(exchange(), [chunk(t, [t]) for t in tokens])
    assert text == "Hi  ok <b>"
    assert sent == ["Hi", " ok", " <", "b", ">"]  # " <" before "think" was part of a tag
    assert len(events) == len(tokens) + 1  # every chunk kept its place
    assert all(e["id"] == "c1" for e in events)


def test_stream_like_the_toy_upstream() -> None:
    reasoning = [chunk(t, [t], reasoning_content=t) for t in ["all", " star"]]
    answer = [chunk(t, [t]) for t in ["that", " way"]]
    events = [chunk(""), chunk("<think>"), *reasoning, chunk("</think>\n\n"), *answer]
    ex = exchange()
    text, sent, _ = stream(ex, events)
    assert text == "\n\nthat way"
    assert sent == ["that", " way"]
    assert ex.modifications == ["reasoning_dropped"]


def test_stream_truncates_across_chunks() -> None:
    events = [
        chunk("<think>"),
        chunk("abc", reasoning_content="abc"),
        chunk("def", reasoning_content="def"),
        chunk("</think>"),
        chunk("ok"),
    ]
    ex = exchange("truncate", 4)
    text, _, evs = stream(ex, events)
    assert text == "<think>abcd…</think>ok"
    fields = [e["choices"][0]["delta"].get("reasoning_content") for e in evs]
    assert fields == [None, "abc", "d…", None, None, None]
    assert ex.modifications == ["reasoning_truncated"]


@pytest.mark.parametrize("limit", [None, 3])
def test_stage_at_every_split_point_of_a_chunk_sequence(limit: int | None) -> None:
    ex = exchange("drop" if limit is None else "truncate", limit or 0)
    n = len(TRICKY)
    for i in range(n + 1):
        for j in range(i, n + 1):
            ex.state.clear()
            pieces = [TRICKY[:i], TRICKY[i:j], TRICKY[j:]]
            text, _, _ = stream(ex, [chunk(p) for p in pieces])
            assert text == expected(TRICKY, limit), (i, j)


def test_vllm_style_stream_drops_reasoning_only_chunks() -> None:
    events = [
        chunk(None, ["hmm"], reasoning_content="hmm"),
        chunk(None, [" ok"], reasoning_content=" ok"),
        chunk("yes", ["yes"]),
    ]
    text, sent, _ = stream(exchange(), events)
    assert (text, sent) == ("yes", ["yes"])


def legacy(text: str, tokens: list[str]) -> dict[str, Any]:
    offsets, at = [], 0
    for t in tokens:
        at = text.index(t, at)
        offsets.append(at)
        at += len(t)
    return {
        "index": 0,
        "text": text,
        "logprobs": {
            "tokens": tokens,
            "token_logprobs": [-1.0] * len(tokens),
            "top_logprobs": [{t: -1.0} for t in tokens],
            "text_offset": offsets,
        },
        "finish_reason": "stop",
    }


@pytest.mark.parametrize("limit", [None, 2])
def test_legacy_completion_offsets_follow_the_new_text(limit: int | None) -> None:
    tokens = ["So", " <think>", "why", " not", "</think>", " fine", " done"]
    body = {"choices": [legacy("".join(tokens), tokens)]}
    ex = exchange("drop" if limit is None else "truncate", limit or 0, RouteKind.OPENAI_COMPLETIONS)
    assert ReasoningFilter().on_json(ex, body)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == expected("".join(tokens), limit)
    for token, offset in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert choice["text"][offset : offset + len(token)] == token
    assert "why" not in lp["tokens"] and len(lp["top_logprobs"]) == len(lp["tokens"])


def test_legacy_stream_offsets_follow_the_new_text() -> None:
    tokens = ["So", " <", "think>", "why", " not", "</think>", " fine", " <th", "ing>"]
    text = "".join(tokens)
    ex = exchange(kind=RouteKind.OPENAI_COMPLETIONS)
    stage = ReasoningFilter()
    sent, kept = "", []
    full = legacy(text, tokens)["logprobs"]
    for j, token in enumerate([*tokens, ""]):
        last = j == len(tokens)
        lp = None if last else {k: [v[j]] for k, v in full.items()}
        event = {
            "choices": [
                {
                    "index": 0,
                    "text": token,
                    "logprobs": lp,
                    "finish_reason": "stop" if last else None,
                }
            ]
        }
        stage.on_event(ex, event)
        choice = event["choices"][0]
        sent += choice["text"]
        if choice["logprobs"]:
            kept += list(
                zip(choice["logprobs"]["tokens"], choice["logprobs"]["text_offset"], strict=True)
            )
    assert sent == "So  fine <thing>"
    assert [t for t, _ in kept] == ["So", " fine", " <th", "ing>"]
    for token, offset in kept:
        assert sent[offset : offset + len(token)] == token


def test_other_routes_and_levels_pass() -> None:
    body = chat_message()
    ex = exchange(kind=RouteKind.EMBEDDINGS)
    assert not ReasoningFilter().on_json(ex, body)
    allow = exchange()
    allow.controls = Policy().controls_for("default", "allow")
    assert not ReasoningFilter().on_json(allow, body)
    assert body == chat_message()
    watch = exchange()
    watch.controls = Policy().controls_for("default", "watch")
    assert ReasoningFilter().on_json(watch, copy.deepcopy(body))


def legacy_stream(ex: Exchange, chunks: list[list[str]]) -> tuple[str, list[tuple[str, int]]]:
    """Legacy chunks of tokens through one filter: (text sent, (token, offset) sent)."""
    stage = ReasoningFilter()
    tokens = [t for c in chunks for t in c]
    full = legacy("".join(tokens), tokens)["logprobs"]
    sent, kept, at = "", [], 0
    for j, piece in enumerate([*chunks, []]):
        lp = {k: v[at : at + len(piece)] for k, v in full.items()} if piece else None
        at += len(piece)
        finish = "stop" if j == len(chunks) else None
        choice = {"index": 0, "text": "".join(piece), "logprobs": lp, "finish_reason": finish}
        stage.on_event(ex, {"choices": [choice]})
        sent += choice["text"]
        if choice["logprobs"]:
            lp = choice["logprobs"]
            kept += list(zip(lp["tokens"], lp["text_offset"], strict=True))
    return sent, kept


@given(st.lists(_PIECES, min_size=1, max_size=30), st.lists(st.integers(1, 4), max_size=30))
@settings(max_examples=200, deadline=None)
def test_streamed_logprobs_match_the_whole_answer(tokens: list[str], sizes: list[int]) -> None:
    """However tokens are grouped into chunks, the same entries go out with the same
    offsets as for the whole answer, and each offset points at its token in the text."""
    chunks, at = [], 0
    for size in [*sizes, len(tokens)]:
        if at < len(tokens):
            chunks.append(tokens[at : at + size])
            at += size
    for mode, limit in (("drop", None), ("truncate", 2)):
        whole = {"choices": [legacy("".join(tokens), tokens)]}
        ex = exchange(mode, limit or 0, RouteKind.OPENAI_COMPLETIONS)
        ReasoningFilter().on_json(ex, whole)
        lp = whole["choices"][0]["logprobs"]
        want = list(zip(lp["tokens"], lp["text_offset"], strict=True))
        ex = exchange(mode, limit or 0, RouteKind.OPENAI_COMPLETIONS)
        text, kept = legacy_stream(ex, chunks)
        assert text == whole["choices"][0]["text"] == expected("".join(tokens), limit)
        assert kept == want
        for token, offset in kept:
            assert text[offset : offset + len(token)] == token
