from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from sklearn.datasets import load_digits
from starlette.applications import Starlette

from sim.toy_classifier import ToyClassifier, train_toy_classifier
from sim.toy_lm import ToyLM, load_toy_lm
from sim.toy_upstream import create_app

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi! What do you like to do on weekends?"}]


@contextmanager
def _serving(app: Starlette) -> Iterator[str]:
    """Runs ``app`` with uvicorn on a free loopback port in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "toy upstream did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def lm() -> ToyLM:
    return load_toy_lm()


@pytest.fixture(scope="module")
def classifier() -> ToyClassifier:
    return train_toy_classifier()


@pytest.fixture(scope="module")
def client(lm: ToyLM, classifier: ToyClassifier) -> Iterator[httpx.Client]:
    with (
        _serving(create_app(lm=lm, classifier=classifier)) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        yield http


def _events(response: httpx.Response) -> list[Any]:
    """The SSE ``data:`` payloads; the literal ``[DONE]`` is kept as a string."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    payloads = [b.removeprefix("data: ") for b in blocks]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def _forced(lm: ToyLM, word: str = "pizza") -> dict[str, int]:
    token_id = lm.token_id(word)
    assert token_id is not None
    return {str(token_id): 100}


def test_models_lists_the_toy_models(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert {"toy-lm", "toy-digits"} <= {m["id"] for m in body["data"]}


def test_chat_completion_shape_usage_and_logprobs(client: httpx.Client, lm: ToyLM) -> None:
    request = {"model": "toy-lm", "messages": HI, "max_tokens": 12, "seed": 5}
    request |= {"logprobs": True, "top_logprobs": 3}
    response = client.post(CHAT, json=request)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    entries = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == content
    for entry in entries:
        assert entry["bytes"] == list(entry["token"].encode())
        assert entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert tops == sorted(tops, reverse=True)
        assert entry["logprob"] <= tops[0] + 1e-12
        assert all(t["bytes"] == list(t["token"].encode()) for t in entry["top_logprobs"])
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(lm.tokenize(HI[0]["content"])) + 1  # + <eos>
    assert usage["completion_tokens"] == len(entries)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    finish = "length" if len(entries) == 12 else "stop"
    assert choice["finish_reason"] == finish
    assert client.post(CHAT, json=request).json()["choices"] == body["choices"]  # seeded


def test_chat_without_logprobs_and_max_completion_tokens(client: httpx.Client, lm: ToyLM) -> None:
    request = {"messages": HI, "max_completion_tokens": 5, "logit_bias": _forced(lm)}
    body = client.post(CHAT, json=request).json()
    (choice,) = body["choices"]
    assert choice["logprobs"] is None
    assert choice["message"]["content"] == "pizza pizza pizza pizza pizza"
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


def test_greedy_n_choices_and_stop(client: httpx.Client, lm: ToyLM) -> None:
    request = {"messages": HI, "temperature": 0, "n": 3, "max_tokens": 20}
    choices = client.post(CHAT, json=request).json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert len({c["message"]["content"] for c in choices}) == 1
    sampled = client.post(CHAT, json=request | {"temperature": 1.5, "seed": 1}).json()["choices"]
    assert len({c["message"]["content"] for c in sampled}) > 1
    forced = {"messages": HI, "max_tokens": 8, "logit_bias": _forced(lm), "stop": [" pizza"]}
    body = client.post(CHAT, json=forced).json()
    assert body["choices"][0]["message"]["content"] == "pizza"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 2


def test_streaming_chat_matches_non_streaming(client: httpx.Client) -> None:
    request = {"messages": HI, "max_tokens": 10, "seed": 11, "logprobs": True, "top_logprobs": 2}
    whole = client.post(CHAT, json=request).json()
    streamed = {"stream": True, "stream_options": {"include_usage": True}}
    events = _events(client.post(CHAT, json=request | streamed))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == whole["usage"]
    final = chunks[-2]["choices"][0]
    assert final["finish_reason"] == whole["choices"][0]["finish_reason"]
    token_chunks = [c["choices"][0] for c in chunks[1:-2]]
    text = "".join(c["delta"]["content"] for c in token_chunks)
    assert text == whole["choices"][0]["message"]["content"]
    entries = [e for c in token_chunks for e in c["logprobs"]["content"]]
    assert entries == whole["choices"][0]["logprobs"]["content"]


def test_streaming_without_usage_option_sends_no_usage(client: httpx.Client) -> None:
    events = _events(client.post(CHAT, json={"messages": HI, "max_tokens": 3, "stream": True}))
    assert events[-1] == "[DONE]"
    assert all("usage" not in c for c in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_think_model_returns_reasoning(client: httpx.Client) -> None:
    request = {"model": "toy-lm-think", "messages": HI, "max_tokens": 30, "seed": 2}
    message = client.post(CHAT, json=request).json()["choices"][0]["message"]
    content, reasoning = message["content"], message["reasoning_content"]
    assert content.startswith("<think>" + reasoning + "</think>")
    assert reasoning
    events = _events(client.post(CHAT, json=request | {"stream": True}))
    deltas = [c["choices"][0]["delta"] for c in events[:-1] if c["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == content
    assert "".join(d.get("reasoning_content", "") for d in deltas) == reasoning


def test_legacy_completions_with_logprobs(client: httpx.Client, lm: ToyLM) -> None:
    request = {"prompt": ["i like to", "my dog"], "n": 2, "max_tokens": 6, "logprobs": 2}
    body = client.post("/v1/completions", json=request | {"seed": 3}).json()
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    for choice in body["choices"]:
        logprobs = choice["logprobs"]
        assert "".join(logprobs["tokens"]) == choice["text"]
        assert choice["text"].startswith(" ") or not choice["text"] or choice["text"][0] in ".,!?"
        offsets = np.cumsum([0] + [len(t) for t in logprobs["tokens"]])[:-1].tolist()
        assert logprobs["text_offset"] == offsets
        assert len(logprobs["token_logprobs"]) == len(logprobs["tokens"])
        assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    completion = sum(len(c["logprobs"]["tokens"]) for c in body["choices"])
    assert body["usage"] == {
        "prompt_tokens": len(lm.tokenize("i like to my dog")),
        "completion_tokens": completion,
        "total_tokens": len(lm.tokenize("i like to my dog")) + completion,
    }
    plain = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 3}).json()
    assert plain["choices"][0]["logprobs"] is None


def test_streaming_legacy_completions(client: httpx.Client) -> None:
    request = {"prompt": "i like to", "max_tokens": 6, "seed": 4, "logprobs": 1}
    whole = client.post("/v1/completions", json=request).json()["choices"][0]
    streamed = request | {"stream": True, "stream_options": {"include_usage": True}}
    events = _events(client.post("/v1/completions", json=streamed))
    assert events[-1] == "[DONE]"
    pieces = [c["choices"][0] for c in events[:-2]]
    assert "".join(p["text"] for p in pieces) == whole["text"]
    assert pieces[-1]["finish_reason"] == whole["finish_reason"]
    tokens = [t for p in pieces if p["logprobs"] for t in p["logprobs"]["tokens"]]
    assert tokens == whole["logprobs"]["tokens"]
    assert events[-2]["usage"]["completion_tokens"] == len(tokens)


def test_embeddings(client: httpx.Client, lm: ToyLM) -> None:
    request = {"model": "toy-lm", "input": ["good morning", "see you later"]}
    body = client.post("/v1/embeddings", json=request).json()
    vectors = [np.asarray(d["embedding"]) for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(np.linalg.norm(v) == pytest.approx(1.0) for v in vectors)
    assert body["usage"]["prompt_tokens"] == 5
    again = client.post("/v1/embeddings", json={"input": "good morning"}).json()
    assert again["data"][0]["embedding"] == body["data"][0]["embedding"]
    packed = client.post(
        "/v1/embeddings", json={"input": "good morning", "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(packed), dtype="<f4")
    np.testing.assert_allclose(decoded, vectors[0], rtol=1e-6)


def test_classify(client: httpx.Client) -> None:
    digits = load_digits()
    response = client.post("/v1/classify", json={"inputs": digits.data[:20].tolist()})
    body = response.json()
    assert body["model"] == "toy-digits"
    assert len(body["probabilities"]) == 20
    assert np.allclose(np.sum(body["probabilities"], axis=1), 1.0)
    assert body["labels"] == [int(np.argmax(p)) for p in body["probabilities"]]
    assert np.mean(np.asarray(body["labels"]) == digits.target[:20]) > 0.9


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {}),
        (CHAT, {"messages": []}),
        (CHAT, {"messages": "hi"}),
        (CHAT, {"messages": [{"content": "no role"}]}),
        (CHAT, {"messages": HI, "max_tokens": "ten"}),
        (CHAT, {"messages": HI, "max_tokens": 0}),
        (CHAT, {"messages": HI, "temperature": 3}),
        (CHAT, {"messages": HI, "n": True}),
        (CHAT, {"messages": HI, "logprobs": True, "top_logprobs": 21}),
        (CHAT, {"messages": HI, "top_logprobs": 2}),
        (CHAT, {"messages": HI, "logit_bias": {"x": 1}}),
        (CHAT, {"messages": HI, "logit_bias": {"99999999": 1}}),
        (CHAT, {"messages": HI, "logit_bias": {"5": 101}}),
        (CHAT, {"messages": HI, "stop": 5}),
        (CHAT, {"messages": HI, "stream": "yes"}),
        (CHAT, {"messages": HI, "seed": 1.5}),
        (CHAT, {"messages": HI, "model": 7}),
        ("/v1/completions", {"prompt": 5}),
        ("/v1/completions", {"prompt": "x", "logprobs": 50}),
        ("/v1/completions", {"prompt": ["x"] * 65}),
        ("/v1/embeddings", {"input": []}),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}),
        ("/v1/classify", {"inputs": [[1.0] * 63]}),
        ("/v1/classify", {"inputs": [["a"] * 64]}),
        ("/v1/classify", {}),
    ],
)
def test_bad_bodies_get_openai_style_400(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert "code" in error


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b"[" * 100_000, b""])
def test_malformed_json_gets_400(client: httpx.Client, raw: bytes) -> None:
    response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_and_route(client: httpx.Client) -> None:
    response = client.post(CHAT, json={"model": "gpt-9", "messages": HI})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404
    assert "error" in missing.json()
    assert client.get(CHAT).status_code == 405


def test_latency_and_token_delay(lm: ToyLM, classifier: ToyClassifier) -> None:
    app = create_app(lm=lm, classifier=classifier, latency_s=0.2, token_delay_s=0.05)
    with _serving(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        started = time.perf_counter()
        assert http.get("/v1/models").status_code == 200
        assert time.perf_counter() - started >= 0.2
        request = {"messages": HI, "max_tokens": 4, "stream": True, "logit_bias": _forced(lm)}
        started = time.perf_counter()
        events = _events(http.post(CHAT, json=request))
        assert time.perf_counter() - started >= 0.2 + 4 * 0.05
        assert events[-1] == "[DONE]"
