"""The standard training/evaluation mix: every family, at a given scale."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sim.traffic.client import SimClient
from sim.traffic.scenarios import SCENARIOS, generate

# scenario -> clients at scale 1 (hydra: three networks of 20-50 accounts)
STANDARD_MIX: dict[str, int] = {
    "chat_user": 60,
    "app_backend": 40,
    "coding_assistant": 60,
    "agent": 45,
    "eval_harness": 45,
    "batch_labelling": 45,
    "self_instruct": 12,
    "reasoning_elicitation": 12,
    "logprob_sweep": 8,
    "logit_bias_sweep": 8,
    "random_word": 8,
    "wiki_sentence": 8,
    "coverage_sweep": 10,
    "adaptive": 16,
    "blended": 24,
}
HYDRA_NETWORKS = 3
FAMILIES = (*STANDARD_MIX, "hydra")


def dataset(
    *, seed: int, families: Sequence[str] | None = None, scale: float = 1.0
) -> list[SimClient]:
    """A labelled mix of all (or the given) families; ``scale`` multiplies client counts."""
    wanted = list(FAMILIES if families is None else families)
    unknown = [f for f in wanted if f not in FAMILIES]
    if unknown:
        raise KeyError(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    out: list[SimClient] = []
    for k, family in enumerate(FAMILIES):
        if family not in wanted:
            continue
        if family == "hydra":
            rng = np.random.default_rng([seed, 7919])
            networks = max(1, round(HYDRA_NETWORKS * scale))
            for net in range(networks):
                size = int(rng.integers(20, 51))
                out += generate("hydra", seed=seed * 1000 + net, clients=size)
            continue
        count = STANDARD_MIX[family]
        if family == "blended":
            count = max(4, round(count * scale / 4) * 4)  # every share equally often
        else:
            count = max(1, round(count * scale))
        assert family in SCENARIOS
        out += generate(family, seed=seed * 1000 + k, clients=count)
    return out
