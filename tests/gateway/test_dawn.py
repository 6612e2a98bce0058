from __future__ import annotations

import asyncio
import copy
import math
from collections import Counter
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier

from gateway.controls import resolve
from gateway.exchange import Exchange
from gateway.identity import Client, client_id_for
from gateway.keys import KeySpace
from gateway.policy import Limits, Policy, Route, RouteKind
from gateway.provenance import provenance_key
from gateway.provenance.dawn import (
    canonical_input,
    distinct_dawn_marks,
    evidence,
    keyed_mark,
    load_marks,
    mark_response,
    store_marks,
)
from gateway.ratelimit.limiter import Limiter
from gateway.stages.dawn import MARKS_STATE, DawnMark
from sim.toy_classifier import train_toy_classifier
from sim.toy_upstream import create_app as create_toy_upstream
from tests.gateway.conftest import GatewayFactory, wait_for_events
from tests.servers import serve_app

KEY = provenance_key(b"test-secret")
CLIENT = "c" * 64


@pytest.fixture(scope="module")
def toy() -> Any:
    return train_toy_classifier()


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    """Digits and noisy copies of them: the inputs an extraction attacker might send."""
    digits = load_digits().data
    rng = np.random.default_rng(0)
    noisy = [np.clip(digits + rng.normal(0, 1.0, digits.shape), 0, 16) for _ in range(5)]
    return np.round(np.vstack([digits, *noisy]), 2)


def _answers(toy: Any, x: np.ndarray) -> dict[str, Any]:
    probs = toy.predict_proba(x.tolist())
    return {"probabilities": probs, "labels": [int(np.argmax(p)) for p in probs]}


def test_selection_rate_and_labels_follow_the_key() -> None:
    rng = np.random.default_rng(1)
    n, fraction = 100_000, 0.005
    labels = Counter()
    for _ in range(n):
        canonical = canonical_input(rng.random(8).tolist())
        assert canonical is not None
        label = keyed_mark(KEY, CLIENT, canonical, 3, 10, fraction)
        if label is not None:
            labels[label] += 1
    marked = sum(labels.values())
    sd = math.sqrt(n * fraction * (1 - fraction))
    assert abs(marked - n * fraction) < 5 * sd
    assert 3 not in labels and set(labels) == set(range(10)) - {3}
    assert max(labels.values()) < 2.5 * min(labels.values())


def test_canonical_input() -> None:
    assert canonical_input([16, 0, -0.0]) == canonical_input([16.0, 0.0, 0.0])
    assert canonical_input([1.0, 2.0]) != canonical_input([[1.0, 2.0]])
    for bad in ([], "x", [1, "a"], [[1, 2], [3]], None):
        assert canonical_input(bad) is None


def test_marks_are_deterministic_and_per_client(toy: Any, queries: np.ndarray) -> None:
    request = {"inputs": queries.tolist()}
    answers = _answers(toy, queries)
    first, again = copy.deepcopy(answers), copy.deepcopy(answers)
    marks = mark_response(KEY, CLIENT, request, first, "/probabilities", 0.005)
    assert marks == mark_response(KEY, CLIENT, request, again, "/probabilities", 0.005)
    assert first == again
    other = mark_response(KEY, "d" * 64, request, copy.deepcopy(answers), "/probabilities", 0.005)
    assert {canonical_input(m["input"]) for m in marks} != {
        canonical_input(m["input"]) for m in other
    }
    assert 20 <= len(marks) <= 90  # ~52 expected of 10,782 inputs


def test_argmax_changes_exactly_on_marked_inputs(toy: Any, queries: np.ndarray) -> None:
    request = {"inputs": queries.tolist()}
    original = _answers(toy, queries)
    marked = copy.deepcopy(original)
    marks = mark_response(KEY, CLIENT, request, marked, "/probabilities", 0.02)
    by_input = {canonical_input(m["input"]): m for m in marks}
    changed = 0
    for x, before, after, label in zip(
        request["inputs"],
        original["probabilities"],
        marked["probabilities"],
        marked["labels"],
        strict=True,
    ):
        mark = by_input.get(canonical_input(x))
        assert sorted(before) == sorted(after)  # a permutation: same values
        if mark is None:
            assert after == before
            assert label == int(np.argmax(before))
        else:
            changed += 1
            assert int(np.argmax(before)) == mark["true_label"] != mark["label"]
            assert int(np.argmax(after)) == mark["label"] == label
    assert changed == len(marks) > 100


