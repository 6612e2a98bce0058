"""Choosing the detector's model: the additive model alone, or combined with the sequence
model (torch), and a clear refusal where the combined model cannot load."""

from __future__ import annotations

import numpy as np
import pytest

from detectors import scoring
from detectors.models import sequence
from detectors.scoring import ModelUnavailable, check_model, load_default_models, score_windows


def test_combined_needs_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequence, "torch_available", lambda: False)
    check_model("additive")  # never needs torch
    with pytest.raises(ModelUnavailable, match="needs torch"):
        check_model("combined")
    with pytest.raises(ModelUnavailable, match="needs torch"):
        load_default_models("combined")


def test_combined_scores_are_the_mean_on_the_policy_scale() -> None:
    pytest.importorskip("torch")
    from sim.traffic import generate

    additive, combined = load_default_models(), load_default_models("combined")
    assert additive.sequence is None and combined.sequence is not None
    windows = [
        sorted(c.records[:200], key=lambda r: r.ts_ms)
        for scenario in ("self_instruct", "chat_user", "eval_harness")
        for c in generate(scenario, seed=5, clients=1, duration_s=3600)
    ]
    X = scoring.featurize(additive, windows)
    first = score_windows(additive, X, windows)
    both = score_windows(combined, X, windows)
    second = combined.sequence.score_windows(windows)
    assert np.array_equal(first, additive.scorer.score(X))
    assert np.allclose(both, combined.sequence.combine(first, second))
    # a monotone map of the mean: the order follows the mean of the two scores
    mean = (first + second) / 2
    assert list(np.argsort(both)) == list(np.argsort(mean))
    assert both[0] > 0.85 > max(both[1:])  # the harvester, then two benign clients


def test_a_mismatched_sequence_model_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    real = sequence.load_default_sequence_detector

    def other_calibration() -> sequence.SequenceDetector:
        loaded = real()
        loaded.combined["lr_version"] = "another-model"
        return loaded

    monkeypatch.setattr(sequence, "load_default_sequence_detector", other_calibration)
    with pytest.raises(ModelUnavailable, match="calibrated with the additive model"):
        load_default_models("combined")
