"""A small real classifier for the probability endpoint: logistic regression on sklearn's
8x8 digits (64 features, values 0 to 16, 10 classes), trained at startup in well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

N_FEATURES = 64
N_CLASSES = 10


class ToyClassifier:
    """A fitted digits classifier and its accuracy on a held-out split."""

    def __init__(self, pipeline: Pipeline, test_accuracy: float) -> None:
        self._pipeline = pipeline
        self.test_accuracy = test_accuracy

    def predict_proba(self, inputs: Sequence[Sequence[float]]) -> list[list[float]]:
        """One 10-class probability vector per 64-feature input vector."""
        x = np.asarray(inputs, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != N_FEATURES:
            raise ValueError(f"inputs must be vectors of {N_FEATURES} numbers")
        if not np.all(np.isfinite(x)):
            raise ValueError("inputs must be finite numbers")
        probs = self._pipeline.predict_proba(x)
        return [[float(p) for p in row] for row in probs]

    def predict(self, inputs: Sequence[Sequence[float]]) -> list[int]:
        """The most likely class of each input."""
        return [int(np.argmax(row)) for row in self.predict_proba(inputs)]


def train_toy_classifier(seed: int = 0, test_size: float = 0.25) -> ToyClassifier:
    """Fits the classifier on a stratified split of ``load_digits()`` with a fixed seed."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=test_size, random_state=seed, stratify=digits.target
    )
    pipeline = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.5, max_iter=2000, random_state=seed)
    )
    pipeline.fit(x_train, y_train)
    accuracy = float(np.mean(pipeline.predict(x_test) == y_test))
    return ToyClassifier(pipeline, accuracy)