def test_ties_and_odd_shapes_are_left_alone() -> None:
    request = {"inputs": [[float(i), 1.0] for i in range(2000)]}
    tied = {"probabilities": [[0.4, 0.4, 0.2] for _ in range(2000)]}
    assert mark_response(KEY, CLIENT, request, tied, "/probabilities", 0.005) == []
    mismatched = {"probabilities": [[0.7, 0.2, 0.1]] * 3}
    assert mark_response(KEY, CLIENT, request, mismatched, "/probabilities", 0.005) == []
    assert mark_response(KEY, CLIENT, None, tied, "/probabilities", 0.005) == []


def test_single_vector_answers_are_marked() -> None:
    found = None
    for i in range(5000):
        response = {"probabilities": [0.05, 0.8, 0.1, 0.05]}
        marks = mark_response(
            KEY, CLIENT, {"inputs": [float(i)]}, response, "/probabilities", 0.005
        )
        if marks:
            found = (marks[0], response)
            break
    assert found is not None
    mark, response = found
    assert int(np.argmax(response["probabilities"])) == mark["label"] != 1


def _exchange(level: str, fraction: float | None = None, shadow: bool = False) -> Exchange:
    route = Route(path="/v1/classify", kind=RouteKind.PROBABILITIES, probabilities_pointer="/p")
    ex = Exchange(
        id="x",
        route=route,
        policy=Policy(shadow=shadow),
        method="POST",
        headers={},
        raw_body=b"",
    )
    ex.client = Client(id=CLIENT, tier="default", known=False, allowlisted=False, limits=Limits())
    controls = resolve(level)
    if fraction is not None:
        probs = controls.probabilities.model_copy(update={"dawn_fraction": fraction})
        controls = controls.model_copy(update={"probabilities": probs})
    ex.controls = controls
    return ex


def test_stage_records_marks_only_when_enabled(toy: Any, queries: np.ndarray) -> None:
    stage = DawnMark(KEY)
    answers = {"p": toy.predict_proba(queries.tolist())}
    ex = _exchange("allow")
    ex.body = {"inputs": queries.tolist()}
    body = copy.deepcopy(answers)
    assert stage.on_json(ex, body) is False and body == answers and ex.modifications == []

    ex = _exchange("watch")
    ex.body = {"inputs": queries.tolist()}
    body = copy.deepcopy(answers)
    assert stage.on_json(ex, body) is True
    marks = ex.state[MARKS_STATE]
    assert ex.modifications == [f"dawn_marked:{len(marks)}"] and marks
    assert all(m["route"] == "/v1/classify" and m["kind"] == "dawn" for m in marks)
    orjson.dumps(marks)  # JSON-able

    ex = _exchange("watch", shadow=True)
    ex.body = {"inputs": queries.tolist()}
    body = copy.deepcopy(answers)
    assert stage.on_json(ex, body) is False and body == answers
    assert MARKS_STATE not in ex.state and ex.modifications[0].startswith("shadow:dawn_marked:")


def test_stage_needs_a_key() -> None:
    with pytest.raises(ValueError):
        DawnMark(b"")


async def test_store_and_load_marks(redis_url: str, keyspace: KeySpace) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        marks = [{"kind": "dawn", "input": [0.5], "label": 1, "true_label": 0, "classes": 3}]
        await store_marks(redis, keyspace, CLIENT, marks * 3)
        await store_marks(redis, keyspace, CLIENT, [])
        assert await load_marks(redis, keyspace, CLIENT) == marks * 3
        many = [{**marks[0], "input": [float(i)]} for i in range(10)]
        await store_marks(redis, keyspace, CLIENT, many, cap=4)
        assert await load_marks(redis, keyspace, CLIENT) == many[-4:]
        assert await load_marks(redis, keyspace, "e" * 64) == []
    finally:
        await redis.delete(keyspace.provenance(CLIENT))
        await redis.aclose()


