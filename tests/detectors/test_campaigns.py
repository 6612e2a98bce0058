"""Campaign linking on hydra networks hidden among benign clients."""

from __future__ import annotations

import itertools
import random

from detectors.campaigns import campaign_score, evidence, link_clients, pooled_window
from detectors.schema import RequestFeatures, RequestRecord
from tests.detectors import synth

T0 = synth.T0
DAY_MS = 86_400_000
COMMON_JA4 = "t13d1715h2_5b57614c22b0_3d5424432f57"  # the SDK fingerprint most clients share


def _rec(
    client: str, ts: int, ip: str, *, template: int, org: str = "", ja4: str = COMMON_JA4
) -> RequestRecord:
    return RequestRecord(
        ts_ms=ts,
        client=client,
        route="chat",
        status=200,
        decision="admitted",
        prompt_tokens=40,
        completion_tokens=200,
        features=RequestFeatures(prompt_words=30, sketch=template ^ 1, template=template),
        client_ip=ip,
        tls_fingerprint=ja4,
        org_id=org or f"org-{client}",
    )


def _waves(
    rng: random.Random, name: str, accounts: int, prefixes: list[str], ja4: str = COMMON_JA4
) -> dict[str, list[RequestRecord]]:
    """A scheduler's waves every 10 minutes; each account joins about half of them, from one
    of ``prefixes``, with its own org, a common fingerprint and a fresh template each time."""
    out: dict[str, list[RequestRecord]] = {}
    for a in range(accounts):
        ip = f"{prefixes[a % len(prefixes)]}.{rng.randrange(2, 250)}"
        out[f"{name}-{a}"] = []
    for wave in range(T0, T0 + DAY_MS, 600_000):
        for a, client in enumerate(out):
            if rng.random() < 0.5:
                ip = f"{prefixes[a % len(prefixes)]}.{10 + a}"
                out[client].append(
                    _rec(
                        client,
                        wave + rng.randrange(30_000),
                        ip,
                        template=rng.getrandbits(64),
                        ja4=ja4,
                    )
                )
    return out


def _office(rng: random.Random, name: str, people: int) -> dict[str, list[RequestRecord]]:
    """Colleagues: one /24 and one org, each in their own bursts of work during office hours
    (sessions overlap, single requests do not line up)."""
    out: dict[str, list[RequestRecord]] = {}
    prefix, org = f"198.51.{rng.randrange(256)}", f"org-{name}"
    for p in range(people):
        client, recs = f"{name}-{p}", []
        ts = T0 + 9 * 3_600_000 + rng.randrange(1_800_000)
        while ts < T0 + 18 * 3_600_000:
            for _ in range(rng.randrange(3, 12)):  # a session
                recs.append(
                    _rec(client, ts, f"{prefix}.{p + 2}", template=rng.getrandbits(64), org=org)
                )
                ts += int(rng.expovariate(1 / 60_000)) + 5_000
            ts += int(rng.expovariate(1 / 1_800_000))
        out[client] = recs
    return out


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


def test_synchronised_waves_link_a_network_spread_over_ranges() -> None:
    """Only timing is shared across the /24s (common fingerprint, own orgs, fresh templates):
    the network is still one campaign, and offices in the same hours are not swept in."""
    rng = random.Random(7)
    hydra = _waves(rng, "net", 24, ["45.12.7", "91.200.3", "185.44.19"])
    offices = {}
    for team in range(6):
        offices.update(_office(rng, f"team{team}", 5))
    loners = {
        c.client: list(c.records) for c in (synth.benign_chat(f"b{i}", rng) for i in range(30))
    }
    windows: dict[str, list[RequestRecord]] = {**hydra, **offices, **loners}
    campaigns = link_clients(windows)
    with_hydra = [c for c in campaigns if set(c.clients) & set(hydra)]
    assert len(with_hydra) == 1
    assert set(with_hydra[0].clients) == set(hydra)
    assert "timing" in with_hydra[0].links
    ev = evidence(windows)
    office_pairs = [
        ev.get(pair, {}) for pair in itertools.combinations(sorted(offices), 2) if pair in ev
    ]
    assert office_pairs, "colleagues share a /24 and an org"
    assert not any("timing" in e for e in office_pairs), "overlapping office hours are not sync"


def test_one_range_alone_or_timing_alone_is_not_a_link() -> None:
    rng = random.Random(8)
    # two accounts, synchronised but on two ranges with no fingerprint: a pair, no group
    hydra = _waves(rng, "net", 2, ["45.12.7", "91.200.3"], ja4="")
    same_range = {  # strangers on one of the network's /24s, nothing else in common
        f"x{i}": [_rec(f"x{i}", T0 + 3_000_000 * i, f"45.12.7.{200 + i}", template=i, ja4="")]
        for i in range(2)
    }
    campaigns = link_clients({**hydra, **same_range})
    assert campaigns == []


def test_near_duplicate_templates_count_as_shared() -> None:
    rng = random.Random(9)
    templates = [rng.getrandbits(64) for _ in range(3)]
    ts = [T0 + k * 60_000 for k in range(6)]

    def client(name: str, ip: str, flip: int) -> list[RequestRecord]:
        return [
            _rec(name, t, ip, template=templates[k % 3] ^ flip, ja4="") for k, t in enumerate(ts)
        ]

    light_edit = {"a": client("a", "45.12.7.2", 0), "b": client("b", "45.12.7.3", 0b101)}
    (campaign,) = link_clients(light_edit)  # the same /24 and three shared templates
    assert campaign.links == {"ip": 1, "template": 1}
    unrelated = {"a": client("a", "45.12.7.2", 0), "b": client("b", "45.12.7.3", 0xFFFF_FFFF)}
    assert link_clients(unrelated) == []


def test_campaign_score_is_pooled_or_the_members_majority() -> None:
    assert campaign_score(0.2, [0.9, 0.95, 0.1]) == 0.9  # two of three flagged on their own
    assert campaign_score(0.2, [0.99, 0.1, 0.1, None]) == 0.2  # one member cannot raise it
    assert campaign_score(0.7, [0.99, 0.1]) == 0.7
    assert campaign_score(None, [None, None]) == 0.0


def test_pooled_window_is_time_ordered_and_bounded() -> None:
    rng = random.Random(6)
    hydra = synth.hydra("net", rng, accounts=20, n=40)
    windows = {c.client: c.records for c in hydra}
    pooled = pooled_window(windows, windows)
    assert len(pooled) == 500
    assert all(a.ts_ms <= b.ts_ms for a, b in itertools.pairwise(pooled))
