"""A stand-in model for tests of the worker's and the replay's mechanics: it scores a
window by its share of reasoning-elicitation requests, so a test controls every score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.schema import RequestRecord


class StandIn:
    """Scores a window by its share of reasoning-elicitation requests."""

    min_requests = 5

    def score(self, X: Any) -> Any:
        return np.asarray(X)[:, 0]

    def explain(self, x: Any, top: int = 3) -> list[tuple[str, float, float, float]]:
        return [("reasoning_share", float(x[0]), float(x[0]), 0.0)]


def featurize(records: Sequence[RequestRecord]) -> Any:
    share = sum(r.features.reasoning_marker for r in records) / len(records)
    return np.array([share, len(records)], dtype=np.float64)


@dataclass(frozen=True)
class Campaign:
    clients: tuple[str, ...]
    link_types: tuple[str, ...]
