"""The detector artifact: fit, save, load (no pickle), score, reason codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detectors.models import ArtifactError, Detector, load_default_detector, load_detector
from detectors.train import fit_detector, trajectory
from tests.detectors import synth


@pytest.fixture(scope="module")
def fitted() -> Detector:
    return fit_detector(synth.dataset(seed=0, scale=0.5), seed=0)


def test_round_trip_without_pickle(fitted: Detector, tmp_path: Path) -> None:
    json_path, npz_path = fitted.save(tmp_path)
    with np.load(npz_path, allow_pickle=False) as data:  # no object arrays inside
        assert all(data[k].dtype != object for k in data.files)
    loaded = load_detector(json_path)
    X = np.random.default_rng(0).normal(size=(7, len(fitted.feature_names)))
    np.testing.assert_allclose(loaded.score(X), fitted.score(X))
    assert loaded.threshold_by_fpr == fitted.threshold_by_fpr
    assert loaded.version == fitted.version
    assert load_detector(tmp_path).version == fitted.version  # a directory works too


def test_rejects_other_features(fitted: Detector, tmp_path: Path) -> None:
    json_path, _ = fitted.save(tmp_path)
    meta = json.loads(json_path.read_text())
    meta["feature_names"] = meta["feature_names"][:-1]
    json_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError):
        load_detector(json_path)
    with pytest.raises(ArtifactError):
        load_detector(tmp_path / "missing.json")


def test_scores_separate_and_reasons_name_the_cause(fitted: Detector) -> None:
    import random

    rng = random.Random(9)
    benign = synth.benign_chat("b", rng, n=120).records
    attack = synth.attacker("a", rng, "logprob", n=120).records
    sb = fitted.score_records(benign)
    sa = fitted.score_records(attack)
    assert sb is not None and sa is not None
    assert 0.0 <= sb < 0.5 < sa <= 1.0
    assert fitted.score_records(attack[:5]) is None  # below min_requests
    reasons = fitted.explain(fitted.features(attack), top=5)
    assert 0 < len(reasons) <= 5
    assert all(c > 0 for _, c, _, _ in reasons)
    assert [c for _, c, _, _ in reasons] == sorted((c for _, c, _, _ in reasons), reverse=True)
    names = {name for name, *_ in reasons}
    assert names & {
        "logprobs_share",
        "top_logprobs_mean",
        "logit_bias_share",
        "iat_cv",
        "near_dup_rate",
        "template_reuse",
        "log_rate_per_min",
        "burstiness",
        "single_turn_share",
        "log_turns_mean",
        "iat_log_std",
    }


def test_thresholds_ordered(fitted: Detector) -> None:
    t = fitted.threshold_by_fpr
    assert t["0.001"] >= t["0.003"] >= t["0.01"]


def test_trajectory_checkpoints() -> None:
    import random

    recs = synth.benign_chat("c", random.Random(1), n=60).records
    ks, X = trajectory(recs, load_default_detector().benign)
    assert ks[0] == 20 and ks[-1] == 60 and X.shape == (len(ks), X.shape[1])


def test_default_detector_loads() -> None:
    det = load_default_detector()
    assert det.min_requests > 0
    assert set(det.threshold_by_fpr) >= {"0.001", "0.01"}
    assert det.score(np.zeros((1, len(det.feature_names)))).shape == (1,)
