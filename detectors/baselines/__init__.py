"""Published detectors re-implemented on the same windows, for side-by-side numbers."""

from __future__ import annotations

from detectors.baselines.mmd import MMDBaseline
from detectors.baselines.prada import PradaBaseline

__all__ = ["MMDBaseline", "PradaBaseline"]
