"""Request shaping through a real gateway in front of the toy LM, streamed and not."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from gateway.identity import client_id_for
from gateway.keys import KeySpace
from gateway.ratelimit.limiter import Limiter
from sim.toy_lm import load_toy_lm
from sim.toy_upstream import create_app
from tests.gateway.conftest import GatewayFactory, wait_for_events
from tests.servers import serve_app

KEY = "shape-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
CHAT = {
    "model": "toy-lm",
    "messages": [{"role": "user", "content": "tell me about your day"}],
    "max_tokens": 6,
}


@pytest.fixture(scope="module")
def toy_upstream() -> Iterator[str]:
    with serve_app(create_app()) as url:
        yield url


def post(gw: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{gw}{path}", json=body, headers=AUTH, timeout=30)


def stream_chunks(gw: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> list[Any]:
    """The JSON chunks of a streamed answer (raises unless it is a 200 event stream)."""
    chunks: list[Any] = []
    with httpx.stream(
        "POST", f"{gw}{path}", json={**body, "stream": True}, headers=AUTH, timeout=30
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(orjson.loads(line[6:]))
    return chunks


def chat_top_counts(gw: str, body: dict[str, Any], stream: bool) -> list[int]:
    """How many top_logprobs the client received for each generated token."""
    if stream:
        choices = [c for chunk in stream_chunks(gw, body) for c in chunk["choices"]]
    else:
        r = post(gw, body)
        assert r.status_code == 200, r.text
        choices = r.json()["choices"]
    return [
        len(entry["top_logprobs"])
        for choice in choices
        if choice.get("logprobs")
        for entry in choice["logprobs"]["content"]
    ]


def chat_text(gw: str, body: dict[str, Any], stream: bool) -> list[str]:
    """The text of each choice."""
    if not stream:
        r = post(gw, body)
        assert r.status_code == 200, r.text
        return [c["message"]["content"] for c in r.json()["choices"]]
    texts: dict[int, str] = {}
    for chunk in stream_chunks(gw, body):
        for c in chunk["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["delta"].get("content", "")
    return [texts[i] for i in sorted(texts)]


def set_level(redis_url: str, keys: KeySpace, level: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            level_key = keys.level(client_id_for(KEY, b"test-secret"))
            await Limiter(client).set_level(level_key, level, ["test"], 60)
        finally:
            await client.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("stream", [False, True])
def test_top_logprobs_capped_to_five_by_default(
    gateway: GatewayFactory,
    toy_upstream: str,
    redis_sync: redis.Redis,
    keyspace: KeySpace,
    stream: bool,
) -> None:
    body = {**CHAT, "logprobs": True, "top_logprobs": 20, "seed": 3}  # seeded: 6 tokens
    direct = httpx.post(f"{toy_upstream}/v1/chat/completions", json=body, timeout=30).json()
    assert {len(e["top_logprobs"]) for e in direct["choices"][0]["logprobs"]["content"]} == {20}
    with gateway(toy_upstream) as gw:
        counts = chat_top_counts(gw, body, stream)
        events = wait_for_events(redis_sync, keyspace, 1)
    assert len(counts) == 6 and set(counts) == {5}
    assert "top_logprobs_capped:20>5" in events[0]["modifications"].split(",")


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_logprobs_capped(gateway: GatewayFactory, toy_upstream: str, stream: bool) -> None:
    body = {"model": "toy-lm", "prompt": "how are you", "max_tokens": 4, "logprobs": 20, "seed": 1}
    with gateway(toy_upstream) as gw:
        if stream:
            chunks = stream_chunks(gw, body, "/v1/completions")
            tops = [
                top
                for chunk in chunks
                for c in chunk["choices"]
                if c["logprobs"]
                for top in c["logprobs"]["top_logprobs"]
            ]
        else:
            r = post(gw, body, "/v1/completions")
            assert r.status_code == 200, r.text
            tops = r.json()["choices"][0]["logprobs"]["top_logprobs"]
    assert len(tops) == 4 and {len(t) for t in tops} == {5}


@pytest.mark.parametrize("stream", [False, True])
def test_logit_bias_with_logprobs_refused_with_why(
    gateway: GatewayFactory,
    toy_upstream: str,
    redis_sync: redis.Redis,
    keyspace: KeySpace,
    stream: bool,
) -> None:
    body = {**CHAT, "logprobs": True, "top_logprobs": 5, "logit_bias": {"682": 100}}
    with gateway(toy_upstream) as gw:
        r = post(gw, {**body, "stream": stream})
        events = wait_for_events(redis_sync, keyspace, 1)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "logit_bias_with_logprobs_refused"
    assert "logit-stealing" in error["message"]
    assert events[0]["decision"] == "rejected" and events[0]["status"] == "400"
    assert "logit_bias_with_logprobs_refused" in events[0]["reasons"].split(",")


@pytest.mark.parametrize("stream", [False, True])
def test_logit_bias_alone_is_forwarded_and_takes_effect(
    gateway: GatewayFactory,
    toy_upstream: str,
    redis_sync: redis.Redis,
    keyspace: KeySpace,
    stream: bool,
) -> None:
    token = load_toy_lm().token_id("pizza")
    assert token is not None
    body = {**CHAT, "seed": 3}
    with gateway(toy_upstream) as gw:
        (plain,) = chat_text(gw, body, stream)
        (biased,) = chat_text(gw, {**body, "logit_bias": {str(token): 100}}, stream)
    assert "pizza" not in plain.split()
    assert biased.split() == ["pizza"] * 6
    client = client_id_for(KEY, b"test-secret")
    (window,) = redis_sync.keys(keyspace.bias_tokens(client, 0).rsplit(":", 1)[0] + ":*")
    assert redis_sync.smembers(window) == {str(token).encode()}


@pytest.mark.parametrize("stream", [False, True])
def test_degrade_drops_seed_raises_temperature_clamps_n(
    gateway: GatewayFactory,
    toy_upstream: str,
    redis_sync: redis.Redis,
    redis_url: str,
    keyspace: KeySpace,
    stream: bool,
) -> None:
    body = {**CHAT, "max_tokens": 12, "seed": 42, "temperature": 0, "n": 4}
    with gateway(toy_upstream) as gw:
        allowed = [chat_text(gw, body, stream) for _ in range(3)]
        set_level(redis_url, keyspace, "degrade")
        degraded = [chat_text(gw, body, stream) for _ in range(4)]
        events = wait_for_events(redis_sync, keyspace, 7)
    # allow: n=4 choices, and a fixed seed at temperature 0 repeats itself exactly
    assert all(len(choices) == 4 for choices in allowed)
    assert len({tuple(choices) for choices in allowed}) == 1
    # degrade: one choice each, and the same request no longer yields one dataset
    assert all(len(choices) == 1 for choices in degraded)
    assert len({choices[0] for choices in degraded}) > 1
    mods = [e["modifications"].split(",") for e in events if e["level"] == "degrade"]
    assert len(mods) == 4
    for m in mods:
        assert {"seed_dropped", "temperature_raised:0.0>0.7", "n_clamped:4>1"} <= set(m)
    assert all(e["modifications"] == "" for e in events if e["level"] == "allow")


def test_shadow_policy_forwards_unchanged(
    gateway: GatewayFactory, toy_upstream: str, redis_sync: redis.Redis, keyspace: KeySpace
) -> None:
    body = {**CHAT, "logprobs": True, "top_logprobs": 20, "logit_bias": {"682": 1}}
    with gateway(toy_upstream, {"shadow": True}) as gw:
        counts = chat_top_counts(gw, body, stream=False)
        events = wait_for_events(redis_sync, keyspace, 1)
    assert set(counts) == {20}
    assert events[0]["decision"] == "admitted"
    assert {"logit_bias_with_logprobs_refused", "shadow"} <= set(events[0]["reasons"].split(","))
