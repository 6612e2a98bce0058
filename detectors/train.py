"""``antidistill train``: fit the window-feature detector on simulated (and labelled) traffic.

Reproducible from one command: the simulator is seeded, the split of scenario families into
training and held-out sets is fixed here (chosen before any result was seen, never tuned),
and the fit is deterministic. The shipped artifact is trained on the training families only,
so ``antidistill eval`` can report honest numbers for the held-out ones.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import typer

from detectors.models import ARTIFACT_DIR, Detector
from detectors.schema import RequestRecord
from detectors.windows import (
    FEATURE_NAMES,
    MAX_WINDOW,
    BenignReference,
    bounded_window,
    window_features,
)

MODEL_VERSION_PREFIX = "additive-lr"
MIN_REQUESTS = 20
DEFAULT_SCALE = 2.0  # ~1,000 simulated clients, ~400 of them benign with a scored window
FPR_POINTS = ("0.001", "0.003", "0.01")
TRAIN_SEED_OFFSET = 0
EVAL_SEED_OFFSET = 1000

# Families the shipped model never sees, fixed before any evaluation (see BENCHMARKS.md):
# for each attack mechanism seen in training a sibling is held out (random_word ->
# wiki_sentence, logprob_sweep -> logit_bias_sweep, self_instruct -> coverage_sweep), plus
# the adaptive attackers; and two benign personas, one of them a legitimate look-alike.
HELD_OUT_FAMILIES: frozenset[str] = frozenset(
    {
        "wiki_sentence",
        "logit_bias_sweep",
        "coverage_sweep",
        "adaptive",
        "agent",
        "batch_labelling",
    }
)


class Client(Protocol):
    """The simulator's client contract (``sim.traffic.SimClient``)."""

    @property
    def client(self) -> str: ...
    @property
    def family(self) -> str: ...
    @property
    def attack(self) -> bool: ...
    @property
    def attacker_share(self) -> float: ...
    @property
    def campaign(self) -> str | None: ...
    @property
    def records(self) -> tuple[RequestRecord, ...]: ...


@dataclass(frozen=True, slots=True)
class LabelledClient:
    """A client read back from the decision log with an operator's label."""

    client: str
    family: str
    attack: bool
    attacker_share: float
    campaign: str | None
    records: tuple[RequestRecord, ...]


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def simulate(seed: int, scale: float, families: Sequence[str] | None = None) -> list[Client]:
    """Clients from the traffic simulator (``sim.traffic.dataset``)."""
    from sim.traffic import dataset

    kwargs: dict[str, Any] = {"seed": seed, "scale": scale}
    if families is not None:
        kwargs["families"] = list(families)
    clients: list[Client] = list(dataset(**kwargs))
    return clients


CHECKPOINTS = (10, 20, 30, 40, 50, 60, 80, 100, 125, 150, 200, 250, 300, 400, 500)


def checkpoints(n: int, min_requests: int = MIN_REQUESTS, max_points: int = 40) -> list[int]:
    """Request counts at which a client's window is scored (as the online worker would)."""
    points = [k for k in CHECKPOINTS if min_requests <= k <= n]
    if n > 500:
        points += list(range(750, n + 1, 250))
    if n >= min_requests and (not points or points[-1] != n):
        points.append(n)
    if len(points) > max_points:
        head = [p for p in points if p <= 500]
        tail = [p for p in points if p > 500]
        keep = np.linspace(0, len(tail) - 1, max(1, max_points - len(head))).round().astype(int)
        points = head + [tail[i] for i in sorted(set(keep.tolist()))]
    return points


def trajectory(
    records: Sequence[RequestRecord],
    benign: BenignReference,
    min_requests: int = MIN_REQUESTS,
) -> tuple[list[int], npt.NDArray[np.float64]]:
    """(checkpoints, window features at each): a client's windows over time."""
    ks = checkpoints(len(records), min_requests)
    rows = [window_features(bounded_window(records, k), benign=benign) for k in ks]
    X = np.array(rows, dtype=np.float64).reshape(len(ks), len(FEATURE_NAMES))
    return ks, X


