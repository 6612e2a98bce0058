from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from sim.toy_classifier import ToyClassifier, train_toy_classifier


@pytest.fixture(scope="module")
def classifier() -> ToyClassifier:
    return train_toy_classifier()


def test_held_out_accuracy_is_high(classifier: ToyClassifier) -> None:
    assert classifier.test_accuracy > 0.9


def test_predict_proba_returns_distributions(classifier: ToyClassifier) -> None:
    digits = load_digits()
    probs = classifier.predict_proba(digits.data[:5].tolist())
    assert len(probs) == 5
    assert all(len(row) == 10 for row in probs)
    assert np.allclose(np.sum(probs, axis=1), 1.0)
    assert classifier.predict(digits.data[:5].tolist()) == [int(np.argmax(r)) for r in probs]


def test_training_is_deterministic(classifier: ToyClassifier) -> None:
    again = train_toy_classifier()
    x = load_digits().data[:20].tolist()
    assert again.test_accuracy == classifier.test_accuracy
    assert again.predict_proba(x) == classifier.predict_proba(x)


@pytest.mark.parametrize("bad", [[[1.0] * 63], [[float("nan")] * 64], [1.0] * 64])
def test_bad_inputs_are_refused(classifier: ToyClassifier, bad: list[object]) -> None:
    with pytest.raises(ValueError):
        classifier.predict_proba(bad)  # type: ignore[arg-type]
