"""Campaign linking on a small hydra network hidden among benign clients."""

from __future__ import annotations

import itertools
import random

from detectors.campaigns import link_clients, pooled_window
from tests.detectors import synth


def test_links_a_small_hydra_and_not_benign() -> None:
    rng = random.Random(5)
    hydra = synth.hydra("net", rng, accounts=20, n=40)
    benign = [synth.benign_chat(f"b{i}", rng, n=40) for i in range(30)]
    windows = {c.client: c.records for c in hydra + benign}
    campaigns = link_clients(windows)
    assert campaigns, "the network is linked"
    top = campaigns[0]
    assert set(top.clients) == {c.client for c in hydra}
    assert "template" in top.links
    assert top.id.startswith("cmp-") and top.score > 0
    benign_ids = {c.client for c in benign}
    assert not any(benign_ids & set(c.clients) for c in campaigns)


def test_pooled_window_is_time_ordered_and_bounded() -> None:
    rng = random.Random(6)
    hydra = synth.hydra("net", rng, accounts=20, n=40)
    windows = {c.client: c.records for c in hydra}
    pooled = pooled_window(windows, windows)
    assert len(pooled) == 500
    assert all(a.ts_ms <= b.ts_ms for a, b in itertools.pairwise(pooled))