def benign_reference(clients: Sequence[Client], seed: int, per_client: int = 8) -> BenignReference:
    """A 256-request sample of benign traffic, at most ``per_client`` from each client."""
    rng = np.random.default_rng(seed)
    picked: list[RequestRecord] = []
    for c in clients:
        if c.attack or not c.records:
            continue
        idx = rng.choice(len(c.records), size=min(per_client, len(c.records)), replace=False)
        picked += [c.records[i] for i in idx]
    return BenignReference.from_records(picked, size=256, seed=seed)


@dataclass
class Trajectories:
    """Every client's windows over time: rows of ``X`` belong to ``owner[i]`` at ``k[i]``."""

    X: npt.NDArray[np.float64]
    owner: npt.NDArray[np.int64]
    k: npt.NDArray[np.int64]

    def client_max(
        self, scores: npt.NDArray[np.float64], n_clients: int
    ) -> npt.NDArray[np.float64]:
        """Client-level score: the highest score any of its windows got (-inf if none)."""
        out = np.full(n_clients, -np.inf)
        np.maximum.at(out, self.owner, scores)
        return out


def trajectories(
    clients: Sequence[Client], benign: BenignReference, progress: Progress = _quiet
) -> Trajectories:
    X_parts, owners, ks = [], [], []
    started = time.perf_counter()
    for i, c in enumerate(clients):
        k, X = trajectory(c.records, benign)
        X_parts.append(X)
        owners += [i] * len(k)
        ks += k
        if (i + 1) % 200 == 0 or i + 1 == len(clients):
            progress(
                f"  windows: {i + 1}/{len(clients)} clients ({time.perf_counter() - started:.1f}s)"
            )
    X_all = np.vstack(X_parts) if X_parts else np.zeros((0, len(FEATURE_NAMES)))
    return Trajectories(X_all, np.array(owners, dtype=np.int64), np.array(ks, dtype=np.int64))


@dataclass(frozen=True)
class AdditiveFit:
    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    coef: npt.NDArray[np.float64]
    intercept: float
    bin_edges: npt.NDArray[np.float64]
    bin_weights: npt.NDArray[np.float64]


def _bin_edges(X: npt.NDArray[np.float64], bins: int) -> npt.NDArray[np.float64]:
    """(F, bins - 1) distinct training quantiles per feature, +inf padded."""
    edges = np.full((X.shape[1], max(bins - 1, 0)), np.inf)
    for j in range(X.shape[1]):
        q = np.unique(np.quantile(X[:, j], np.linspace(0, 1, bins + 1)[1:-1]))
        q = q[q > X[:, j].min()]
        edges[j, : q.size] = q
    return edges


def fit_additive(
    X: npt.NDArray[np.float64],
    y: npt.NDArray[np.int64],
    weight: npt.NDArray[np.float64],
    bins: int = 8,
    C: float = 0.5,
    drop: frozenset[str] = frozenset(),
) -> AdditiveFit:
    """L2 logistic regression on standardized (clipped) features plus one-hot quantile bins.

    ``bins=0`` is the plain linear model; features in ``drop`` get no weight at all.
    Classes are balanced; ``weight`` balances clients.
    """
    from sklearn.linear_model import LogisticRegression

    from detectors.models import Z_CLIP

    f = X.shape[1]
    mean = X.mean(axis=0)
    scale = np.maximum(X.std(axis=0), 1e-3)
    used = np.array([name not in drop for name in FEATURE_NAMES])
    Z = np.clip((X - mean) / scale, -Z_CLIP, Z_CLIP) * used
    edges = _bin_edges(X, bins) if bins > 1 else np.zeros((f, 0))
    edges[~used] = np.inf  # a dropped feature always falls in its first bin
    width = edges.shape[1] + 1
    if edges.shape[1]:
        idx = (X[:, :, None] >= edges[None, :, :]).sum(axis=2)
        onehot = np.zeros((X.shape[0], f * width))
        onehot[np.arange(X.shape[0])[:, None], np.arange(f)[None, :] * width + idx] = 1.0
        design = np.hstack([Z, onehot[:, np.repeat(used, width)]])
    else:
        design = Z
    w = weight.astype(np.float64).copy()
    for label in (0, 1):
        mask = y == label
        if mask.any():
            w[mask] *= 0.5 / w[mask].sum()
    model = LogisticRegression(C=C, max_iter=5000, tol=1e-6)
    model.fit(design, y, sample_weight=w * len(y))
    coef = model.coef_[0].astype(np.float64)
    bin_weights = np.zeros((f, width))
    if edges.shape[1]:
        bin_weights[used] = coef[f:].reshape(int(used.sum()), width)
    return AdditiveFit(mean, scale, coef[:f] * used, float(model.intercept_[0]), edges, bin_weights)


