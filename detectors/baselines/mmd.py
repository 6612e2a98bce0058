"""MMD-over-embeddings (after Liu et al. 2026), benign-calibrated, content only.

The embedding here is the 64-bit prompt SimHash as a ±1 vector (what the detector stores;
the paper uses sentence-transformer embeddings of the prompt text, which the gateway does
not keep), under the Laplacian kernel ``exp(-hamming / 8)``. The score is the biased MMD²
between the client's window and a fixed benign reference sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detectors.schema import RequestRecord
from detectors.windows import MAX_WINDOW, BenignReference, mmd2


class MMDBaseline:
    name = "MMD over SimHash embeddings (benign-calibrated)"

    def __init__(self, benign: BenignReference) -> None:
        self.benign = benign

    def score_window(self, records: Sequence[RequestRecord]) -> float:
        sketches = np.fromiter((r.features.sketch for r in records[-MAX_WINDOW:]), dtype=np.uint64)
        return mmd2(sketches, self.benign.sketches, self.benign.sketch_self)
