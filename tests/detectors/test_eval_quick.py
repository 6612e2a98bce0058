"""A quick end-to-end evaluation of the shipped detector on fresh simulated traffic."""

from __future__ import annotations

import time

from detectors.evaluate import markdown_table, run_eval
from detectors.models import load_default_detector


def test_quick_eval_held_out_auroc_well_above_chance() -> None:
    started = time.perf_counter()
    report = run_eval(load_default_detector(), quick=True, baselines=False)
    ours = report["detectors"]["ours"]
    assert ours["held_out"]["n_attack"] >= 4
    assert ours["held_out"]["auroc"] > 0.75
    assert ours["in_distribution"]["auroc"] > 0.75
    assert "held-out" in markdown_table(report)
    assert time.perf_counter() - started < 40
