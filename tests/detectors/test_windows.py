"""Window features on hand-built records: each feature moves the way it should."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from detectors.schema import RequestRecord
from detectors.windows import FEATURE_NAMES, BenignReference, bounded_window, window_features
from tests.detectors import synth


def _f(records: list[RequestRecord] | tuple[RequestRecord, ...], name: str, **kw: object) -> float:
    return float(window_features(records, **kw)[FEATURE_NAMES.index(name)])  # type: ignore[arg-type]


@pytest.fixture
def chat() -> tuple[RequestRecord, ...]:
    return synth.benign_chat("c", random.Random(1), n=100).records


def _with(records: tuple[RequestRecord, ...], **params: object) -> list[RequestRecord]:
    return [replace(r, params={**r.params, **params}) for r in records]


def test_shape_and_empty(chat: tuple[RequestRecord, ...]) -> None:
    assert window_features(chat).shape == (len(FEATURE_NAMES),)
    assert not window_features([]).any()
    assert np.isfinite(window_features(chat[:1])).all()


def test_parameter_shares_move(chat: tuple[RequestRecord, ...]) -> None:
    assert _f(chat, "logprobs_share") == 0.0
    assert _f(_with(chat, logprobs=True, top_logprobs=20), "logprobs_share") == 1.0
    assert _f(_with(chat, top_logprobs=20), "top_logprobs_mean") == 1.0
    assert _f(_with(chat, logit_bias_tokens=5), "logit_bias_share") == 1.0
    assert _f(_with(chat, temperature=0), "temp0_share") == 1.0
    assert _f(_with(chat, max_tokens=4096), "high_max_tokens_share") == 1.0
    assert _f(_with(chat, n=4), "n_multi_share") == 1.0
    assert _f(_with(chat, seed=True), "seed_share") == 1.0


def test_status_and_turns(chat: tuple[RequestRecord, ...]) -> None:
    limited = [replace(r, status=429, decision="denied") for r in chat]
    assert _f(limited, "status_429_share") == 1.0
    assert _f(limited, "denied_share") == 1.0
    single = [replace(r, features=replace(r.features, messages=1, user_turns=1)) for r in chat]
    assert _f(single, "single_turn_share") == 1.0 > _f(chat, "single_turn_share")
    reasoning = [replace(r, features=replace(r.features, reasoning_marker=True)) for r in chat]
    assert _f(reasoning, "reasoning_share") == 1.0


def test_timing_regularity_and_rate(chat: tuple[RequestRecord, ...]) -> None:
    regular = [replace(r, ts_ms=synth.T0 + i * 1000) for i, r in enumerate(chat)]
    assert _f(regular, "iat_cv") < 0.01 < _f(chat, "iat_cv")
    assert _f(regular, "burstiness") == pytest.approx(-1.0)
    assert _f(regular, "log_rate_per_min") > _f(chat, "log_rate_per_min")


def test_template_reuse_and_near_duplicates(chat: tuple[RequestRecord, ...]) -> None:
    rng = random.Random(2)
    t = rng.getrandbits(64)
    templated = [
        replace(r, features=replace(r.features, template=t, sketch=t ^ (1 << rng.randrange(64))))
        for r in chat
    ]
    assert _f(templated, "template_reuse") > 0.95 > _f(chat, "template_reuse")
    assert _f(templated, "top_template_share") == 1.0
    assert _f(templated, "near_dup_rate") == 1.0 > _f(chat, "near_dup_rate")
    assert _f(templated, "sketch_spread") < _f(chat, "sketch_spread")


def test_mmd_grows_away_from_benign(chat: tuple[RequestRecord, ...]) -> None:
    rng = random.Random(3)
    others = [r for i in range(20) for r in synth.benign_chat(f"b{i}", rng, n=30).records]
    ref = BenignReference.from_records(others, size=256)
    t = rng.getrandbits(64)
    templated = [replace(r, features=replace(r.features, template=t, sketch=t)) for r in chat]
    assert _f(chat, "mmd_benign_sketch") == 0.0  # no reference: not computed
    assert _f(templated, "mmd_benign_sketch", benign=ref) > 3 * _f(
        chat, "mmd_benign_sketch", benign=ref
    )


def test_bounded_window_keeps_last_day() -> None:
    recs = synth.benign_chat("c", random.Random(4), n=30).records
    late = [
        replace(r, ts_ms=r.ts_ms + (2 * 86_400_000 if i >= 20 else 0)) for i, r in enumerate(recs)
    ]
    assert len(bounded_window(late)) == 10
    assert len(bounded_window(recs, 5)) == 5
