"""The extraction benchmarks' ``--quick`` modes, through the real gateway: the direction of
each result (defences hurt the attacker, not the honest client).

The logit-stealing, distillation and reasoning checks need only the core dependencies;
the probability-endpoint check needs the ``attacks`` extra (torch + ART) and is skipped
without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.extraction import distill, logits, reasoning

pytestmark = pytest.mark.timeout(300)


def test_hidden_size_recovered_with_controls_off_not_under_default(tmp_path: Path) -> None:
    attempts = {a.scenario: a for a in logits.main(["--quick", "--results-dir", str(tmp_path)])}
    off, default = attempts["controls off"], attempts["default policy"]
    assert off.recovered and off.rank_estimate == off.true_hidden
    assert not default.recovered
    assert default.vectors == 0 and default.refused > 0
    assert (tmp_path / "extraction_logits.json").exists()


def test_soft_label_distillation_is_worse_at_higher_levels(tmp_path: Path) -> None:
    rows = {r.setting: r for r in distill.main(["--quick", "--results-dir", str(tmp_path)])}
    assert rows["controls off"].kl <= rows["allow"].kl
    assert rows["degrade"].kl > rows["allow"].kl
    assert rows["throttle"].kl > rows["allow"].kl
    # the honest client's greedy answers are untouched where no temperature floor applies
    assert rows["allow"].benign_answer_unchanged == 1.0
    assert rows["allow"].benign_top_logprob_unchanged == 1.0


def test_withholding_reasoning_lowers_the_students_accuracy(tmp_path: Path) -> None:
    rows = {r.setting: r for r in reasoning.main(["--quick", "--results-dir", str(tmp_path)])}
    (budget,) = rows["keep"].accuracy
    assert rows["drop"].reasoning_chars == 0
    assert rows["drop"].accuracy[budget] < rows["keep"].accuracy[budget]
    assert rows["truncate"].accuracy[budget] < rows["keep"].accuracy[budget]
    assert all(r.answers_intact == 1.0 for r in rows.values())


def test_probability_defences_lower_fidelity_not_honest_answers(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("art")
    from bench.extraction import probabilities

    outcome = probabilities.main(["--quick", "--results-dir", str(tmp_path)])
    fidelity = {(r.defence, r.attack): r.fidelity for r in outcome.runs}
    undefended = fidelity[("none", "KnockoffNets")]
    assert fidelity[("labels only", "KnockoffNets")] < undefended
    assert fidelity[("reverse sigmoid", "KnockoffNets")] < undefended
    for defence, changed in outcome.benign.items():
        if "DAWN" in defence:
            assert changed <= 0.02
        else:
            assert changed == 0.0
