"""Response protection through a real gateway in front of the real toy upstream."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis
from redis.asyncio import Redis
from sklearn.datasets import load_digits

from gateway.identity import client_id_for
from gateway.keys import KeySpace
from gateway.ratelimit.limiter import Limiter
from sim.toy_upstream import create_app
from tests.gateway.conftest import GatewayFactory, wait_for_events
from tests.servers import serve_app

KEY = "protect-key"
AUTH = {"authorization": f"Bearer {KEY}"}
THINK = re.compile(r"<think>.*?</think>", re.S)


@pytest.fixture(scope="module")
def toy() -> Iterator[str]:
    with serve_app(create_app()) as url:
        yield url


def set_level(redis_url: str, keyspace: KeySpace, level: str) -> None:
    async def go() -> None:
        client = Redis.from_url(redis_url)
        try:
            level_key = keyspace.level(client_id_for(KEY, b"test-secret"))
            await Limiter(client).set_level(level_key, level, ["test"], 60)
        finally:
            await client.aclose()

    asyncio.run(go())


def chat(model: str = "toy-lm", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "what do you think about cats"}],
        "max_tokens": 16,
        "seed": 11,
        "logprobs": True,
        "top_logprobs": 5,
        **extra,
    }


def sse(text: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[6:])
        for line in text.split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def streamed(url: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    """A streamed answer put back together: (content, logprob entries, chunks)."""
    chunks = sse(httpx.post(url + path, json={**body, "stream": True}, headers=headers).text)
    text, entries = "", []
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice.get("delta")
            text += (delta.get("content") if delta is not None else choice.get("text")) or ""
            lp = choice.get("logprobs")
            if lp and lp.get("content"):
                entries += lp["content"]
    return text, entries, chunks


def assert_rounded_same_top(gw: list[dict[str, Any]], direct: list[dict[str, Any]]) -> None:
    assert [e["token"] for e in gw] == [e["token"] for e in direct]
    for g, d in zip(gw, direct, strict=True):
        assert g["logprob"] == round(d["logprob"], 3)
        assert [t["token"] for t in g["top_logprobs"]] == [t["token"] for t in d["top_logprobs"]]
        assert [t["logprob"] for t in g["top_logprobs"]] == [
            round(t["logprob"], 3) for t in d["top_logprobs"]
        ]


def test_allow_rounds_logprobs_and_keeps_the_top_token(
    gateway: GatewayFactory, toy: str, redis_sync: redis.Redis, keyspace: KeySpace
) -> None:
    path = "/v1/chat/completions"
    with gateway(toy) as gw:
        direct = httpx.post(toy + path, json=chat()).json()["choices"][0]
        mine = httpx.post(gw + path, json=chat(), headers=AUTH).json()["choices"][0]
        assert mine["message"] == direct["message"]
        assert_rounded_same_top(mine["logprobs"]["content"], direct["logprobs"]["content"])
        text, entries, chunks = streamed(gw, path, chat(), AUTH)
        _, direct_entries, direct_chunks = streamed(toy, path, chat(), {})
        assert text == direct["message"]["content"]
        assert_rounded_same_top(entries, direct_entries)
        assert len(chunks) == len(direct_chunks)
        events = wait_for_events(redis_sync, keyspace, 2)
    for event in events:
        assert event["modifications"].split(",") == ["logprobs_rounded:3"]


def test_allow_legacy_completions(gateway: GatewayFactory, toy: str) -> None:
    body = {"model": "toy-lm", "prompt": "the cat", "max_tokens": 8, "seed": 5, "logprobs": 5}
    with gateway(toy) as gw:
        direct = httpx.post(toy + "/v1/completions", json=body).json()["choices"][0]
        mine = httpx.post(gw + "/v1/completions", json=body, headers=AUTH).json()["choices"][0]
        chunks = sse(
            httpx.post(gw + "/v1/completions", json={**body, "stream": True}, headers=AUTH).text
        )
    assert mine["text"] == direct["text"]
    lp, dlp = mine["logprobs"], direct["logprobs"]
    assert lp["tokens"] == dlp["tokens"] and lp["text_offset"] == dlp["text_offset"]
    assert lp["token_logprobs"] == [round(v, 3) for v in dlp["token_logprobs"]]
    for top, dtop in zip(lp["top_logprobs"], dlp["top_logprobs"], strict=True):
        assert top == {k: round(v, 3) for k, v in dtop.items()}
        assert max(top, key=top.__getitem__) == max(dtop, key=dtop.__getitem__)
    streamed_values = [
        v
        for c in chunks
        for ch in c["choices"]
        if ch["logprobs"]
        for v in ch["logprobs"]["token_logprobs"]
    ]
    assert streamed_values == lp["token_logprobs"]


@pytest.mark.parametrize("level", ["watch", "degrade"])
def test_flagged_clients_get_no_reasoning(
    gateway: GatewayFactory,
    toy: str,
    redis_url: str,
    redis_sync: redis.Redis,
    keyspace: KeySpace,
    level: str,
) -> None:
    path = "/v1/chat/completions"
    body = chat("toy-lm-think", max_tokens=24)
    direct = httpx.post(toy + path, json=body).json()["choices"][0]
    assert direct["message"]["reasoning_content"] and "<think>" in direct["message"]["content"]
    set_level(redis_url, keyspace, level)
    # The text watermark (its own stage and tests) rewrites words; keep it out of this test.
    with gateway(toy, {"controls": {"watch": {"watermark_text": False}}}) as gw:
        mine = httpx.post(gw + path, json=body, headers=AUTH).json()["choices"][0]
        text, entries, chunks = streamed(gw, path, body, AUTH)
        events = wait_for_events(redis_sync, keyspace, 2)
    for answer in (mine["message"]["content"], text):
        assert "<think>" not in answer and "</think>" not in answer
        assert direct["message"]["reasoning_content"].strip() not in answer
    assert "reasoning_content" not in mine["message"]
    assert all("reasoning_content" not in c["choices"][0]["delta"] for c in chunks if c["choices"])
    for got, answer in ((mine["logprobs"]["content"], mine["message"]["content"]), (entries, text)):
        sent = "".join(e["token"] for e in got)
        assert sent and answer.endswith(sent)  # logprobs only of the visible answer
    if level == "watch":  # same seed, same sampling: the answer itself is unchanged
        assert mine["message"]["content"] == THINK.sub("", direct["message"]["content"])
        assert mine["message"]["content"] == text  # streamed and whole agree
        answer_entries = direct["logprobs"]["content"][-len(mine["logprobs"]["content"]) :]
        for g, d in zip(mine["logprobs"]["content"], answer_entries, strict=True):
            assert g["token"] == d["token"]
            assert abs(g["logprob"] - d["logprob"]) <= 0.05 + 0.005 + 1e-9
            assert g["top_logprobs"][0]["token"] == d["top_logprobs"][0]["token"]
    for event in events:
        assert event["level"] == level
        assert "reasoning_dropped" in event["modifications"].split(",")


def classify_policy(**probabilities: Any) -> dict[str, Any]:
    return {
        "routes": [
            {"path": "/v1/chat/completions", "kind": "openai-chat"},
            {
                "path": "/v1/classify",
                "kind": "probabilities",
                "probabilities_pointer": "/probabilities",
            },
        ],
        "controls": {"allow": {"probabilities": probabilities}},
    }


@pytest.mark.parametrize(
    "controls",
    [
        {"mode": "full"},
        {"mode": "round", "decimals": 2},
        {"mode": "top_k", "top_k": 2, "decimals": 3},
        {"mode": "labels"},
        {"mode": "reverse_sigmoid", "reverse_sigmoid_beta": 0.6, "reverse_sigmoid_gamma": 0.5},
    ],
)
def test_probability_endpoint_modes_keep_the_argmax(
    gateway: GatewayFactory, toy: str, controls: dict[str, Any]
) -> None:
    inputs = load_digits().data[:40].tolist()
    body = {"model": "toy-digits", "inputs": inputs}
    direct = np.array(httpx.post(toy + "/v1/classify", json=body).json()["probabilities"])
    with gateway(toy, classify_policy(**controls)) as gw:
        r = httpx.post(gw + "/v1/classify", json=body, headers=AUTH)
    assert r.status_code == 200
    got = np.array(r.json()["probabilities"])
    assert got.shape == direct.shape
    assert (got.argmax(axis=1) == direct.argmax(axis=1)).all()
    mode = controls["mode"]
    if mode == "full":
        assert (got == direct).all()
    elif mode == "round":
        assert np.allclose(got, direct, atol=0.005 + 0.01)
        assert (np.round(got, 2) == got).all()
    elif mode == "top_k":
        assert ((got > 0).sum(axis=1) <= 2).all()
        assert np.allclose(got.sum(axis=1), 1.0, atol=0.002)
    elif mode == "labels":
        assert (got == np.eye(10)[direct.argmax(axis=1)]).all()
    else:
        assert not np.allclose(got, direct, atol=0.01)
        assert np.allclose(got.sum(axis=1), 1.0, atol=0.05)