def test_verify_separates_a_stolen_copy_from_an_independent_model(
    toy: Any, queries: np.ndarray
) -> None:
    """The attacker queries the gateway at level watch (0.5 %) and trains on its answers."""
    request = {"inputs": queries.tolist()}
    answers = _answers(toy, queries)
    marks = mark_response(KEY, CLIENT, request, answers, "/probabilities", 0.005)
    marks = distinct_dawn_marks([*marks, *marks])
    assert len(marks) >= 20
    x_marks = np.array([m["input"] for m in marks])

    stolen = KNeighborsClassifier(n_neighbors=1).fit(queries, answers["labels"])
    result = evidence(marks, stolen.predict(x_marks).tolist())
    assert result.matches == result.deviations == len(marks)
    assert result.log_p < math.log(1e-15)

    independent = train_toy_classifier(seed=1, test_size=0.5)  # true labels, other split
    result = evidence(marks, independent.predict(x_marks.tolist()))
    assert result.matches <= 2 and result.p_value > 0.01

    copycat_of_truth = KNeighborsClassifier(n_neighbors=1).fit(
        queries, toy.predict(queries.tolist())
    )
    assert evidence(marks, copycat_of_truth.predict(x_marks).tolist()).p_value == 1.0


def test_verify_false_accusation_rate_is_at_most_alpha() -> None:
    """Suspects answering at random (always deviating): p < 0.05 at most ~5 % of the time."""
    rng = np.random.default_rng(7)
    marks = [
        {
            "kind": "dawn",
            "input": [float(i)],
            "label": int(rng.integers(1, 10)),
            "true_label": 0,
            "classes": 10,
        }
        for i in range(40)
    ]
    rejected = 0
    trials = 1000
    for _ in range(trials):
        answers = rng.integers(0, 10, size=len(marks)).tolist()
        rejected += evidence(marks, answers).p_value < 0.05
    assert rejected / trials < 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_evidence_with_mixed_class_counts() -> None:
    marks = [
        {"kind": "dawn", "input": [1.0], "label": 1, "true_label": 0, "classes": 2},
        {"kind": "dawn", "input": [2.0], "label": 2, "true_label": 0, "classes": 5},
    ]
    result = evidence(marks, [1, 2])
    assert result.matches == 2 and math.isclose(result.p_value, 1.0 * 0.25)
    with pytest.raises(ValueError):
        evidence(marks, [1])


# -- through the real gateway ------------------------------------------------------------

GATEWAY_POLICY = {
    "routes": [
        {"path": "/v1/classify", "kind": "probabilities", "probabilities_pointer": "/probabilities"}
    ],
    "tiers": {
        "default": {
            "limits": {
                "requests_per_minute": 1000,
                "tokens_per_minute": 1e9,
                "tokens_per_day": 1e10,
                "max_concurrent": 8,
            }
        }
    },
}


def _set_level(redis_url: str, keys: KeySpace, client_id: str, level: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await Limiter(client).set_level(keys.level(client_id), level, ["t"], 60)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_gateway_marks_at_watch_only(
    gateway: GatewayFactory,
    redis_url: str,
    keyspace: KeySpace,
    toy: Any,
    queries: np.ndarray,
) -> None:
    client_id = client_id_for("dawn-key", b"test-secret")
    headers = {"authorization": "Bearer dawn-key"}
    batches = [queries[i : i + 1500].tolist() for i in range(0, len(queries), 1500)]
    with (
        serve_app(create_toy_upstream(classifier=toy)) as upstream,
        gateway(upstream, policy=GATEWAY_POLICY) as gw,
    ):

        def ask(batch: list[list[float]]) -> list[int]:
            r = httpx.post(f"{gw}/v1/classify", json={"inputs": batch}, headers=headers, timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            labels = [int(np.argmax(p)) for p in body["probabilities"]]
            assert body["labels"] == labels
            return labels

        assert ask(batches[0]) == toy.predict(batches[0])
        _set_level(redis_url, keyspace, client_id, "watch")
        changed = 0
        for batch in batches:
            truth = toy.predict(batch)
            expected = [
                keyed_mark(KEY, client_id, canonical_input(x) or b"", y, 10, 0.005)
                for x, y in zip(batch, truth, strict=True)
            ]
            got = ask(batch)
            assert got == [y if m is None else m for y, m in zip(truth, expected, strict=True)]
            assert got == ask(batch)  # asking again gives the same answers
            changed += sum(m is not None for m in expected)
        assert changed >= 20
    client = redis_sync.Redis.from_url(redis_url)
    try:
        events = wait_for_events(client, keyspace, 2 + 2 * len(batches))
    finally:
        client.close()
    marked = [
        int(m.split(":")[1])
        for e in events
        for m in e.get("modifications", "").split(",")
        if m.startswith("dawn_marked:")
    ]
    assert sum(marked) == 2 * changed
