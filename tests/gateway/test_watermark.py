"""The lexical watermark: the marker, the test, the stage, and the real gateway."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.controls import resolve
from gateway.exchange import Exchange
from gateway.identity import Client, client_id_for
from gateway.keys import KeySpace
from gateway.policy import Limits, Policy, Route, RouteKind
from gateway.provenance import provenance_key
from gateway.provenance.synonyms import Group, SynonymTable, default_table
from gateway.provenance.text import (
    TextMarker,
    analyse,
    client_text_key,
    keyed_choice,
    mark_text,
    occurrences,
)
from gateway.ratelimit.limiter import Limiter
from gateway.stages.watermark import TextWatermark
from sim.toy_lm import ToyLM, load_toy_lm
from sim.toy_upstream import create_app
from tests.gateway.conftest import GatewayFactory, wait_for_events
from tests.servers import serve_app

PROVENANCE = provenance_key(b"test-secret")
CLIENT = client_id_for("wm-key", b"test-secret")
KEY = client_text_key(PROVENANCE, CLIENT)
SAMPLE = (
    "Hello! That is a big problem, honestly. Maybe we should start over; it was a huge "
    "movie.\nBIG deal: `start()` and https://example.com/start stay as they are. An enormous "
    "task, a large one. Great Britain is big, and Anyway the kids seemed happy.\n\n"
    "- Perhaps the well-known teacher will begin soon"
)


@pytest.fixture(scope="module")
def lm() -> ToyLM:
    return load_toy_lm()


def toy_text(lm: ToyLM, words: int, seed: int) -> str:
    """Unmarked toy-LM chat replies, one per line, until ``words`` words."""
    context = [*lm.tokenize("what do you like to do"), lm.eos_id]
    lines: list[str] = []
    while sum(len(line.split()) for line in lines) < words:
        tokens = lm.generate_ids(context, max_tokens=60, seed=seed + len(lines))
        ids = [t.token_id for t in tokens]
        lines.append(lm.detokenize(ids))
        context = [*context, *ids, lm.eos_id]
    return "\n".join(lines)


def streamed(text: str, cuts: list[int], key: bytes = KEY) -> str:
    marker = TextMarker(key)
    bounds = [0, *sorted(cuts), len(text)]
    out = "".join(marker.feed(text[a:b]) for a, b in itertools.pairwise(bounds))
    return out + marker.finish()


def test_streaming_split_at_every_position_equals_the_whole() -> None:
    whole = mark_text(SAMPLE, KEY)
    assert whole != SAMPLE
    for cut in range(len(SAMPLE) + 1):
        assert streamed(SAMPLE, [cut]) == whole, cut
    assert streamed(SAMPLE, list(range(len(SAMPLE)))) == whole  # one character at a time


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("abegilnorstBIG ,.\n`-'")), max_size=80),
    st.lists(st.integers(min_value=0, max_value=80), max_size=6),
)
def test_streaming_any_chunking(text: str, cuts: list[int]) -> None:
    assert streamed(text, [c for c in cuts if c <= len(text)]) == mark_text(text, KEY)


def test_only_synonyms_change_and_case_is_kept() -> None:
    out = mark_text(SAMPLE, KEY)
    before, after = SAMPLE.split(), out.split()
    assert len(before) == len(after)
    table = default_table()
    for a, b in zip(before, after, strict=True):
        if a != b:
            core_a, core_b = a.strip(".,!:;"), b.strip(".,!:;")
            group = table.group_of(core_a.lower())
            assert group is not None and core_b.lower() in group.members
            assert core_b == core_b.upper() if core_a.isupper() else True
            assert core_b[0].isupper() == core_a[0].isupper()
    assert "`start()`" in out and "https://example.com/start" in out
    assert "Great Britain" in out and "well-known" in out


def test_capitalisation_follows_the_word() -> None:
    group = default_table().group_of("big")
    assert group is not None
    for context, word in (("", "Big"), ("", "BIG"), ("very", "big")):
        chosen = keyed_choice(KEY, context, group, group.members)
        text = f"{'very ' if context else ''}{word} day"
        marked = mark_text(text, KEY).split()[-2]
        assert marked.lower() == chosen
        assert (marked.isupper(), marked[0].isupper()) == (word.isupper(), word[0].isupper())
    assert mark_text("we saw Big Ben", KEY) == "we saw Big Ben"  # a name, mid-sentence


def test_articles_constrain_the_choice() -> None:
    for key_id in range(40):
        key = client_text_key(PROVENANCE, f"c{key_id}")
        assert mark_text("a huge tree", key).split()[1] in ("huge", "massive")
        assert mark_text("an enormous tree", key).split()[1] in ("enormous", "immense")
    assert mark_text("a enormous tree", KEY) == "a enormous tree"  # ungrammatical: left alone


def test_the_table_is_consistent() -> None:
    table = default_table()
    assert len(table.groups) >= 250
    with pytest.raises(ValueError):
        SynonymTable(1, (Group(("big", "large")), Group(("large", "huge"))))
    with pytest.raises(ValueError):
        SynonymTable(1, (Group(("big",)),))
    assert [o.word for o in occurrences("The big dog")] == ["big"]
    assert occurrences("the bigger dog") == []


def test_verify_finds_the_watermark_and_only_for_its_client(lm: ToyLM) -> None:
    text = toy_text(lm, 300, seed=1)
    marked = mark_text(text, KEY)
    found = analyse([marked], KEY)
    assert found.matches == found.contexts >= 8
    assert found.z > 3 and found.p_value < 1e-3
    other = analyse([marked], client_text_key(PROVENANCE, "someone-else"))
    assert other.p_value > 0.001
    assert analyse([text], KEY).p_value > 0.001


def test_repeated_phrases_count_once() -> None:
    text = "the big dog. " * 50
    result = analyse([text], KEY)
    assert result.occurrences == 50 and result.contexts == 1
    assert result.p_value >= 0.5


def test_unmarked_text_is_rarely_flagged(lm: ToyLM) -> None:
    text = toy_text(lm, 300, seed=2)
    flagged = sum(
        analyse([text], client_text_key(PROVENANCE, f"client-{i}")).p_value < 0.01
        for i in range(300)
    )
    assert flagged <= 9  # ~3 expected at most (the exact test is conservative)


def _exchange(level: str, kind: RouteKind, shadow: bool = False) -> Exchange:
    ex = Exchange(
        id="x",
        route=Route(path="/v1/x", kind=kind),
        policy=Policy(shadow=shadow),
        method="POST",
        headers={},
        raw_body=b"",
    )
    ex.client = Client(id=CLIENT, tier="default", known=False, allowlisted=False, limits=Limits())
    ex.controls = resolve(level)
    return ex


def _chat_body(*texts: str) -> dict[str, Any]:
    return {
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ]
    }


def test_stage_marks_chat_and_completions_at_watch_only() -> None:
    stage = TextWatermark(PROVENANCE)
    body = _chat_body(SAMPLE, "nothing to see")
    ex = _exchange("allow", RouteKind.OPENAI_CHAT)
    assert stage.on_json(ex, copy.deepcopy(body)) is False and ex.modifications == []

    ex = _exchange("watch", RouteKind.OPENAI_CHAT)
    marked = copy.deepcopy(body)
    assert stage.on_json(ex, marked) is True
    assert marked["choices"][0]["message"]["content"] == mark_text(SAMPLE, KEY)
    assert marked["choices"][1]["message"]["content"] == "nothing to see"
    assert ex.modifications == ["text_watermarked"]

    ex = _exchange("watch", RouteKind.OPENAI_COMPLETIONS)
    completion = {"choices": [{"index": 0, "text": SAMPLE, "finish_reason": "length"}]}
    assert stage.on_json(ex, completion) is True
    assert completion["choices"][0]["text"] == mark_text(SAMPLE, KEY)

    ex = _exchange("watch", RouteKind.OPENAI_CHAT, shadow=True)
    shadowed = copy.deepcopy(body)
    assert stage.on_json(ex, shadowed) is False and shadowed == body
    assert ex.modifications == ["shadow:text_watermarked"]


def test_watermarked_choices_lose_their_logprobs() -> None:
    """Logprob tokens would spell the unmarked words next to the marked text."""
    stage = TextWatermark(PROVENANCE)
    body = _chat_body(SAMPLE)
    body["choices"][0]["logprobs"] = {"content": [{"token": "big", "logprob": -0.1}]}
    ex = _exchange("watch", RouteKind.OPENAI_CHAT)
    assert stage.on_json(ex, body) is True
    assert body["choices"][0]["logprobs"] is None
    assert "logprobs_withheld_for_watermark" in ex.modifications
    chunk = {"choices": [{"index": 0, "delta": {"content": "big "}, "logprobs": {"content": []}}]}
    ex = _exchange("watch", RouteKind.OPENAI_CHAT)
    stage.on_event(ex, chunk)
    assert chunk["choices"][0]["logprobs"] is None


def test_stage_streams_interleaved_choices_without_loss() -> None:
    stage = TextWatermark(PROVENANCE)
    ex = _exchange("watch", RouteKind.OPENAI_CHAT)
    texts = [SAMPLE, "Big, big, BIG problems begin"]
    pieces = [[t[i : i + 3] for i in range(0, len(t), 3)] for t in texts]
    received = ["", ""]
    events: list[dict[str, Any]] = [
        {"choices": [{"index": i, "delta": {"role": "assistant", "content": ""}}]} for i in (0, 1)
    ]
    for step in range(max(map(len, pieces))):
        for i in (0, 1):
            if step < len(pieces[i]):
                delta = {"content": pieces[i][step]}
                events.append({"choices": [{"index": i, "delta": delta, "finish_reason": None}]})
    events += [{"choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]} for i in (0, 1)]
    events.append({"choices": [], "usage": {"completion_tokens": 3}})
    for event in events:
        stage.on_event(ex, event)
        for choice in event["choices"]:
            received[choice["index"]] += choice["delta"].get("content") or ""
    assert received == [mark_text(t, KEY) for t in texts]
    assert ex.state["watermark"] == {}


def test_stage_needs_a_key() -> None:
    with pytest.raises(ValueError):
        TextWatermark()


# -- through the real gateway ------------------------------------------------------------

AUTH = {"authorization": "Bearer wm-key"}


@pytest.fixture(scope="module")
def toy_upstream() -> Iterator[str]:
    with serve_app(create_app()) as url:
        yield url


def _set_level(redis_url: str, keys: KeySpace, level: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await Limiter(client).set_level(keys.level(CLIENT), level, ["t"], 60)
        finally:
            await client.aclose()

    asyncio.run(go())


def _texts(base: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> list[str]:
    response = httpx.post(f"{base}{path}", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return [c.get("text", c.get("message", {}).get("content")) for c in response.json()["choices"]]


def _streamed_texts(base: str, path: str, body: dict[str, Any]) -> list[str]:
    texts: dict[int, str] = {}
    with httpx.stream(
        "POST", f"{base}{path}", json={**body, "stream": True}, headers=AUTH, timeout=30
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in orjson.loads(line[6:])["choices"]:
                    piece = c.get("text", (c.get("delta") or {}).get("content")) or ""
                    texts[c["index"]] = texts.get(c["index"], "") + piece
    return [texts[i] for i in sorted(texts)]


CHAT = {
    "model": "toy-lm",
    "messages": [{"role": "user", "content": "what do you like to do"}],
    "max_tokens": 200,
    "seed": 11,
    "n": 2,
}
COMPLETION = {"model": "toy-lm", "prompt": "i think that", "max_tokens": 200, "seed": 26}


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)]
)
def test_gateway_watermarks_at_watch_and_not_at_allow(
    gateway: GatewayFactory,
    toy_upstream: str,
    redis_url: str,
    keyspace: KeySpace,
    path: str,
    body: dict[str, Any],
) -> None:
    upstream = _texts(toy_upstream, path, body, {})
    assert any(occurrences(t) for t in upstream)  # the sample has words to mark
    with gateway(toy_upstream) as gw:
        assert _texts(gw, path, body, AUTH) == upstream
        _set_level(redis_url, keyspace, "watch")
        marked = _texts(gw, path, body, AUTH)
        assert marked == [mark_text(t, KEY) for t in upstream] != upstream
        assert _streamed_texts(gw, path, body) == marked
    client = redis_sync.Redis.from_url(redis_url)
    try:
        events = wait_for_events(client, keyspace, 3)
    finally:
        client.close()
    mods = [e.get("modifications", "") for e in events]
    assert "text_watermarked" not in mods[0] and "text_watermarked" in mods[1]


def test_gateway_allow_answers_are_byte_identical(
    gateway: GatewayFactory, toy_upstream: str
) -> None:
    body = {**CHAT, "n": 1}
    with gateway(toy_upstream) as gw:
        direct = httpx.post(f"{toy_upstream}/v1/chat/completions", json=body, timeout=30)
        proxied = httpx.post(f"{gw}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    same = proxied.content
    for field in ("id", "created"):  # differ per answer of the upstream itself
        mine, theirs = (str(r.json()[field]).encode() for r in (proxied, direct))
        same = same.replace(mine, theirs)
    assert same == direct.content