def _detector(
    fit: AdditiveFit,
    benign: BenignReference,
    benign_median: npt.NDArray[np.float64],
    thresholds: dict[str, float],
    version: str,
    metadata: dict[str, Any],
) -> Detector:
    return Detector(
        version=version,
        feature_names=FEATURE_NAMES,
        mean=fit.mean,
        scale=fit.scale,
        coef=fit.coef,
        intercept=fit.intercept,
        bin_edges=fit.bin_edges,
        bin_weights=fit.bin_weights,
        benign_median=benign_median,
        benign=benign,
        threshold_by_fpr=thresholds,
        min_requests=MIN_REQUESTS,
        metadata=metadata,
    )


def thresholds_for(benign_scores: npt.NDArray[np.float64]) -> dict[str, float]:
    """Client-level thresholds: the (1 - fpr) quantile of benign clients' max scores.

    With fewer than 1/fpr benign clients the quantile is the highest benign score, nudged up
    a little so that client is not flagged.
    """
    s = np.sort(benign_scores[np.isfinite(benign_scores)])
    out = {}
    for fpr in FPR_POINTS:
        q = float(np.quantile(s, 1.0 - float(fpr), method="higher")) if s.size else 0.5
        out[fpr] = float(min(1.0, np.nextafter(q, 2.0)))
    return out


WATCH_SCORE, THROTTLE_SCORE = 0.5, 0.85  # the default policy's watch / throttle thresholds


def _logit(p: npt.NDArray[np.float64] | float) -> npt.NDArray[np.float64]:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    out: npt.NDArray[np.float64] = np.log(q / (1 - q))
    return out


def calibration(thresholds: dict[str, float]) -> tuple[float, float]:
    """(a, b) of the logit map ``a * logit + b`` that puts the 1 % FPR threshold at 0.5
    and the 0.3 % one at 0.85, so the default policy's ``watch`` and ``throttle`` levels
    mean those benign-client false-positive rates (a monotone map: no metric changes)."""
    lo, hi = float(_logit(thresholds["0.01"])), float(_logit(thresholds["0.003"]))
    a = float(_logit(THROTTLE_SCORE) - _logit(WATCH_SCORE)) / (hi - lo) if hi - lo > 1e-6 else 1.0
    return a, float(_logit(WATCH_SCORE)) - a * lo


def _scaled(fit: AdditiveFit, a: float, b: float) -> AdditiveFit:
    return AdditiveFit(
        fit.mean, fit.scale, a * fit.coef, a * fit.intercept + b, fit.bin_edges, a * fit.bin_weights
    )


# Deployment configuration a client sets freely (whether it sends a system prompt): in the
# simulator attackers rarely do, which a model can learn as a shortcut that will not hold.
CONFIG_FEATURES = frozenset({"system_prompt_share", "system_constant_share"})


@dataclass(frozen=True)
class Candidate:
    bins: int
    C: float
    drop: frozenset[str]

    @property
    def name(self) -> str:
        return f"bins={self.bins},C={self.C},drop_config={bool(self.drop)}"


CANDIDATES = tuple(
    Candidate(bins, C, drop)
    for bins in (0, 8, 16)
    for C in (0.05, 0.5, 2.0)
    for drop in (frozenset(), CONFIG_FEATURES)
)


