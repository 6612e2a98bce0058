"""``antidistill provenance verify`` and ``verify-text`` as an operator runs them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
import yaml
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner

from gateway.cli import app
from gateway.keys import KeySpace
from gateway.provenance import provenance_key
from gateway.provenance.dawn import Mark, mark_response, store_marks
from gateway.provenance.text import client_text_key, mark_text
from sim.toy_classifier import train_toy_classifier
from tests.servers import serve_app

runner = CliRunner()
SECRET = b"cli-secret"
CLIENT = "a" * 64


def _suspect(model: Any) -> Starlette:
    """A model server with the toy classifier's API, answering one-hot vectors."""

    async def classify(request: Request) -> Response:
        inputs = orjson.loads(await request.body())["inputs"]
        labels = model.predict(np.asarray(inputs))
        return JSONResponse({"probabilities": np.eye(10)[labels].tolist()})

    return Starlette(routes=[Route("/v1/classify", classify, methods=["POST"])])


@pytest.fixture(scope="module")
def harvest() -> tuple[np.ndarray, list[int], list[Mark]]:
    """What an attacker got from the gateway at level watch: inputs, answers, marks."""
    digits = load_digits().data
    rng = np.random.default_rng(3)
    x = np.round(
        np.vstack(
            [digits, *(np.clip(digits + rng.normal(0, 1, digits.shape), 0, 16) for _ in range(5))]
        ),
        2,
    )
    response = {"probabilities": train_toy_classifier().predict_proba(x.tolist())}
    marks = mark_response(
        provenance_key(SECRET), CLIENT, {"inputs": x.tolist()}, response, "/probabilities", 0.005
    )
    labels = [int(np.argmax(p)) for p in response["probabilities"]]
    return x, labels, marks


@pytest.fixture
def stored(redis_url: str, keyspace: KeySpace, tmp_path: Path, harvest: Any) -> Iterator[Path]:
    """The marks in Redis; yields a policy file naming this test's key prefix."""

    async def go(delete: bool) -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            if delete:
                await client.delete(keyspace.provenance(CLIENT))
            else:
                await store_marks(client, keyspace, CLIENT, harvest[2])
        finally:
            await client.aclose()

    asyncio.run(go(False))
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"store": {"key_prefix": keyspace.prefix}}))
    yield policy
    asyncio.run(go(True))


def _verify(url: str, redis_url: str, policy: Path, *extra: str) -> Any:
    return runner.invoke(
        app,
        [
            "provenance",
            "verify",
            "--endpoint",
            url,
            "--client",
            CLIENT,
            "--redis",
            redis_url,
            "--policy",
            str(policy),
            *extra,
        ],
    )


def test_verify_accuses_a_stolen_copy_and_not_an_independent_model(
    harvest: Any, stored: Path, redis_url: str
) -> None:
    x, labels, marks = harvest
    stolen = KNeighborsClassifier(n_neighbors=1).fit(x, labels)
    with serve_app(_suspect(stolen)) as url:
        result = _verify(url, redis_url, stored)
        as_json = _verify(url, redis_url, stored, "--json")
    assert result.exit_code == 0, result.output
    assert f"marks: {len(marks)} distinct" in result.output
    assert "verdict: evidence that the suspect learned" in result.output
    payload = orjson.loads(as_json.output)
    assert payload["matches"] == payload["marks"] == len(marks) and payload["log10_p"] < -20

    independent = train_toy_classifier(seed=1, test_size=0.5)
    with serve_app(_suspect(independent)) as url:
        result = _verify(url, redis_url, stored)
    assert result.exit_code == 0, result.output
    assert "verdict: no evidence" in result.output


def test_verify_without_marks_or_suspect(
    redis_url: str, keyspace: KeySpace, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"store": {"key_prefix": keyspace.prefix}}))
    result = _verify("http://127.0.0.1:9", redis_url, policy)
    assert result.exit_code == 0 and "no DAWN marks recorded" in result.output


def test_verify_reports_an_unreachable_suspect(stored: Path, redis_url: str) -> None:
    result = _verify("http://127.0.0.1:9", redis_url, stored)
    assert result.exit_code == 2 and "cannot query the suspect" in result.output


def test_verify_text(tmp_path: Path) -> None:
    key = client_text_key(provenance_key(SECRET), CLIENT)
    lines = [
        "yeah i think the movie was a big problem for the kids, honestly",
        "maybe we should start again, the teacher said it was huge and awesome",
        "i usually buy my bike at the store, it is cheap and simple",
        "hello! my mom and dad often watch movies, it is nice and funny",
        "the exam was difficult but i finished it quickly and correctly",
    ] * 3
    marked = tmp_path / "marked.jsonl"
    marked.write_text("\n".join(orjson.dumps({"text": mark_text(t, key)}).decode() for t in lines))
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(lines))

    def run(path: Path, client: str, *extra: str) -> Any:
        return runner.invoke(
            app,
            [
                "provenance",
                "verify-text",
                str(path),
                "--client",
                client,
                "--key-secret",
                "cli-secret",
                *extra,
            ],
        )

    result = run(marked, CLIENT, "--jsonl")
    assert result.exit_code == 0, result.output
    assert "verdict: evidence that the text carries" in result.output
    assert "verdict: no evidence" in run(marked, "b" * 64, "--jsonl").output
    assert "verdict: no evidence" in run(plain, CLIENT).output
    payload = orjson.loads(run(marked, CLIENT, "--jsonl", "--json").output)
    assert payload["matches"] == payload["contexts"] > 15 and payload["z"] > 3


def test_verify_text_needs_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("a big problem")
    result = runner.invoke(
        app,
        [
            "provenance",
            "verify-text",
            str(path),
            "--client",
            CLIENT,
            "--data-dir",
            str(tmp_path / "none"),
        ],
        env={"ANTIDISTILL_KEY_SECRET": ""},
    )
    assert result.exit_code == 2 and "no key secret" in result.output
    assert not (tmp_path / "none" / "key_secret").exists()
