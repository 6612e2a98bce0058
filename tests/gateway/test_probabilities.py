"""Probability-output defences: the numpy functions and the ProbabilityGuard stage."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.controls import ControlLadder, ControlSet, ProbabilityControls, resolve
from gateway.exchange import Exchange
from gateway.policy import Policy, Route, RouteKind
from gateway.protect.pointer import get, locate
from gateway.protect.probabilities import (
    keep_argmax,
    labels,
    protect,
    reverse_sigmoid,
    round_rows,
    top_k,
)
from gateway.stages.probabilities import ProbabilityGuard


@st.composite
def batches(draw: st.DrawFn) -> np.ndarray:
    """Batches of probability rows: random, peaked, with ties and zeros."""
    n = draw(st.integers(1, 8))
    k = draw(st.integers(2, 12))
    raw = draw(
        hnp.arrays(
            np.float64,
            (n, k),
            elements=st.one_of(st.just(0.0), st.floats(1e-9, 1.0), st.just(0.5)),
        )
    )
    raw[:, 0] += draw(st.floats(1e-6, 1.0))  # no empty row
    return raw / raw.sum(axis=1, keepdims=True)


MODES = ["full", "round", "top_k", "labels", "reverse_sigmoid"]


@given(
    batches(),
    st.sampled_from(MODES),
    st.integers(0, 8),
    st.integers(1, 12),
    st.floats(0.0, 5.0),
    st.floats(0.01, 5.0),
)
@settings(max_examples=500, deadline=None)
def test_every_mode_keeps_every_rows_argmax(
    p: np.ndarray, mode: str, decimals: int, k: int, beta: float, gamma: float
) -> None:
    out = protect(p, mode, decimals=decimals, k=k, beta=beta, gamma=gamma)  # type: ignore[arg-type]
    assert out.shape == p.shape
    assert (np.argmax(out, axis=1) == np.argmax(p, axis=1)).all()
    assert (out >= 0).all() and np.isfinite(out).all()
    if mode in ("round", "top_k", "reverse_sigmoid"):
        assert (np.round(out, decimals) == out).all()  # on the grid, tie-breaks included


@given(batches(), st.integers(1, 12), st.floats(0.0, 5.0), st.floats(0.01, 5.0))
@settings(max_examples=300, deadline=None)
def test_exact_modes_sum_to_one(p: np.ndarray, k: int, beta: float, gamma: float) -> None:
    for out in (top_k(p, k), labels(p), reverse_sigmoid(p, beta, gamma)):
        assert np.allclose(out.sum(axis=1), 1.0, atol=1e-9)
        assert (np.argmax(out, axis=1) == np.argmax(p, axis=1)).all()
    kept = top_k(p, k)
    assert ((kept > 0).sum(axis=1) <= k).all()


@given(batches())
@settings(max_examples=200, deadline=None)
def test_labels_is_one_hot_of_each_rows_own_argmax(p: np.ndarray) -> None:
    out = labels(p)
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert (out.sum(axis=1) == 1.0).all()
    assert (np.argmax(out, axis=1) == np.argmax(p, axis=1)).all()
    for i in range(len(p)):  # a batch is exactly its rows one at a time
        assert (out[i] == labels(p[i : i + 1])[0]).all()


def test_mixed_batch_labels() -> None:
    """ART's ClassLabels marks every row's class in every row of a mixed batch."""
    p = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    assert (labels(p) == np.eye(3)).all()
    assert (protect(p, "labels") == np.eye(3)).all()
    rs = reverse_sigmoid(p, 0.6, 0.5)
    for i in range(3):
        assert np.allclose(rs[i], reverse_sigmoid(p[i : i + 1], 0.6, 0.5)[0])


def test_reverse_sigmoid_is_the_papers_formula() -> None:
    p = np.array([[0.6, 0.3, 0.1], [0.25, 0.5, 0.25]])
    beta, gamma = 0.4, 0.7

    def sigmoid(z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-z))

    r = beta * (sigmoid(gamma * np.log(p / (1 - p))) - 0.5)
    want = (p - r) / (p - r).sum(axis=1, keepdims=True)
    assert np.allclose(reverse_sigmoid(p, beta, gamma), want)
    assert not np.allclose(want, p)  # it perturbs
    assert np.allclose(reverse_sigmoid(p, 0.0, gamma), p)  # beta 0: no change


def test_reverse_sigmoid_enforces_the_argmax_where_the_formula_flips_it() -> None:
    p = np.array([[0.7, 0.2, 0.1]])
    raw = p - 3.0 * (p - 0.5)  # gamma 1: (1 - beta) * y + beta / 2, order reversed
    assert np.argmax(raw) != 0
    out = reverse_sigmoid(p, 3.0, 1.0)
    assert np.argmax(out) == 0 and np.isclose(out.sum(), 1.0)
    zeros = reverse_sigmoid(np.array([[1.0, 0.0]]), 0.3, 2.0)  # saturated inputs stay finite
    assert np.isfinite(zeros).all() and np.argmax(zeros) == 0


def test_rounding_breaks_new_ties_for_the_argmax() -> None:
    p = np.array([[0.3004, 0.3001, 0.3995], [0.4996, 0.5004, 0.0]])
    out = round_rows(p, 2)
    assert (np.argmax(out, axis=1) == [2, 1]).all()
    assert out.tolist()[1] == [0.5, 0.51, 0.0]  # one unit, just enough
    first = round_rows(np.array([[0.4004, 0.4001, 0.1995]]), 2)
    assert first.tolist() == [[0.4, 0.4, 0.2]]  # np.argmax already picks the first
    late = keep_argmax(np.array([[0.5, 0.5]]), np.array([1]), 0.01)
    assert late.tolist() == [[0.5, 0.51]]


def test_top_k_keeps_the_largest_and_renormalises() -> None:
    out = top_k(np.array([[0.1, 0.5, 0.15, 0.25]]), 2)
    assert np.allclose(out, [[0.0, 0.5 / 0.75, 0.0, 0.25 / 0.75]])


# -- the stage ----------------------------------------------------------------------------


def exchange(pointer: str = "/probabilities", shadow: bool = False, **probs: Any) -> Exchange:
    route = Route(path="/v1/classify", kind=RouteKind.PROBABILITIES, probabilities_pointer=pointer)
    ex = Exchange(
        id="t",
        route=route,
        policy=Policy(shadow=shadow, routes=(route,)),
        method="POST",
        headers={},
        raw_body=b"{}",
    )
    ladder = ControlLadder(allow=ControlSet(probabilities=ProbabilityControls(**probs)))
    ex.controls = resolve("allow", ladder)
    return ex


ROWS = [[0.05, 0.7, 0.25], [0.6, 0.1, 0.3], [0.2, 0.2, 0.6]]


def test_stage_modes_on_a_batch() -> None:
    guard = ProbabilityGuard()
    for mode, extra in [
        ("round", {"decimals": 1}),
        ("top_k", {"top_k": 2, "decimals": 3}),
        ("labels", {}),
        ("reverse_sigmoid", {"reverse_sigmoid_beta": 0.6, "reverse_sigmoid_gamma": 0.5}),
    ]:
        body = {"probabilities": copy.deepcopy(ROWS), "labels": [1, 0, 2]}
        ex = exchange(mode=mode, **extra)
        assert guard.on_json(ex, body), mode
        out = body["probabilities"]
        assert [int(np.argmax(r)) for r in out] == [1, 0, 2]
        assert body["labels"] == [1, 0, 2]
        assert len(ex.modifications) == 1 and ex.modifications[0].startswith("probabilities_")
    body = {"probabilities": copy.deepcopy(ROWS)}
    assert not guard.on_json(exchange(mode="full"), body)
    assert body == {"probabilities": ROWS}


def test_stage_default_ladder_rounds_at_allow() -> None:
    ex = exchange()
    body = {"probabilities": copy.deepcopy(ROWS)}
    body["probabilities"][0] = [0.0512345, 0.6987655, 0.25]
    assert ProbabilityGuard().on_json(ex, body)
    assert body["probabilities"][0] == [0.051, 0.699, 0.25]
    assert ex.modifications == ["probabilities_rounded:3"]


@pytest.mark.parametrize(
    "value",
    [
        "nope",
        [],
        [["a", 0.5]],
        [[1.5, -0.5]],
        [[0.0, 0.0]],
        [[float("nan"), 1.0]],
        [[True, False]],
        {"x": 1},
        [None],
    ],
)
def test_malformed_output_passes_unchanged(value: Any) -> None:
    body = {"probabilities": copy.deepcopy(value)}
    assert not ProbabilityGuard().on_json(exchange(mode="labels"), body)
    assert body == {"probabilities": value}


def test_mixed_valid_and_malformed_rows_single_vectors_and_binary() -> None:
    guard = ProbabilityGuard()
    body = {"probabilities": [[0.3, 0.7], "junk", [0.2, 0.5, 0.3], [0.9]]}
    assert guard.on_json(exchange(mode="labels"), body)
    assert body["probabilities"] == [[0.0, 1.0], "junk", [0.0, 1.0, 0.0], [1.0]]
    single = {"probabilities": [0.2, 0.5, 0.3]}
    assert guard.on_json(exchange(mode="labels"), single)
    assert single == {"probabilities": [0.0, 1.0, 0.0]}
    binary = {"probabilities": [[0.3], [0.6]]}
    assert guard.on_json(exchange(mode="round", decimals=0), binary)
    assert binary == {"probabilities": [[0.0], [1.0]]}


def test_pointer_into_nested_documents() -> None:
    body = {"result": {"outputs": [{"scores": [0.1, 0.9]}]}}
    ex = exchange("/result/outputs/0/scores", mode="labels")
    assert ProbabilityGuard().on_json(ex, body)
    assert body == {"result": {"outputs": [{"scores": [0.0, 1.0]}]}}
    assert not ProbabilityGuard().on_json(exchange("/missing", mode="labels"), body)
    doc = {"a/b": {"~": [1, 2]}}
    location = locate(doc, "/a~1b/~0/1")
    assert location is not None and get(location) == 2
    assert locate(doc, "/a~1b/~0/01") is None and locate(doc, "") is None


def test_shadow_and_other_routes() -> None:
    body = {"probabilities": copy.deepcopy(ROWS)}
    ex = exchange(shadow=True, mode="labels")
    assert not ProbabilityGuard().on_json(ex, body)
    assert body == {"probabilities": ROWS}
    assert ex.modifications == ["shadow:probabilities_labels"]
    chat = exchange(mode="labels")
    chat.route = Route(path="/v1/chat/completions", kind=RouteKind.OPENAI_CHAT)
    assert not ProbabilityGuard().on_json(chat, body)
