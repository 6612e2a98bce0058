"""Cross-account linking: group clients that look like one operator ("hydra" networks).

Evidence between two clients, each with a weight; a pair whose weights sum to at least
``min_link`` is linked, and campaigns are the connected components of the links:

- ``template``: prompt templates (masked SimHash) used at least twice by both (0.2 per
  template, at most 0.6: popular tasks are shared by unrelated clients too).
- ``ip``: the same client IP (0.6) or /24 prefix (0.4).
- ``ja4``: the same TLS fingerprint, 0.5 when it is rare among all clients (≤ 2 %), 0.25
  when uncommon (≤ 10 %); the common SDK and browser fingerprints prove nothing.
- ``org``: the same org id (colleagues share one: linking is not accusing).
- ``timing``: correlated activity in 10-minute buckets (synchronised waves), only between
  pairs that share some infrastructure (IP range, fingerprint or org) already: busy
  services all follow the same daily curve.

Everything works on sketches and metadata, never on prompt text. Linked clients are then
scored as one pooled window (:func:`score_campaign`), so a campaign of light accounts is
judged on its combined traffic.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from detectors.models import Detector
from detectors.schema import RequestRecord
from detectors.windows import bounded_window

TEMPLATE_WEIGHT_PER_SHARED, TEMPLATE_WEIGHT_MAX = 0.2, 0.6  # never a link on its own
IP_WEIGHT, PREFIX_WEIGHT = 0.6, 0.4
JA4_WEIGHT, UNCOMMON_JA4_WEIGHT, ORG_WEIGHT, TIMING_WEIGHT = 0.5, 0.25, 0.5, 0.4
RARE_JA4_SHARE, UNCOMMON_JA4_SHARE = 0.02, 0.10
MAX_TEMPLATE_SHARE = 0.10  # a template more than this share of clients use is boilerplate
TIMING_BUCKET_MS = 600_000
TIMING_MIN_CORRELATION = 0.25


@dataclass(frozen=True, slots=True)
class Campaign:
    """Linked clients: ``links`` counts client pairs per kind of evidence."""

    id: str
    clients: tuple[str, ...]
    links: dict[str, int]
    score: float


@dataclass
class _Client:
    templates: set[int]
    ips: set[str]
    prefixes: set[str]
    ja4: set[str]
    orgs: set[str]
    buckets: Counter[int]


def _profile(records: Sequence[RequestRecord], min_template_uses: int) -> _Client:
    counts = Counter(r.features.template for r in records if r.features.template)
    ips = {r.client_ip for r in records if r.client_ip}
    return _Client(
        templates={t for t, c in counts.items() if c >= min_template_uses},
        ips=ips,
        prefixes={ip.rsplit(".", 1)[0] if "." in ip else ip.rsplit(":", 4)[0] for ip in ips},
        ja4={r.tls_fingerprint for r in records if r.tls_fingerprint},
        orgs={r.org_id for r in records if r.org_id},
        buckets=Counter(r.ts_ms // TIMING_BUCKET_MS for r in records),
    )


def _correlation(a: Counter[int], b: Counter[int]) -> float:
    """Pearson correlation of two activity series over their joint span (idle buckets = 0)."""
    if not a or not b:
        return 0.0
    lo, hi = min(min(a), min(b)), max(max(a), max(b))
    if hi - lo < 2 or hi - lo > 50_000:
        return 0.0
    x, y = np.zeros(hi - lo + 1), np.zeros(hi - lo + 1)
    for k, v in a.items():
        x[k - lo] = v
    for k, v in b.items():
        y[k - lo] = v
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _pairs(index: Mapping[str | int, list[str]], max_fanout: int) -> Iterable[tuple[str, str]]:
    for members in index.values():
        if 2 <= len(members) <= max_fanout:
            yield from itertools.combinations(sorted(members), 2)


def link_clients(
    windows: Mapping[str, Sequence[RequestRecord]],
    *,
    min_link: float = 1.0,
    min_template_uses: int = 2,
    max_fanout: int = 500,
    detector: Detector | None = None,
) -> list[Campaign]:
    """Campaigns (≥ 2 linked clients) among ``windows`` (client id -> its recent records).

    With a ``detector`` each campaign's score is the detector's score of the pooled window
    (see :func:`score_campaign`); without one it is the mean link weight of its pairs.
    """
    profiles = {c: _profile(recs, min_template_uses) for c, recs in windows.items()}
    ja4_users = Counter(j for p in profiles.values() for j in p.ja4)
    rare_cap = max(2, int(RARE_JA4_SHARE * len(profiles)))
    uncommon_cap = max(2, int(UNCOMMON_JA4_SHARE * len(profiles)))
    template_cap = min(max_fanout, max(50, int(MAX_TEMPLATE_SHARE * len(profiles))))
    indexes: dict[str, dict[str | int, list[str]]] = {
        k: defaultdict(list) for k in ("template", "ip", "prefix", "ja4", "org")
    }
    for c, p in profiles.items():
        for t in p.templates:
            indexes["template"][t].append(c)
        for ip in p.ips:
            indexes["ip"][ip].append(c)
        for prefix in p.prefixes:
            indexes["prefix"][prefix].append(c)
        for j in p.ja4:
            if ja4_users[j] <= uncommon_cap:
                indexes["ja4"][j].append(c)
        for o in p.orgs:
            indexes["org"][o].append(c)

    evidence: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    shared_templates: Counter[tuple[str, str]] = Counter(_pairs(indexes["template"], template_cap))
    for pair, shared in shared_templates.items():
        evidence[pair]["template"] = min(TEMPLATE_WEIGHT_MAX, TEMPLATE_WEIGHT_PER_SHARED * shared)
    for kind, weight in (("ip", IP_WEIGHT), ("org", ORG_WEIGHT)):
        for pair in set(_pairs(indexes[kind], max_fanout)):
            evidence[pair][kind] = weight
    for fingerprint, members in indexes["ja4"].items():
        weight = JA4_WEIGHT if ja4_users[str(fingerprint)] <= rare_cap else UNCOMMON_JA4_WEIGHT
        for pair in itertools.combinations(sorted(members), 2):
            evidence[pair]["ja4"] = max(weight, evidence[pair].get("ja4", 0.0))
    for pair in set(_pairs(indexes["prefix"], max_fanout)):
        if "ip" not in evidence[pair]:
            evidence[pair]["ip"] = PREFIX_WEIGHT
    for (a, b), ev in evidence.items():
        metadata = bool(ev.keys() & {"ip", "ja4", "org"})
        if (
            metadata
            and sum(ev.values()) < min_link <= sum(ev.values()) + TIMING_WEIGHT
            and (_correlation(profiles[a].buckets, profiles[b].buckets) >= TIMING_MIN_CORRELATION)
        ):
            ev["timing"] = TIMING_WEIGHT

    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    linked = {pair: ev for pair, ev in evidence.items() if sum(ev.values()) >= min_link}
    for a, b in linked:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = defaultdict(list)
    for c in {c for pair in linked for c in pair}:
        groups[find(c)].append(c)

    campaigns = []
    for members in groups.values():
        members.sort()
        root = find(members[0])
        pairs = [(pair, ev) for pair, ev in linked.items() if find(pair[0]) == root]
        kinds: Counter[str] = Counter(k for _, ev in pairs for k in ev)
        cid = "cmp-" + hashlib.sha256("\n".join(members).encode()).hexdigest()[:12]
        score = float(np.mean([sum(ev.values()) for _, ev in pairs]))
        campaign = Campaign(cid, tuple(members), dict(sorted(kinds.items())), score)
        if detector is not None:
            campaign = Campaign(
                cid, campaign.clients, campaign.links, score_campaign(detector, windows, campaign)
            )
        campaigns.append(campaign)
    campaigns.sort(key=lambda c: (-len(c.clients), c.id))
    return campaigns


def pooled_window(
    windows: Mapping[str, Sequence[RequestRecord]], clients: Iterable[str]
) -> Sequence[RequestRecord]:
    """The members' records merged in time order, bounded like one client's window."""
    merged = sorted((r for c in clients for r in windows.get(c, ())), key=lambda r: r.ts_ms)
    return bounded_window(merged)


def score_campaign(
    detector: Detector, windows: Mapping[str, Sequence[RequestRecord]], campaign: Campaign
) -> float:
    """The detector's score of the campaign's pooled window (0 if it is too small)."""
    score = detector.score_records(pooled_window(windows, campaign.clients))
    return 0.0 if score is None else score
