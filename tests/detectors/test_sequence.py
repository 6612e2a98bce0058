"""The torch sequence detector: fit, separate, save/load (no pickle), refuse bad artifacts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from detectors.evaluate import evaluate, markdown_table, sequence_for_eval
from detectors.models import ARTIFACT_DIR, ArtifactError, load_default_detector
from detectors.models.sequence import (
    SEQ_FEATURE_NAMES,
    NetConfig,
    SequenceDetector,
    StreamArrays,
    load_sequence_detector,
    sequence_matrix,
)
from detectors.train_sequence import (
    FitConfig,
    balanced_weights,
    fit_net,
    fit_sequence,
    windows_of,
)
from tests.detectors import synth

TINY = NetConfig(seq_len=32, hidden=8, kernel=3)
FAST = FitConfig(epochs=4, batch_size=32, folds=2)


@pytest.fixture(scope="module")
def fitted() -> SequenceDetector:
    return fit_sequence(synth.dataset(seed=0, scale=0.25), seed=0, net_config=TINY, fit=FAST)


def test_separates_an_obvious_harvester(fitted: SequenceDetector) -> None:
    rng = random.Random(99)
    benign = [synth.benign_chat(f"new-chat-{i}", rng).records for i in range(4)]
    attack = [synth.attacker(f"new-lp-{i}", rng, "logprob").records for i in range(4)]
    benign_scores = [fitted.score_records(r) for r in benign]
    attack_scores = [fitted.score_records(r) for r in attack]
    assert all(s is not None for s in benign_scores + attack_scores)
    assert min(s for s in attack_scores if s is not None) > max(
        s for s in benign_scores if s is not None
    )
    assert fitted.score_records(benign[0][:5]) is None  # below the minimum window


def test_calibrated_like_the_additive_model(fitted: SequenceDetector) -> None:
    # 0.5 is the 1 % out-of-fold benign-client FPR point, as for the additive model
    assert fitted.threshold_by_fpr["0.01"] == pytest.approx(0.5, abs=1e-6)
    assert 0.5 - 1e-9 <= fitted.threshold_by_fpr["0.003"] <= fitted.threshold_by_fpr["0.001"] <= 1.0


def test_shipped_combination_is_on_the_policy_scale() -> None:
    seq, lr = load_sequence_detector(ARTIFACT_DIR), load_default_detector()
    assert seq.combined["lr_version"] == lr.version
    t = seq.combined["threshold_by_fpr"]
    mapped = seq.combine(np.array([t["0.01"], t["0.003"]]), np.array([t["0.01"], t["0.003"]]))
    np.testing.assert_allclose(mapped, [0.5, 0.85], atol=1e-6)


def test_window_cut_from_a_stream_equals_the_window_alone() -> None:
    records = synth.attacker("a", random.Random(1), n=120).records
    stream = StreamArrays.of(records)
    cut = sequence_matrix(stream, 30, 100, 32)
    alone = sequence_matrix(StreamArrays.of(records[30:100]), 0, 70, 32)
    assert cut.shape == (32, len(SEQ_FEATURE_NAMES))
    np.testing.assert_array_equal(cut, alone)


def test_round_trip_gives_identical_scores(fitted: SequenceDetector, tmp_path: Path) -> None:
    json_path, npz_path = fitted.save(tmp_path)
    with np.load(npz_path, allow_pickle=False) as data:
        assert all(data[k].dtype == np.float32 for k in data.files)
    loaded = load_sequence_detector(json_path)
    mats = windows_of(synth.dataset(seed=3, scale=0.25), TINY.seq_len).mats
    np.testing.assert_array_equal(loaded.score_matrices(mats), fitted.score_matrices(mats))
    assert loaded.threshold_by_fpr == fitted.threshold_by_fpr
    assert loaded.version == fitted.version
    assert load_sequence_detector(tmp_path).version == fitted.version  # a directory works too


def _broken(tmp_path: Path, fitted: SequenceDetector, how: str) -> Path:
    json_path, npz_path = fitted.save(tmp_path)
    meta = json.loads(json_path.read_text())
    arrays = dict(np.load(npz_path, allow_pickle=False))
    if how == "format":
        meta["format"] = "something-else/9"
    elif how == "features":
        meta["feature_names"] = meta["feature_names"][:-1]
    elif how == "config":
        meta["config"]["hidden"] = 9
    elif how == "missing_field":
        del meta["calibration"]
    elif how == "missing_weight":
        del arrays["net/conv1.weight"]
    elif how == "nan":
        arrays["net/head.0.bias"] = np.full_like(arrays["net/head.0.bias"], np.nan)
    elif how == "pickle":  # an object array: loading it would unpickle
        arrays["net/conv1.weight"] = np.array([{"x": 1}], dtype=object)
    json_path.write_text(json.dumps(meta))
    with npz_path.open("wb") as fh:
        np.savez(fh, **arrays)
    return json_path


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("format", "unknown artifact format"),
        ("features", "other request features"),
        ("config", "has shape"),
        ("missing_field", "missing or malformed"),
        ("missing_weight", "do not match"),
        ("nan", "non-finite"),
        ("pickle", "cannot load"),
    ],
)
def test_refuses_a_malformed_artifact(
    fitted: SequenceDetector, tmp_path: Path, how: str, message: str
) -> None:
    with pytest.raises(ArtifactError, match=message):
        load_sequence_detector(_broken(tmp_path, fitted, how))


def test_refuses_a_missing_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot load"):
        load_sequence_detector(tmp_path / "nothing.json")


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    win = windows_of(synth.dataset(seed=1, scale=0.25), TINY.seq_len)
    clients = synth.dataset(seed=1, scale=0.25)
    y = np.array([int(clients[i].attack) for i in win.owner], dtype=np.int64)
    w = balanced_weights(win.owner, y)
    fit = FitConfig(epochs=2, batch_size=32)
    a, _, _ = fit_net(win.mats, y, w, TINY, fit, seed=5)
    b, _, _ = fit_net(win.mats, y, w, TINY, fit, seed=5)
    c, _, _ = fit_net(win.mats, y, w, TINY, fit, seed=6)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_eval_adds_sequence_rows_beside_the_additive_model(fitted: SequenceDetector) -> None:
    lr = load_default_detector()
    report = evaluate(
        lr, clients=synth.dataset(seed=4, scale=0.25), baselines=False, sequence=fitted
    )
    assert set(report["detectors"]) == {"ours", "sequence"}
    # the fixture was not calibrated with the shipped additive model: no combined row, said so
    assert any("no combined row" in note for note in report["notes"])
    table = markdown_table(report)
    assert "sequence (torch conv+attention)" in table
    assert "no combined row" in table


def test_eval_says_so_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import detectors.models.sequence as sequence

    monkeypatch.setattr(sequence, "torch_available", lambda: False)
    model, note = sequence_for_eval(True)
    assert model is None
    assert note is not None and "torch is not installed" in note
    assert sequence_for_eval(False) == (None, None)
