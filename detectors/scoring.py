"""What the detector decides, without I/O: shared by the live worker and ``policy replay``.

The worker (:mod:`detectors.worker`) feeds these from the decision stream and Redis; the
replay (:mod:`detectors.replay`) from the logged events in event time. Both call the same
functions, so a replay follows the worker's filter, cadence, reason codes, campaign
scoring and ladder by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from detectors.ladder import Decision, decide, reason_code, reason_codes
from detectors.schema import RequestRecord
from gateway.identity import ANONYMOUS
from gateway.policy import Detector as DetectorPolicy
from gateway.policy import Policy
from gateway.ratelimit.levels import Level
from gateway.store.events import DecisionEvent

EXPLAIN_TOP = 3
CAMPAIGN_ACTIVE_MS = 3_600_000  # linking looks at clients active in the last hour
_SELF_INFLICTED = ("throttle", "block")

Vector = npt.NDArray[np.float64]
Explanation = list[tuple[str, float, float, float]]


class Scorer(Protocol):
    """What the worker needs of a detector model (``detectors.models.Detector``)."""

    @property
    def min_requests(self) -> int: ...

    def score(self, X: Any) -> Any: ...

    def explain(self, x: Any, top: int = ...) -> Explanation: ...


Featurize = Callable[[Sequence[RequestRecord]], Any]
"""One client's window of records → its feature vector (``detectors.windows``)."""

Link = Callable[[Mapping[str, Sequence[RequestRecord]]], Sequence[Any]]
"""Windows by client → campaigns with ``.id``, ``.clients`` and ``.links`` (evidence kinds)."""


class SequenceScorer(Protocol):
    """A second model over the per-request stream whose score is combined with the first
    (``detectors.models.sequence.SequenceDetector``)."""

    def score_windows(self, windows: Sequence[Sequence[RequestRecord]]) -> Vector: ...

    def combine(self, first: Vector, second: Vector) -> Vector: ...


class ModelUnavailable(RuntimeError):
    """The policy asks for a model this installation cannot load (the message says why)."""


@dataclass(frozen=True, slots=True)
class Models:
    """What the detector scores with: the model, the window featurizer, the campaign linker."""

    scorer: Scorer
    featurize: Featurize
    link: Link | None = None
    sequence: SequenceScorer | None = None  # combined with ``scorer``'s score if set


def check_model(model: str) -> None:
    """Raise :class:`ModelUnavailable` now if ``model`` could not be loaded for lack of torch
    (so ``serve`` and ``worker`` refuse to start, rather than run without a detector)."""
    from detectors.models.sequence import torch_available

    if model == "combined" and not torch_available():
        raise ModelUnavailable(
            "detector.model 'combined' needs torch: pip install 'antidistill[torch]' "
            "(or set detector.model: additive)"
        )


def load_default_models(model: str = "additive") -> Models:
    """The shipped detector (imported here: scikit-learn loads in about a second), and for
    ``model="combined"`` the shipped sequence model beside it.

    Raises :class:`ModelUnavailable` when the combined model needs torch and it is not
    installed, or when the shipped sequence model was calibrated against another additive
    model.
    """
    from detectors.campaigns import link_clients
    from detectors.models import load_default_detector

    detector = load_default_detector()
    check_model(model)
    sequence = None
    if model == "combined":
        from detectors.models.sequence import load_default_sequence_detector

        sequence = load_default_sequence_detector()
        if sequence.combined.get("lr_version") != detector.version:
            raise ModelUnavailable(
                f"the shipped sequence model {sequence.version} was calibrated with the "
                f"additive model {sequence.combined.get('lr_version')}, not {detector.version}"
            )
    # Campaigns are scored here (with reason codes), so the linker only links.
    return Models(detector, detector.features, link_clients, sequence)


# -- which requests count ---------------------------------------------------------------


def record_of_event(event: DecisionEvent) -> RequestRecord | None:
    """The record of one decision event; None for what the windows leave out.

    Left out: anonymous requests, and requests refused because of the enforcement level
    the detector itself set (refused at ``block``, rate limited at ``throttle``). Counting
    those would feed enforcement back into the score: a blocked client's window would fill
    with refusals, its score fall, the block lift, and the attack resume — a loop.
    Raises ValueError for an event whose features do not parse.
    """
    if not event.client or event.client == ANONYMOUS:
        return None
    if event.decision != "admitted" and event.level in _SELF_INFLICTED:
        return None
    return RequestRecord.from_event(event)


