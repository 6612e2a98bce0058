"""The trained detector artifact: an additive logistic model over window features.

The logit is ``intercept + sum_j coef_j * z_j + bin_weights_j[bin_j(x_j)]``: a linear term
on each standardized (clipped) feature plus a step function over its training quantile
bins, so each feature's contribution is separate and reason codes are exact.

An artifact is two files side by side, ``<name>.json`` (version, feature names,
thresholds, metadata) and ``<name>.npz`` (arrays, loaded with ``allow_pickle=False``), so
loading one from an untrusted path cannot execute code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.schema import RequestRecord
from detectors.windows import FEATURE_NAMES, BenignReference, window_features

ARTIFACT_DIR = Path(__file__).resolve().parent.parent / "artifacts"
DEFAULT_NAME = "detector"
Z_CLIP = 8.0  # standardized features are clipped: an unseen extreme cannot dominate alone

_ARRAYS = (
    "mean",
    "scale",
    "coef",
    "bin_edges",
    "bin_weights",
    "benign_median",
    "ref_sketches",
    "ref_templates",
)


class ArtifactError(ValueError):
    """The artifact is missing, malformed, or for other features than this code computes."""


@dataclass(frozen=True)
class Detector:
    """Scores window feature vectors in [0, 1]; higher means more like harvesting."""

    version: str
    feature_names: tuple[str, ...]
    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    coef: npt.NDArray[np.float64]
    intercept: float
    bin_edges: npt.NDArray[np.float64]  # (F, E) ascending, +inf padded
    bin_weights: npt.NDArray[np.float64]  # (F, E + 1)
    benign_median: npt.NDArray[np.float64]
    benign: BenignReference
    threshold_by_fpr: dict[str, float]
    min_requests: int = 20
    metadata: dict[str, Any] = field(default_factory=dict)

    def _z(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        z: npt.NDArray[np.float64] = np.clip((X - self.mean) / self.scale, -Z_CLIP, Z_CLIP)
        return z

    def contributions(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """(n, F) per-feature terms of the logit."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        terms: npt.NDArray[np.float64] = self._z(X) * self.coef
        if self.bin_edges.shape[1]:
            rows = np.arange(X.shape[1])
            bins = (X[:, :, None] >= self.bin_edges[None, :, :]).sum(axis=2)
            terms = terms + self.bin_weights[rows[None, :], bins]
        return terms

    def decision_function(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        logit: npt.NDArray[np.float64] = self.contributions(X).sum(axis=1) + self.intercept
        return logit

    def score(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """(n, F) window features -> (n,) scores in [0, 1]."""
        out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return out

    def features(self, records: Sequence[RequestRecord]) -> npt.NDArray[np.float64]:
        return window_features(records, benign=self.benign)

    def score_records(self, records: Sequence[RequestRecord]) -> float | None:
        """The score of one time-ordered window; None below ``min_requests``."""
        if len(records) < self.min_requests:
            return None
        return float(self.score(self.features(records)[None, :])[0])

    def threshold(self, fpr: str = "0.001") -> float:
        return self.threshold_by_fpr[fpr]

    def explain(
        self, x: npt.NDArray[np.float64], top: int = 5
    ) -> list[tuple[str, float, float, float]]:
        """Reason codes: (feature, contribution to the logit, value, benign median).

        A contribution is the coefficient times the standardized deviation of the value from
        the benign median, so a benign-looking feature contributes about nothing; the ``top``
        largest positive contributions are returned, strongest first.
        """
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        contrib = self.contributions(x)[0] - self.contributions(self.benign_median)[0]
        order = np.argsort(-contrib)
        return [
            (self.feature_names[i], float(contrib[i]), float(x[i]), float(self.benign_median[i]))
            for i in order[:top]
            if contrib[i] > 0
        ]

    def save(self, directory: Path, name: str = DEFAULT_NAME) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "antidistill-detector/1",
            "version": self.version,
            "kind": "additive-logistic",
            "feature_names": list(self.feature_names),
            "intercept": self.intercept,
            "threshold_by_fpr": self.threshold_by_fpr,
            "min_requests": self.min_requests,
            "metadata": self.metadata,
        }
        json_path, npz_path = directory / f"{name}.json", directory / f"{name}.npz"
        json_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        with npz_path.open("wb") as fh:
            np.savez(
                fh,
                mean=self.mean,
                scale=self.scale,
                coef=self.coef,
                bin_edges=self.bin_edges,
                bin_weights=self.bin_weights,
                benign_median=self.benign_median,
                ref_sketches=self.benign.sketches,
                ref_templates=self.benign.templates,
            )
        return json_path, npz_path


def load_detector(path: Path) -> Detector:
    """Load ``path`` (``x.json``, ``x.npz``, or a directory holding ``detector.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{DEFAULT_NAME}.json"
    json_path, npz_path = path.with_suffix(".json"), path.with_suffix(".npz")
    try:
        meta = json.loads(json_path.read_text())
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {k: np.array(data[k]) for k in _ARRAYS}
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot load detector artifact {path}: {exc}") from exc
    if meta.get("format") != "antidistill-detector/1" or meta.get("kind") != "additive-logistic":
        raise ArtifactError(f"{json_path}: unknown artifact format {meta.get('format')!r}")
    names = tuple(meta["feature_names"])
    if names != FEATURE_NAMES:
        raise ArtifactError(f"{json_path}: trained on other window features than this code's")
    f = len(names)
    for k in ("mean", "scale", "coef", "benign_median"):
        if arrays[k].shape != (f,):
            raise ArtifactError(f"{npz_path}: {k} has shape {arrays[k].shape}, expected ({f},)")
    edges, weights = arrays["bin_edges"], arrays["bin_weights"]
    if edges.ndim != 2 or edges.shape[0] != f or weights.shape != (f, edges.shape[1] + 1):
        raise ArtifactError(f"{npz_path}: bin arrays have shapes {edges.shape}, {weights.shape}")
    return Detector(
        version=str(meta["version"]),
        feature_names=names,
        mean=arrays["mean"].astype(np.float64),
        scale=arrays["scale"].astype(np.float64),
        coef=arrays["coef"].astype(np.float64),
        intercept=float(meta["intercept"]),
        bin_edges=edges.astype(np.float64),
        bin_weights=weights.astype(np.float64),
        benign_median=arrays["benign_median"].astype(np.float64),
        benign=BenignReference.from_arrays(
            arrays["ref_sketches"].astype(np.uint64), arrays["ref_templates"].astype(np.uint64)
        ),
        threshold_by_fpr={str(k): float(v) for k, v in meta["threshold_by_fpr"].items()},
        min_requests=int(meta["min_requests"]),
        metadata=dict(meta.get("metadata", {})),
    )


def load_default_detector() -> Detector:
    """The shipped model (``detectors/artifacts/detector.json`` + ``.npz``)."""
    return load_detector(ARTIFACT_DIR / f"{DEFAULT_NAME}.json")