def oof_window_scores(
    traj: Trajectories,
    y: npt.NDArray[np.int64],
    weight: npt.NDArray[np.float64],
    fold_of: npt.NDArray[np.int64],
    benign: BenignReference,
    candidate: Candidate,
) -> npt.NDArray[np.float64]:
    """Each window's (uncalibrated) score from the model fit without its client's fold."""
    oof = np.full(len(traj.owner), np.nan)
    for f in np.unique(fold_of):
        test = fold_of[traj.owner] == f
        part = fit_additive(
            traj.X[~test], y[~test], weight[~test], candidate.bins, candidate.C, candidate.drop
        )
        probe = _detector(part, benign, np.zeros(len(FEATURE_NAMES)), {}, "fold", {})
        oof[test] = probe.score(traj.X[test])
    return oof


def _oof_client_scores(
    traj: Trajectories,
    y: npt.NDArray[np.int64],
    weight: npt.NDArray[np.float64],
    fold_of: npt.NDArray[np.int64],
    n_clients: int,
    benign: BenignReference,
    candidate: Candidate,
) -> npt.NDArray[np.float64]:
    oof = oof_window_scores(traj, y, weight, fold_of, benign, candidate)
    return traj.client_max(oof, n_clients)


def _selection_metric(
    scores: npt.NDArray[np.float64], y: npt.NDArray[np.int64]
) -> tuple[float, float]:
    """(TPR at client FPR ≤ 1 %, AUROC) of out-of-fold client scores: higher is better."""
    from sklearn.metrics import roc_auc_score, roc_curve

    ok = np.isfinite(scores)
    fpr, tpr, _ = roc_curve(y[ok], scores[ok])
    return float(tpr[fpr <= 0.01].max()), float(roc_auc_score(y[ok], scores[ok]))


def campaign_clients(clients: Sequence[Client]) -> list[LabelledClient]:
    """Linked groups of ``clients`` as pooled pseudo-clients (members' recent records merged).

    The worker scores a campaign's pooled window with the same model, so training sees
    pooled windows too: benign groups (colleagues sharing an office and an org) as well as
    harvesting networks. A group is labelled by the majority of its members.
    """
    from detectors.campaigns import link_clients

    by_id = {c.client: c for c in clients}
    windows = {c.client: c.records[-MAX_WINDOW:] for c in clients}
    out = []
    for campaign in link_clients(windows):
        members = [by_id[m] for m in campaign.clients]
        attack = 2 * sum(m.attack for m in members) > len(members)
        family = Counter(m.family for m in members).most_common(1)[0][0]
        merged = sorted((r for m in members for r in windows[m.client]), key=lambda r: r.ts_ms)
        out.append(
            LabelledClient(campaign.id, family, attack, float(attack), campaign.id, tuple(merged))
        )
    return out


def family_folds(clients: Sequence[Client], folds: int, seed: int) -> npt.NDArray[np.int64]:
    """Fold of each client: attack families whole (a fold's model never saw its attack
    families, as the shipped model never sees the held-out ones); benign clients at random."""
    rng = np.random.default_rng(seed)
    families = sorted({c.family for c in clients if c.attack})
    fam_fold = {f: i % folds for i, f in enumerate(rng.permutation(families).tolist())}
    random_fold = rng.permutation(len(clients)) % folds
    return np.array(
        [fam_fold[c.family] if c.attack else random_fold[i] for i, c in enumerate(clients)],
        dtype=np.int64,
    )


