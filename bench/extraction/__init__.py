"""Real extraction attacks against the toy models, through the real gateway.

- ``python -m bench.extraction.probabilities``: KnockoffNets and CopycatCNN (IBM ART) against
  the digits classifier, per probability defence and query budget; DAWN verification.
- ``python -m bench.extraction.logits``: the hidden-size SVD attack of Carlini et al. 2024.
- ``python -m bench.extraction.distill``: soft-label distillation of the toy LM per level.
- ``python -m bench.extraction.reasoning``: a student with and without reasoning withheld.

Each takes ``--quick`` (small budgets, seconds) and ``--write-benchmarks``.
"""
