"""PRADA (Juuti et al. 2019) adapted to text: normality of a client's min-distance stream.

For each query, the distance to the closest earlier query of the same client (Hamming
distance between 64-bit prompt SimHashes, in place of PRADA's L2 distance between images);
benign streams give roughly normal distances, synthetic sweeps do not. The score is
``1 - W`` of the Shapiro-Wilk test, flagged above a threshold calibrated on benign clients.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import stats

from detectors.schema import RequestRecord


def min_distances(sketches: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """For every query after the first: Hamming distance to its nearest predecessor."""
    n = sketches.size
    if n < 2:
        return np.zeros(0)
    ham = np.bitwise_count(sketches[:, None] ^ sketches[None, :]).astype(np.float64)
    ham[np.triu_indices(n)] = np.inf  # only earlier queries
    out: npt.NDArray[np.float64] = ham[1:].min(axis=1)
    return out


class PradaBaseline:
    name = "PRADA-style (SimHash min-distance, Shapiro-Wilk)"

    def score_window(self, records: Sequence[RequestRecord]) -> float:
        sketches = np.fromiter((r.features.sketch for r in records), dtype=np.uint64)
        d = min_distances(sketches)
        if d.size < 3 or float(d.std()) == 0.0:
            return 1.0 if d.size >= 3 else 0.0  # a constant stream is maximally non-normal
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = float(stats.shapiro(d).statistic)
        return 1.0 - w