def fit_detector(
    clients: Sequence[Client],
    seed: int,
    progress: Progress = _quiet,
    folds: int = 4,
    metadata: dict[str, Any] | None = None,
) -> Detector:
    """Fit on ``clients``; pick the model and thresholds from out-of-fold client scores.

    Folds hold out whole attack families (:func:`family_folds`), so the choice favours
    models that generalise to attacks they never saw. The candidate (linear or additive,
    regularisation, with or without configuration features) with the best out-of-fold TPR
    at 1 % FPR is refit on every client; its thresholds are quantiles of the out-of-fold
    benign client scores. The held-out families play no role in any choice.
    """
    benign = benign_reference(clients, seed)
    pooled = campaign_clients(clients)
    progress(
        f"benign reference: {benign.sketches.size} sketches; {len(pooled)} linked groups "
        f"({sum(c.attack for c in pooled)} harvesting) added as pooled clients; computing windows"
    )
    clients = [*clients, *pooled]
    traj = trajectories(clients, benign, progress)
    y_client = np.array([int(c.attack) for c in clients], dtype=np.int64)
    y = y_client[traj.owner]
    counts = np.bincount(traj.owner, minlength=len(clients)).astype(np.float64)
    weight = 1.0 / np.maximum(counts[traj.owner], 1.0)
    fold_of = family_folds(clients, folds, seed)

    selection: dict[str, Any] = {}
    best: tuple[tuple[float, float], Candidate, npt.NDArray[np.float64]] | None = None
    for cand in CANDIDATES:
        oof = _oof_client_scores(traj, y, weight, fold_of, len(clients), benign, cand)
        metric = _selection_metric(oof, y_client)
        selection[cand.name] = {"oof_tpr_at_fpr_0.01": metric[0], "oof_auroc": metric[1]}
        progress(f"  {cand.name}: out-of-fold TPR@1% {metric[0]:.3f}, AUROC {metric[1]:.4f}")
        if best is None or metric > best[0]:
            best = (metric, cand, oof)
    assert best is not None
    _, chosen, client_oof = best
    bins = chosen.bins
    benign_clients = (y_client == 0) & np.isfinite(client_oof)
    a, b = calibration(thresholds_for(client_oof[benign_clients]))
    calibrated = 1.0 / (1.0 + np.exp(-(a * _logit(client_oof[benign_clients]) + b)))
    thresholds = thresholds_for(calibrated)

    final = _scaled(fit_additive(traj.X, y, weight, chosen.bins, chosen.C, chosen.drop), a, b)
    per_client = [
        np.median(traj.X[traj.owner == i], axis=0)
        for i in range(len(clients))
        if y_client[i] == 0 and counts[i] > 0
    ]
    benign_median = (
        np.median(np.array(per_client), axis=0) if per_client else np.zeros(len(FEATURE_NAMES))
    )
    meta = dict(metadata or {})
    meta.update(
        train_clients=len(clients),
        train_attack_clients=int(y_client.sum()),
        train_windows=len(y),
        families=sorted({c.family for c in clients}),
        model_selection=selection,
        chosen=chosen.name,
    )
    version = f"{MODEL_VERSION_PREFIX}-b{bins}-s{seed}-{len(clients)}c"
    return _detector(final, benign, benign_median, thresholds, version, meta)


def split_families(clients: Sequence[Client]) -> tuple[list[Client], list[Client]]:
    """(training-family clients, held-out-family clients)."""
    train = [c for c in clients if c.family not in HELD_OUT_FAMILIES]
    held = [c for c in clients if c.family in HELD_OUT_FAMILIES]
    return train, held


def read_labelled(redis_url: str, prefix: str, max_events: int = 2_000_000) -> list[LabelledClient]:
    """Clients labelled by operators (``<prefix>:labels``) with their logged events."""
    import redis

    from gateway.keys import KeySpace
    from gateway.store.events import DecisionEvent

    keys = KeySpace(prefix)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    stored = cast(dict[str, str], r.hgetall(f"{prefix}:labels"))
    labels = {k: v for k, v in stored.items() if v in ("harvesting", "benign")}
    if not labels:
        return []
    by_client: dict[str, list[RequestRecord]] = {c: [] for c in labels}
    last, seen = "-", 0
    while seen < max_events:
        batch = cast(
            list[tuple[str, dict[str, str]]],
            r.xrange(keys.decisions, min=last, max="+", count=5000),
        )
        if last != "-":
            batch = batch[1:]
        if not batch:
            break
        for entry_id, fields in batch:
            seen += 1
            if fields.get("client") in by_client:
                event = DecisionEvent.from_fields(fields)
                by_client[event.client].append(RequestRecord.from_event(event))
            last = entry_id
    out = []
    for client, recs in by_client.items():
        recs.sort(key=lambda rec: rec.ts_ms)
        attack = labels[client] == "harvesting"
        out.append(
            LabelledClient(client, "labelled", attack, 1.0 if attack else 0.0, None, tuple(recs))
        )
    return [c for c in out if len(c.records) >= MIN_REQUESTS]


