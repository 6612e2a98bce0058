"""The digits victim as an attacker sees it: data, the gateway as an ART black box, the thief.

The victim is the toy upstream's classifier (``sim.toy_classifier``: logistic regression
on sklearn's 8x8 digits) on a route of kind ``probabilities``. The attacker's query pool is
the digits training split plus shifted and noised copies of it (data from the victim's
domain; no true labels are used); models are scored on the held-out test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bench.extraction.harness import post_all
from gateway.provenance.dawn import Mark
from sim.toy_classifier import ToyClassifier

CLASSIFY = "/v1/classify"
CLASSES = 10
POOL_COPIES = 6  # shifted + noised copies of the training split in the attacker's pool
F32 = npt.NDArray[np.float32]


@dataclass
class Data:
    pool: F32
    x_test: F32
    y_test: npt.NDArray[np.int64]
    x_train: F32
    y_train: npt.NDArray[np.int64]
    teacher_test: npt.NDArray[np.int64]


def load_data(teacher: ToyClassifier, seed: int) -> Data:
    """The victim's own split (seed 0) and an attacker pool from its training inputs."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    rng = np.random.default_rng(seed)
    images = x_train.reshape(-1, 8, 8)
    copies = [x_train]
    for _ in range(POOL_COPIES):
        shifted = np.stack(
            [np.roll(img, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1)) for img in images]
        )
        noisy = shifted.reshape(len(x_train), 64) + rng.normal(0, 1.0, (len(x_train), 64))
        copies.append(np.clip(np.round(noisy), 0, 16))
    pool = np.concatenate(copies).astype(np.float32)
    teacher_test = np.asarray(teacher.predict(x_test.tolist()), dtype=np.int64)
    return Data(
        pool=pool,
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.int64),
        x_train=x_train.astype(np.float32),
        y_train=y_train.astype(np.int64),
        teacher_test=teacher_test,
    )


def _vector(row: Any) -> list[float]:
    """A returned answer as a probability vector over the classes."""
    if isinstance(row, int) and not isinstance(row, bool):
        out = [0.0] * CLASSES
        out[row] = 1.0
        return out
    if isinstance(row, dict):
        out = [0.0] * CLASSES
        for k, v in row.items():
            out[int(k)] = float(v)
        return out
    values = [float(v) for v in row]
    total = sum(values)
    return [v / total for v in values] if total > 0 else [1.0 / CLASSES] * CLASSES


class GatewayOracle:
    """``predict_fn`` of ART's ``BlackBoxClassifier``: each call is one POST to the gateway."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url + CLASSIFY, key
        self.requests = 0
        self.asked: list[npt.NDArray[np.float64]] = []
        self.answered: list[npt.NDArray[np.int64]] = []

    def __call__(self, x: npt.NDArray[Any]) -> F32:
        inputs = np.asarray(x, dtype=np.float64)
        body = {"model": "toy-digits", "inputs": inputs.tolist()}
        [(status, answer)] = post_all(self.url, self.key, [body], concurrency=1)
        self.requests += 1
        if status != 200 or not isinstance(answer, dict):
            raise RuntimeError(f"gateway answered {status}: {str(answer)[:300]}")
        vectors = np.asarray([_vector(r) for r in answer["probabilities"]], dtype=np.float32)
        self.asked.append(inputs)
        self.answered.append(np.argmax(vectors, axis=1))
        return vectors

    def deviations(self, teacher: ToyClassifier) -> list[Mark]:
        """Answers whose argmax is not the upstream's, in the shape of the gateway's DAWN
        records: with every other defence keeping the argmax, these are the marks."""
        if not self.asked:
            return []
        inputs = np.concatenate(self.asked)
        answered = np.concatenate(self.answered)
        truth = np.asarray(teacher.predict(inputs.tolist()))
        return [
            {"kind": "dawn", "input": x.tolist(), "label": int(a), "true_label": int(t)}
            | {"classes": CLASSES}
            for x, a, t in zip(inputs, answered, truth, strict=True)
            if a != t
        ]


def thief(seed: int) -> Any:
    """The stolen model: a 64-64-10 MLP as an ART ``PyTorchClassifier``."""
    import torch
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, CLASSES)
    )
    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=3e-3),
        input_shape=(64,),
        nb_classes=CLASSES,
        clip_values=(0.0, 16.0),
        preprocessing=(0.0, 16.0),
    )


def predict(model: Any, x: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    return np.asarray(np.argmax(model.predict(np.asarray(x, dtype=np.float32)), axis=1))


def independent_model(data: Data, seed: int, epochs: int) -> Any:
    """A model of the same kind trained on the true labels, never on the gateway's answers."""
    model = thief(seed)
    model.fit(data.x_train, data.y_train, batch_size=32, nb_epochs=epochs)
    return model