def sorted_window(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """A window in request order (the stream is in the order responses finished)."""
    return sorted(records, key=_ts)


def _ts(record: RequestRecord) -> int:
    return record.ts_ms


# -- when a client is scored ------------------------------------------------------------


def is_due(
    seen: int, new: int, since_scored_s: float | None, det: DetectorPolicy, minimum: int
) -> bool:
    """Whether a client is scored now: once it has ``minimum`` requests (``seen``), then
    after ``score_every_requests`` ``new`` ones or ``score_every_s`` since its last scoring
    (``since_scored_s``; None: never scored)."""
    if seen < minimum:
        return False
    return (
        since_scored_s is None
        or new >= det.score_every_requests
        or since_scored_s >= det.score_every_s
    )


def featurize(models: Models, windows: Sequence[Sequence[RequestRecord]]) -> Vector:
    """The windows' feature vectors, one row each."""
    if not windows:
        return np.zeros((0, 0), dtype=np.float64)
    return np.vstack([np.asarray(models.featurize(w), dtype=np.float64) for w in windows])


def score_windows(models: Models, X: Vector, windows: Sequence[Sequence[RequestRecord]]) -> Vector:
    """The scores of ``windows`` (``X``: their feature vectors, one row each): the model's,
    or, with a sequence model, the two combined. Reason codes always come from the
    additive model's explanation of ``X``."""
    scores = np.asarray(models.scorer.score(X), dtype=np.float64)
    if models.sequence is not None and len(windows):
        scores = models.sequence.combine(scores, models.sequence.score_windows(windows))
    return scores


def own_result(
    score: float,
    explain: Callable[[], Explanation],
    campaign: tuple[float, tuple[str, ...]] | None,
    det: DetectorPolicy,
) -> tuple[float, tuple[str, ...], Explanation]:
    """A client's score, reason codes and explanation from its own window's ``score``.

    ``explain`` is called only at ``watch - hysteresis`` or above (below it a score needs
    no reasons, and explaining costs). A campaign that linked the client and scores higher
    (``campaign``: its score and reasons until the next linking) stands in for it.
    """
    gate = det.thresholds.watch - det.hysteresis
    explanation = explain() if score >= gate else []
    reasons = reason_codes(score, explanation, EXPLAIN_TOP)
    if campaign is not None and campaign[0] > score:
        return campaign[0], (*campaign[1], *reasons[1:]), explanation
    return score, reasons, explanation


def ladder_decision(
    policy: Policy,
    client: str,
    current: Level,
    since_ms: float | None,
    score: float,
    reasons: Sequence[str],
    now_ms: float,
) -> Decision:
    """The ladder (:func:`detectors.ladder.decide`) under ``policy`` for a client at
    ``current``, a level the detector set at ``since_ms`` (None: unknown)."""
    det = policy.detector
    override = policy.clients.get(client)
    return decide(
        current,
        score,
        reasons,
        thresholds=det.thresholds,
        hysteresis=det.hysteresis,
        allowlisted=override is not None and override.allowlist,
        now_ms=now_ms,
        ttl_s=det.level_ttl_s,
        held_s=(now_ms - since_ms) / 1000 if since_ms else None,
        min_hold_s=det.min_hold_s,
    )


# -- campaigns --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignScore:
    """A linked campaign scored as one client on its members' pooled window."""

    id: str
    members: tuple[str, ...]  # sorted
    links: tuple[str, ...]  # evidence kinds
    score: float
    reasons: tuple[str, ...]
    explanation: Explanation


def active_windows(
    windows: Mapping[str, Sequence[RequestRecord]], size: int | None = None
) -> dict[str, list[RequestRecord]]:
    """The windows linking looks at, in request order: clients whose latest record (in
    stream order) is within an hour of the newest. ``size``: keep each one's last ``size``
    records (the windows given are longer)."""
    newest = max((r[-1].ts_ms for r in windows.values() if r), default=0)
    return {
        c: sorted_window(r if size is None else r[-size:])
        for c, r in windows.items()
        if r and r[-1].ts_ms >= newest - CAMPAIGN_ACTIVE_MS
    }


def score_campaigns(
    models: Models, windows: Mapping[str, Sequence[RequestRecord]]
) -> list[CampaignScore]:
    """Link ``windows`` into campaigns (more than one member) and score each: the higher of
    its members' pooled window (bounded like one client's) and what most members score on
    their own (:func:`detectors.campaigns.campaign_score`)."""
    if models.link is None:
        return []
    from detectors.campaigns import campaign_score, pooled_window

    campaigns = [c for c in models.link(windows) if len(members(c)) > 1]
    if not campaigns:
        return []
    pooled = [pooled_window(windows, members(c)) for c in campaigns]
    X = featurize(models, pooled)
    scores = score_windows(models, X, pooled)
    # Each member on its own window too: a campaign is at least what most members score.
    minimum = models.scorer.min_requests
    scored = sorted(
        {m for c in campaigns for m in members(c) if len(windows.get(m, ())) >= minimum}
    )
    own: dict[str, float] = {}
    if scored:
        own_windows = [sorted_window(windows[m]) for m in scored]
        found = score_windows(models, featurize(models, own_windows), own_windows)
        own = {m: float(v) for m, v in zip(scored, found, strict=True)}
    out = []
    for i, campaign in enumerate(campaigns):
        names = tuple(sorted(members(campaign)))
        value = campaign_score(float(scores[i]), [own.get(m) for m in names])
        cid = campaign_id(campaign, names)
        kinds = link_types(campaign)
        codes = (
            reason_code(f"campaign:{cid}"),
            *(reason_code(f"campaign_link:{t}") for t in kinds),
        )
        explanation = models.scorer.explain(X[i], EXPLAIN_TOP)
        reasons = reason_codes(value, explanation, EXPLAIN_TOP, extra=codes)
        out.append(CampaignScore(cid, names, kinds, value, reasons, explanation))
    return out


def members(campaign: Any) -> tuple[str, ...]:
    """A linker's campaign's clients (``.clients`` or ``.members``)."""
    found = getattr(campaign, "clients", None) or getattr(campaign, "members", None) or ()
    return tuple(str(m) for m in found)


def link_types(campaign: Any) -> tuple[str, ...]:
    """The kinds of evidence that linked a campaign (``shared`` when it does not say)."""
    for name in ("link_types", "links", "reasons"):
        value = getattr(campaign, name, None)
        if value:
            if isinstance(value, dict):
                return tuple(str(k) for k in value)
            return tuple(str(v) for v in value)
    return ("shared",)


def campaign_id(campaign: Any, names: Sequence[str]) -> str:
    """A campaign's id: the linker's (16 characters at most), else its first member's."""
    given = getattr(campaign, "id", None)
    if given:
        return str(given)[:16]
    return names[0][:12]