def train(
    seed: int = 0,
    out: Path = ARTIFACT_DIR,
    scale: float = DEFAULT_SCALE,
    labelled: Sequence[Client] = (),
    all_families: bool = False,
    progress: Progress = print,
) -> tuple[Detector, Path]:
    """Simulate, fit, and write ``out/detector.{json,npz}`` plus the metrics card."""
    from detectors.evaluate import calibrate_baselines, evaluate, write_card

    started = time.perf_counter()
    progress(f"simulating traffic (seed {seed + TRAIN_SEED_OFFSET}, scale {scale})")
    clients = simulate(seed + TRAIN_SEED_OFFSET, scale)
    train_clients, _ = (clients, []) if all_families else split_families(clients)
    train_clients = list(train_clients) + list(labelled)
    progress(
        f"{len(train_clients)} training clients ({sum(c.attack for c in train_clients)} attack)"
    )
    detector = fit_detector(
        train_clients,
        seed,
        progress,
        metadata={
            "seed": seed,
            "scale": scale,
            "held_out_families": [] if all_families else sorted(HELD_OUT_FAMILIES),
            "labelled_clients": len(labelled),
        },
    )
    progress("calibrating the baselines on the same benign training clients")
    detector.metadata["baseline_thresholds"] = calibrate_baselines(
        train_clients, detector, progress
    )
    json_path, _ = detector.save(out)
    progress(f"wrote {json_path} ({time.perf_counter() - started:.1f}s); evaluating")
    report = evaluate(detector, seed=seed, scale=scale, progress=progress, baselines=False)
    write_card(detector, report, out)
    progress(f"metrics card: {out / 'metrics.md'}")
    return detector, json_path


MODELS = ("lr", "sequence")


def train_command(
    model: Annotated[
        str,
        typer.Option(
            help="lr: the additive logistic model (default); sequence: the torch sequence "
            "model over per-request streams (needs the torch extra and the lr artifact)."
        ),
    ] = "lr",
    seed: Annotated[int, typer.Option(help="Simulator and fit seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Artifact directory.")] = ARTIFACT_DIR,
    scale: Annotated[float, typer.Option(help="Simulated clients per family, x.")] = DEFAULT_SCALE,
    all_families: Annotated[
        bool, typer.Option(help="Also train on the held-out families (no honest eval then).")
    ] = False,
    from_labels: Annotated[
        bool, typer.Option(help="Also train on clients labelled in the decision log.")
    ] = False,
    redis_url: Annotated[
        str | None, typer.Option("--redis", envvar="ANTIDISTILL_REDIS", help="Redis URL.")
    ] = None,
    prefix: Annotated[str, typer.Option(help="Key prefix of the decision log.")] = "antidistill",
) -> None:
    """Train the harvesting detector on simulated traffic and write a versioned artifact."""
    if model not in MODELS:
        raise typer.BadParameter(f"--model must be one of {', '.join(MODELS)}, not {model!r}")
    if model == "sequence":
        from detectors.models.sequence import torch_available

        if not torch_available():
            raise typer.BadParameter(
                "--model sequence needs torch: pip install -e '.[torch]'", param_hint="--model"
            )
    labelled: list[Client] = []
    if from_labels:
        if not redis_url:
            raise typer.BadParameter("--from-labels needs --redis URL")
        labelled = list(read_labelled(redis_url, prefix))
        typer.echo(
            f"{len(labelled)} labelled clients from {prefix}:labels "
            f"({sum(c.attack for c in labelled)} harvesting)"
        )
    if model == "sequence":
        from detectors.train_sequence import train as train_sequence

        try:
            seq, seq_path = train_sequence(
                seed=seed,
                out=out,
                scale=scale,
                labelled=labelled,
                all_families=all_families,
                progress=typer.echo,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        typer.echo(f"{seq.version}: {seq_path}")
        return
    detector, path = train(
        seed=seed,
        out=out,
        scale=scale,
        labelled=labelled,
        all_families=all_families,
        progress=typer.echo,
    )
    typer.echo(f"{detector.version}: {path}")
