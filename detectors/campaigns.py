"""Cross-account linking: group clients that look like one operator ("hydra" networks).

Evidence between two clients falls into independent kinds, each with a weight below
``min_link``, so a pair is linked only when at least two kinds agree (or one kind twice,
e.g. several shared templates); campaigns are the connected components of the links:

- ``template``: prompt templates (masked SimHash) used at least twice by both (0.2 per
  template, at most 0.6: popular tasks are shared by unrelated clients too); templates
  that differ in a few bits (light paraphrases) count as the same template.
- ``ip``: the same client IP (0.6) or /24 prefix (0.5).
- ``ja4``: the same TLS fingerprint, 0.5 when it is rare among all clients (≤ 2 %, or
  ≤ 10 % when its users cluster on few /24 ranges), 0.25 when uncommon (≤ 10 %); the
  common SDK and browser fingerprints prove nothing.
- ``org``: the same org id (colleagues share one: linking is not accusing).
- ``timing``: synchronised requests (0.5): the two clients send within the same minute far
  more often than when one's timeline is shifted by a few minutes, over enough moments to
  be more than chance. Sessions, office hours and the daily curve survive such a shift;
  accounts driven by one scheduler fire together and do not. 0.75 when the two also share
  ≥ 2 synchronised peers (a wave of accounts): then an uncommon fingerprint, a /24 or a
  shared template is enough as the second kind.

Groups of ≥ ``MIN_GROUP`` linked clients whose members are densely synchronised with each
other's are merged (one scheduler behind accounts on several ranges).

Everything works on sketches and metadata, never on prompt text. Linked clients are then
scored as one pooled window, so a campaign of light accounts is judged on its combined
traffic, or by the majority of its members' own scores (:func:`campaign_score`). The cost
is bounded: profiles are one pass over the records, candidate pairs come from inverted
indexes with a fan-out cap, timing is one matrix product over per-client activity vectors.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detectors.models import Detector
from detectors.schema import RequestRecord
from detectors.windows import bounded_window

TEMPLATE_WEIGHT_PER_SHARED, TEMPLATE_WEIGHT_MAX = 0.2, 0.6  # never a link on its own
IP_WEIGHT, PREFIX_WEIGHT = 0.6, 0.5
JA4_WEIGHT, UNCOMMON_JA4_WEIGHT, ORG_WEIGHT, TIMING_WEIGHT = 0.5, 0.25, 0.5, 0.5
TIMING_WAVE_WEIGHT, TIMING_WAVE_PEERS = 0.75, 2  # synced pairs with ≥ 2 synced peers in common
RARE_JA4_SHARE, UNCOMMON_JA4_SHARE = 0.02, 0.10
CLUSTERED_JA4_USERS_PER_PREFIX = 4.0  # ≥ this many users per /24 on average: one operator
MAX_TEMPLATE_SHARE = 0.10  # a template more than this share of clients use is boilerplate
NEAR_TEMPLATE_BANDS = 4  # 16-bit bands: templates within 3 bits share at least one band
NEAR_TEMPLATE_BITS = 4  # templates this close are one template (unrelated ones differ by ~32)
MAX_BAND_BUCKET = 64  # a band value shared by more distinct templates is not compared
SLOT_MS = 30_000  # timing resolution: 30-second slots, matched with ±1 slot tolerance
TIMING_MIN_COACTIVE = 6  # co-active slots (each direction) before timing counts
TIMING_MIN_LIFT = 3.0  # co-activity over the shifted timelines (the null)
TIMING_PREFILTER_LIFT = 1.5  # candidates: co-activity this far over chance ...
TIMING_MIN_SHARE = 0.25  # ... on at least this share of each one's active slots
TIMING_MAX_DUTY = 0.3  # clients active in more than this share of slots prove nothing
MAX_TIMING_CLIENTS = 4_000  # bound on the timing matrix (clients with the most slots dropped)
TIMING_SHIFTS = (-26, -14, -6, 6, 14, 26)  # slots (±3, 7, 13 min): keep sessions, break waves
MIN_GROUP = 3  # groups of at least this many linked clients may merge on timing alone
TIMING_MIN_CROSS_PAIRS, TIMING_MIN_CROSS_DENSITY = 6, 0.25  # ... when this densely synced
TIMING_PAD = max(abs(s) for s in TIMING_SHIFTS) + 1  # no wrap-around of shifted timelines


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
    slots: npt.NDArray[np.int64]


def _prefix(ip: str) -> str:
    return ip.rsplit(".", 1)[0] if "." in ip else ip.rsplit(":", 4)[0]


def _profile(records: Sequence[RequestRecord], min_template_uses: int) -> _Client:
    counts = Counter(r.features.template for r in records if r.features.template)
    ips = {r.client_ip for r in records if r.client_ip}
    return _Client(
        templates={t for t, c in counts.items() if c >= min_template_uses},
        ips=ips,
        prefixes={_prefix(ip) for ip in ips},
        ja4={r.tls_fingerprint for r in records if r.tls_fingerprint},
        orgs={r.org_id for r in records if r.org_id},
        slots=np.unique(np.fromiter((r.ts_ms for r in records), np.int64, len(records)) // SLOT_MS),
    )


def _pairs(index: Mapping[str | int, list[str]], max_fanout: int) -> Iterable[tuple[str, str]]:
    for members in index.values():
        if 2 <= len(members) <= max_fanout:
            yield from itertools.combinations(sorted(set(members)), 2)


def _template_clusters(templates: Iterable[int]) -> dict[int, int]:
    """Template sketch -> cluster id: sketches within ``NEAR_TEMPLATE_BITS`` bits (light
    paraphrases, a changed word) are one template. Candidates share a 16-bit band (every pair
    within 3 bits does), so the cost is linear in the number of distinct templates."""
    distinct = sorted(set(templates))
    parent = list(range(len(distinct)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for b in range(NEAR_TEMPLATE_BANDS):
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(distinct):
            buckets[(t >> (16 * b)) & 0xFFFF].append(i)
        for members in buckets.values():
            if len(members) > MAX_BAND_BUCKET:
                continue
            for i, j in itertools.combinations(members, 2):
                if (distinct[i] ^ distinct[j]).bit_count() <= NEAR_TEMPLATE_BITS:
                    ri, rj = find(i), find(j)
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)
    return {t: find(i) for i, t in enumerate(distinct)}


def _template_evidence(profiles: Mapping[str, _Client], cap: int) -> dict[tuple[str, str], float]:
    """Weight per pair from the number of (near-)identical templates both reuse; a template
    used by more than ``cap`` clients is boilerplate and ignored."""
    from scipy import sparse

    names = sorted(c for c, p in profiles.items() if p.templates)
    cluster = _template_clusters(t for c in names for t in profiles[c].templates)
    rows, cols = [], []
    for i, c in enumerate(names):
        for k in {cluster[t] for t in profiles[c].templates}:
            rows.append(i)
            cols.append(k)
    if not rows:
        return {}
    m = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)),
        shape=(len(names), max(cols) + 1),
    )
    users = np.asarray(m.sum(axis=0)).ravel()
    m = m[:, np.nonzero((users >= 2) & (users <= cap))[0]]
    shared = sparse.triu(m @ m.T, k=1).tocoo()
    return {
        (names[i], names[j]): min(TEMPLATE_WEIGHT_MAX, TEMPLATE_WEIGHT_PER_SHARED * float(v))
        for i, j, v in zip(
            shared.row.tolist(), shared.col.tolist(), shared.data.tolist(), strict=True
        )
    }


def _timing_pairs(profiles: Mapping[str, _Client]) -> dict[tuple[str, str], float]:
    """Pairs whose requests are synchronised (value: their co-activity).

    ``co``: slots in which one client is active with the other active within ±1 slot
    (both directions). The null is the same count with one client's timeline shifted by a
    few minutes (median over ``TIMING_SHIFTS``): sessions, office hours and the daily curve
    survive a shift of minutes, one scheduler's waves do not. Linked: ``co`` ≥
    ``TIMING_MIN_COACTIVE`` and ``co`` ≥ ``TIMING_MIN_LIFT`` * (null + 1).
    """
    spans = [p.slots for p in profiles.values() if p.slots.size]
    if not spans:
        return {}
    lo = min(int(s[0]) for s in spans) - TIMING_PAD
    width = max(int(s[-1]) for s in spans) - lo + 1 + TIMING_PAD
    if width < 4 * TIMING_PAD:
        return {}
    names = [
        c
        for c, p in profiles.items()
        if TIMING_MIN_COACTIVE <= p.slots.size <= TIMING_MAX_DUTY * width
    ]
    if len(names) < 2:
        return {}
    names.sort(key=lambda c: profiles[c].slots.size)
    names = names[:MAX_TIMING_CLIENTS]
    active = np.zeros((len(names), width), dtype=np.float32)
    for i, c in enumerate(names):
        active[i, profiles[c].slots - lo] = 1.0
    near = np.minimum(active + np.roll(active, 1, axis=1) + np.roll(active, -1, axis=1), 1.0)
    co = active @ near.T  # co[i, j]: i's active slots with j active within ±1 slot
    both = co + co.T
    n_active = active.sum(axis=1)
    expected = np.outer(n_active, near.sum(axis=1)) / width
    chance = expected + expected.T
    share = co / n_active[:, None]  # of i's active slots, the share j shares
    cand = np.triu(
        (np.minimum(co, co.T) >= TIMING_MIN_COACTIVE)
        & (np.minimum(share, share.T) >= TIMING_MIN_SHARE)
        & (both >= TIMING_PREFILTER_LIFT * chance),
        1,
    )
    i_idx, j_idx = np.nonzero(cand)
    if i_idx.size == 0:
        return {}
    slots = [profiles[c].slots - lo for c in names]
    null = np.stack([_shifted_coactivity(near, slots, i_idx, j_idx, s) for s in TIMING_SHIFTS])
    observed = both[i_idx, j_idx]
    keep = observed >= TIMING_MIN_LIFT * (np.median(null, axis=0) + 1.0)
    out = {}
    for i, j, lift in zip(
        i_idx[keep].tolist(), j_idx[keep].tolist(), observed[keep].tolist(), strict=True
    ):
        a, b = names[i], names[j]
        out[(a, b) if a < b else (b, a)] = float(lift)
    return out


def _shifted_coactivity(
    near: npt.NDArray[np.float32],
    slots: Sequence[npt.NDArray[np.int64]],
    i_idx: npt.NDArray[np.int64],
    j_idx: npt.NDArray[np.int64],
    shift: int,
) -> npt.NDArray[np.float64]:
    """Both directions of co-activity for pairs (i, j) when the second one's timeline is
    moved by ``shift`` slots: a gather over the active slots only."""
    out = np.zeros(i_idx.size)
    for src, dst in ((i_idx, j_idx), (j_idx, i_idx)):
        lengths = np.array([slots[k].size for k in src.tolist()], dtype=np.int64)
        cols = np.concatenate([slots[k] for k in src.tolist()]) + shift
        rows = np.repeat(dst, lengths)
        hits = near[rows, cols]
        out += np.add.reduceat(hits, np.r_[0, np.cumsum(lengths)[:-1]])
    return out


def evidence(
    windows: Mapping[str, Sequence[RequestRecord]],
    *,
    min_template_uses: int = 2,
    max_fanout: int = 500,
) -> dict[tuple[str, str], dict[str, float]]:
    """Weighted evidence per client pair (``a < b``): kind -> weight, for every pair with any."""
    profiles = {c: _profile(recs, min_template_uses) for c, recs in windows.items()}
    n = len(profiles)
    ja4_users: dict[str, list[str]] = defaultdict(list)
    for c, p in profiles.items():
        for j in p.ja4:
            ja4_users[j].append(c)
    rare_cap = max(2, int(RARE_JA4_SHARE * n))
    uncommon_cap = max(2, int(UNCOMMON_JA4_SHARE * n))
    template_cap = min(max_fanout, max(50, int(MAX_TEMPLATE_SHARE * n)))
    indexes: dict[str, dict[str | int, list[str]]] = {
        k: defaultdict(list) for k in ("ip", "prefix", "org")
    }
    for c, p in profiles.items():
        for ip in p.ips:
            indexes["ip"][ip].append(c)
        for prefix in p.prefixes:
            indexes["prefix"][prefix].append(c)
        for o in p.orgs:
            indexes["org"][o].append(c)

    ev: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for pair, weight in _template_evidence(profiles, template_cap).items():
        ev[pair]["template"] = weight
    for kind, weight in (("ip", IP_WEIGHT), ("org", ORG_WEIGHT)):
        for pair in _pairs(indexes[kind], max_fanout):
            ev[pair][kind] = weight
    for pair in _pairs(indexes["prefix"], max_fanout):
        if "ip" not in ev[pair]:
            ev[pair]["ip"] = PREFIX_WEIGHT
    for members in ja4_users.values():
        users = len(members)
        if users < 2 or users > uncommon_cap:
            continue
        prefixes = {x for m in members for x in profiles[m].prefixes} or {""}
        clustered = users / len(prefixes) >= CLUSTERED_JA4_USERS_PER_PREFIX
        weight = JA4_WEIGHT if users <= rare_cap or clustered else UNCOMMON_JA4_WEIGHT
        for pair in itertools.combinations(sorted(members), 2):
            ev[pair]["ja4"] = max(weight, ev[pair].get("ja4", 0.0))
    synced = _timing_pairs(profiles)
    peers: dict[str, set[str]] = defaultdict(set)
    for a, b in synced:
        peers[a].add(b)
        peers[b].add(a)
    for a, b in synced:  # one of many accounts firing together, not a pair of cron jobs
        wave = len(peers[a] & peers[b]) >= TIMING_WAVE_PEERS
        ev[(a, b)]["timing"] = TIMING_WAVE_WEIGHT if wave else TIMING_WEIGHT
    return dict(ev)


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
    ev = evidence(windows, min_template_uses=min_template_uses, max_fanout=max_fanout)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    linked = {pair: e for pair, e in ev.items() if sum(e.values()) >= min_link}
    for a, b in linked:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = defaultdict(list)
    for c in {c for pair in linked for c in pair}:
        groups[find(c)].append(c)
    # Groups synchronised with each other as wholes are one operator spread over several
    # ranges (timing is one kind of evidence per pair, but a dense block of it is more).
    cross: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for pair, e in ev.items():
        ra, rb = find(pair[0]), find(pair[1])
        if "timing" in e and ra != rb and min(len(groups[ra]), len(groups[rb])) >= MIN_GROUP:
            cross[(ra, rb) if ra < rb else (rb, ra)].append(pair)
    for (ra, rb), pairs in cross.items():
        density = len(pairs) / (len(groups[ra]) * len(groups[rb]))
        if len(pairs) >= TIMING_MIN_CROSS_PAIRS and density >= TIMING_MIN_CROSS_DENSITY:
            linked.update({pair: {"timing": ev[pair]["timing"]} for pair in pairs})
    for a, b in linked:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups = defaultdict(list)
    for c in {c for pair in linked for c in pair}:
        groups[find(c)].append(c)
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    weights: dict[str, list[float]] = defaultdict(list)
    for (a, _), e in linked.items():
        root = find(a)
        kinds[root].update(e.keys())
        weights[root].append(sum(e.values()))

    campaigns = []
    for root, members in groups.items():
        members.sort()
        cid = "cmp-" + hashlib.sha256("\n".join(members).encode()).hexdigest()[:12]
        campaign = Campaign(
            cid,
            tuple(members),
            dict(sorted(kinds[root].items())),
            float(np.mean(weights[root])),
        )
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


def campaign_score(pooled: float | None, members: Sequence[float | None]) -> float:
    """A campaign's score: its pooled window's, or what the majority of its members score
    on their own (the lower median), whichever is higher; None (too few requests) is 0.

    The pooled window judges light accounts on their combined traffic; the member vote keeps
    a network whose accounts are each caught from being cleared by pooling artefacts (many
    accounts' IPs in one window look like an app's many users). A lone flagged member
    cannot raise its group: at least half of the members must score that high.
    """
    own = sorted(0.0 if s is None else s for s in members)
    vote = own[(len(own) - 1) // 2] if own else 0.0
    return max(0.0 if pooled is None else pooled, vote)


def score_campaign(
    detector: Detector, windows: Mapping[str, Sequence[RequestRecord]], campaign: Campaign
) -> float:
    """:func:`campaign_score` of the detector's scores of the pooled window and members."""
    return campaign_score(
        detector.score_records(pooled_window(windows, campaign.clients)),
        [detector.score_records(windows.get(c, ())) for c in campaign.clients],
    )
