"""``antidistill train --model sequence``: fit the per-request sequence detector (torch).

The same protocol as the additive model (``detectors.train``): training families only,
windows at the same checkpoints, leave-attack-family-out folds for out-of-fold scores, and
thresholds (and the score calibration) from out-of-fold benign clients. Given the shipped
additive model, it also sets thresholds for the combined score (the mean of the two
calibrated scores) from both models' out-of-fold scores. Everything is seeded; torch runs
with deterministic algorithms on a fixed number of threads, so one command reproduces the
artifact.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.models import ARTIFACT_DIR, Detector
from detectors.models.sequence import (
    SEQ_FEATURE_NAMES,
    NetConfig,
    SequenceDetector,
    StreamArrays,
    batch,
    build_net,
    sequence_matrix,
)
from detectors.train import (
    CANDIDATES,
    DEFAULT_SCALE,
    HELD_OUT_FAMILIES,
    MIN_REQUESTS,
    TRAIN_SEED_OFFSET,
    Client,
    Progress,
    Trajectories,
    _logit,
    _quiet,
    benign_reference,
    calibration,
    campaign_clients,
    checkpoints,
    family_folds,
    oof_window_scores,
    simulate,
    split_families,
    thresholds_for,
    trajectories,
)
from detectors.windows import bounded_window

MODEL_VERSION_PREFIX = "conv-attn"
TRAIN_THREADS = 1  # fixed: float reductions (and so the weights) depend on the thread count


@dataclass(frozen=True)
class FitConfig:
    """Training hyper-parameters (fixed before any evaluation; not tuned on held-out data)."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-3
    folds: int = 4


@dataclass
class Windows:
    """Every client's windows at its checkpoints (the order of ``trajectories``)."""

    owner: npt.NDArray[np.int64]
    k: npt.NDArray[np.int64]
    mats: list[npt.NDArray[np.float32]]


def windows_of(
    clients: Sequence[Client], seq_len: int, min_requests: int = MIN_REQUESTS
) -> Windows:
    """Sequence matrices of each client's bounded window at each checkpoint."""
    owner: list[int] = []
    ks: list[int] = []
    mats: list[npt.NDArray[np.float32]] = []
    for i, c in enumerate(clients):
        points = checkpoints(len(c.records), min_requests)
        if not points:
            continue
        stream = StreamArrays.of(c.records)
        for k in points:
            stop = min(k, len(c.records))
            start = stop - len(bounded_window(c.records, k))
            mats.append(sequence_matrix(stream, start, stop, seq_len))
            owner.append(i)
            ks.append(k)
    return Windows(np.array(owner, dtype=np.int64), np.array(ks, dtype=np.int64), mats)


@contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seeded, deterministic algorithms, ``TRAIN_THREADS`` threads (restored afterwards)."""
    import torch

    threads, was = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was)


def input_stats(
    mats: Sequence[npt.NDArray[np.float32]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    rows = np.concatenate([m for m in mats if len(m)]) if mats else np.zeros((0, 1))
    if rows.size == 0:
        d = len(SEQ_FEATURE_NAMES)
        return np.zeros(d, dtype=np.float32), np.ones(d, dtype=np.float32)
    mean = rows.mean(axis=0).astype(np.float32)
    scale = np.maximum(rows.std(axis=0), 1e-3).astype(np.float32)
    return mean, scale


def balanced_weights(
    owner: npt.NDArray[np.int64], y: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Each client weighs the same whatever its window count; each class weighs half."""
    counts = np.bincount(owner).astype(np.float64)
    w = 1.0 / np.maximum(counts[owner], 1.0)
    for label in (0, 1):
        mask = y == label
        if mask.any():
            w[mask] *= 0.5 / w[mask].sum()
    out: npt.NDArray[np.float64] = w * len(y)
    return out


def fit_net(
    mats: Sequence[npt.NDArray[np.float32]],
    y: npt.NDArray[np.int64],
    weight: npt.NDArray[np.float64],
    net_config: NetConfig,
    fit: FitConfig,
    seed: int,
    progress: Progress = _quiet,
    label: str = "",
) -> tuple[dict[str, npt.NDArray[np.float32]], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(weights, input mean, input scale) of a network fit on the windows ``mats``."""
    import torch

    mean, scale = input_stats(mats)
    X_np, mask_np = batch(mats, mean, scale, net_config.seq_len)
    X, mask = torch.from_numpy(X_np), torch.from_numpy(mask_np)
    target = torch.from_numpy(y.astype(np.float32))
    w = torch.from_numpy(weight.astype(np.float32))
    with deterministic_torch(seed):
        net = build_net(net_config)
        opt = torch.optim.AdamW(net.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        for epoch in range(fit.epochs):
            net.train()
            order = torch.randperm(len(y), generator=gen)
            total, seen = 0.0, 0.0
            for lo in range(0, len(y), fit.batch_size):
                idx = order[lo : lo + fit.batch_size]
                logits = net(X[idx], mask[idx])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, target[idx], weight=w[idx], reduction="sum"
                ) / w[idx].sum().clamp(min=1e-6)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            done = epoch + 1
            bar = "#" * (20 * done // fit.epochs)
            progress(
                f"  {label}[{bar:<20}] epoch {done}/{fit.epochs} loss {total / max(seen, 1):.4f} "
                f"({time.perf_counter() - started:.1f}s)"
            )
        net.eval()
        weights = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    return weights, mean, scale


def _probe(
    weights: dict[str, npt.NDArray[np.float32]],
    mean: npt.NDArray[np.float32],
    scale: npt.NDArray[np.float32],
    net_config: NetConfig,
) -> SequenceDetector:
    return SequenceDetector("fold", net_config, mean, scale, weights, (1.0, 0.0), {})


def _sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = np.exp(-np.logaddexp(0.0, -z))  # no overflow warnings
    return out


def _client_max(
    owner: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], n: int
) -> npt.NDArray[np.float64]:
    out = np.full(n, -np.inf)
    np.maximum.at(out, owner, scores)
    return out


def lr_oof_calibrated(
    clients: Sequence[Client],
    pooled_clients: Sequence[Client],
    lr: Detector,
    seed: int,
    folds: int,
    progress: Progress,
) -> tuple[Trajectories, npt.NDArray[np.float64]]:
    """The additive model's calibrated out-of-fold window scores, recomputed exactly as
    ``fit_detector`` computed them when it chose ``lr`` (same clients, seed, folds, candidate)."""
    chosen = lr.metadata.get("chosen")
    cand = next((c for c in CANDIDATES if c.name == chosen), None)
    if cand is None:
        raise ValueError(f"additive model {lr.version}: unknown candidate {chosen!r}")
    benign = benign_reference(clients, seed)
    all_clients = [*clients, *pooled_clients]
    traj = trajectories(all_clients, benign, progress)
    y_client = np.array([int(c.attack) for c in all_clients], dtype=np.int64)
    y = y_client[traj.owner]
    counts = np.bincount(traj.owner, minlength=len(all_clients)).astype(np.float64)
    weight = 1.0 / np.maximum(counts[traj.owner], 1.0)
    fold_of = family_folds(all_clients, folds, seed)
    oof = oof_window_scores(traj, y, weight, fold_of, benign, cand)
    client_oof = traj.client_max(oof, len(all_clients))
    ok = (y_client == 0) & np.isfinite(client_oof)
    a, b = calibration(thresholds_for(client_oof[ok]))
    return traj, _sigmoid(a * _logit(oof) + b)


def fit_sequence(
    clients: Sequence[Client],
    seed: int,
    progress: Progress = _quiet,
    *,
    lr: Detector | None = None,
    net_config: NetConfig | None = None,
    fit: FitConfig | None = None,
    metadata: dict[str, Any] | None = None,
) -> SequenceDetector:
    """Fit on ``clients`` (training families); thresholds from out-of-fold benign clients.

    With ``lr`` (the additive model fit on the same clients and seed), the combined score's
    thresholds are set from both models' out-of-fold scores as well.
    """
    net_config = net_config or NetConfig()
    fit = fit or FitConfig()
    started = time.perf_counter()
    pooled = campaign_clients(clients)
    all_clients = [*clients, *pooled]
    progress(
        f"{len(pooled)} linked groups added as pooled clients; building request streams "
        f"(last {net_config.seq_len} requests of each window)"
    )
    win = windows_of(all_clients, net_config.seq_len)
    n = len(all_clients)
    y_client = np.array([int(c.attack) for c in all_clients], dtype=np.int64)
    y = y_client[win.owner]
    weight = balanced_weights(win.owner, y)
    fold_of = family_folds(all_clients, fit.folds, seed)
    progress(f"{len(win.mats)} windows of {n} clients ({time.perf_counter() - started:.1f}s)")

    oof = np.full(len(y), np.nan)
    for f in range(fit.folds):
        test = fold_of[win.owner] == f
        if not test.any():
            continue
        tr = np.nonzero(~test)[0]
        part = fit_net(
            [win.mats[i] for i in tr],
            y[tr],
            balanced_weights(win.owner[tr], y[tr]),
            net_config,
            fit,
            seed,
            progress,
            label=f"fold {f + 1}/{fit.folds} ",
        )
        te = np.nonzero(test)[0]
        oof[te] = _probe(*part, net_config).logits([win.mats[i] for i in te])
    client_oof = _client_max(win.owner, oof, n)
    benign_ok = (y_client == 0) & np.isfinite(client_oof)
    # calibration() works on probabilities: sigmoid(a * logit(sigmoid(x)) + b) = sigmoid(a x + b)
    a, b = calibration(thresholds_for(_sigmoid(client_oof[benign_ok])))
    oof_cal = _sigmoid(a * oof + b)
    thresholds = thresholds_for(_client_max(win.owner, oof_cal, n)[benign_ok])
    oof_metrics = _oof_metrics(_client_max(win.owner, oof_cal, n), y_client)
    progress(
        f"out-of-fold (leave-attack-family-out): TPR@1% {oof_metrics['oof_tpr_at_fpr_0.01']:.3f}, "
        f"AUROC {oof_metrics['oof_auroc']:.4f}"
    )

    combined: dict[str, Any] = {}
    if lr is not None:
        progress(f"additive model {lr.version}: recomputing its out-of-fold scores")
        traj, lr_oof = lr_oof_calibrated(clients, pooled, lr, seed, fit.folds, progress)
        if not (np.array_equal(traj.owner, win.owner) and np.array_equal(traj.k, win.k)):
            raise ValueError("additive and sequence windows differ; cannot combine")
        both = 0.5 * (lr_oof + oof_cal)
        both_max = _client_max(win.owner, both, n)
        combined = {
            "rule": "mean",
            "lr_version": lr.version,
            "threshold_by_fpr": thresholds_for(both_max[benign_ok]),
            "oof": _oof_metrics(both_max, y_client),
            "lr_oof": _oof_metrics(_client_max(win.owner, lr_oof, n), y_client),
        }
        progress(
            f"combined (mean) out-of-fold TPR@1% {combined['oof']['oof_tpr_at_fpr_0.01']:.3f}; "
            f"additive alone {combined['lr_oof']['oof_tpr_at_fpr_0.01']:.3f}"
        )

    weights, mean, scale = fit_net(
        win.mats, y, weight, net_config, fit, seed, progress, label="final "
    )
    meta = dict(metadata or {})
    meta.update(
        train_clients=n,
        train_attack_clients=int(y_client.sum()),
        train_windows=len(y),
        families=sorted({c.family for c in all_clients}),
        fit={
            "epochs": fit.epochs,
            "batch_size": fit.batch_size,
            "lr": fit.lr,
            "weight_decay": fit.weight_decay,
            "folds": fit.folds,
            "threads": TRAIN_THREADS,
        },
        out_of_fold=oof_metrics,
        train_seconds=round(time.perf_counter() - started, 1),
    )
    version = f"{MODEL_VERSION_PREFIX}-h{net_config.hidden}-L{net_config.seq_len}-s{seed}-{n}c"
    return SequenceDetector(
        version=version,
        config=net_config,
        input_mean=mean,
        input_scale=scale,
        weights=weights,
        calibration=(a, b),
        threshold_by_fpr=thresholds,
        combined=combined,
        min_requests=MIN_REQUESTS,
        metadata=meta,
    )


def _oof_metrics(
    client_scores: npt.NDArray[np.float64], y: npt.NDArray[np.int64]
) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score, roc_curve

    ok = np.isfinite(client_scores)
    fpr, tpr, _ = roc_curve(y[ok], client_scores[ok])
    return {
        "oof_tpr_at_fpr_0.01": float(tpr[fpr <= 0.01].max()),
        "oof_auroc": float(roc_auc_score(y[ok], client_scores[ok])),
    }


def _matching_lr(out: Path, seed: int, scale: float, labelled: int, progress: Progress) -> Detector:
    """The additive model to combine with: ``out/detector.json`` if there, else the shipped one;
    it must have been trained with the same seed, scale and labelled clients."""
    from detectors.models import DEFAULT_NAME, load_default_detector, load_detector

    local = out / f"{DEFAULT_NAME}.json"
    lr = load_detector(local) if local.exists() else load_default_detector()
    meta = lr.metadata
    same = (meta.get("seed"), meta.get("scale"), meta.get("labelled_clients")) == (
        seed,
        scale,
        labelled,
    )
    if not same:
        raise ValueError(
            f"additive model {lr.version} was trained with seed {meta.get('seed')}, scale "
            f"{meta.get('scale')}, {meta.get('labelled_clients')} labelled clients; train it "
            f"first with the same options (antidistill train --out {out})"
        )
    progress(f"combining with additive model {lr.version}")
    return lr


def train(
    seed: int = 0,
    out: Path = ARTIFACT_DIR,
    scale: float = DEFAULT_SCALE,
    labelled: Sequence[Client] = (),
    all_families: bool = False,
    progress: Progress = print,
) -> tuple[SequenceDetector, Path]:
    """Simulate, fit, and write ``out/sequence.{json,npz}`` plus its metrics card."""
    from detectors.evaluate import evaluate, write_sequence_card

    started = time.perf_counter()
    lr = _matching_lr(out, seed, scale, len(labelled), progress)
    if all_families != (not lr.metadata.get("held_out_families")):
        raise ValueError("--all-families must match the additive model's training")
    progress(f"simulating traffic (seed {seed + TRAIN_SEED_OFFSET}, scale {scale})")
    clients = simulate(seed + TRAIN_SEED_OFFSET, scale)
    train_clients, _ = (clients, []) if all_families else split_families(clients)
    train_clients = list(train_clients) + list(labelled)
    progress(
        f"{len(train_clients)} training clients ({sum(c.attack for c in train_clients)} attack)"
    )
    seq = fit_sequence(
        train_clients,
        seed,
        progress,
        lr=lr,
        metadata={
            "seed": seed,
            "scale": scale,
            "held_out_families": [] if all_families else sorted(HELD_OUT_FAMILIES),
            "labelled_clients": len(labelled),
        },
    )
    seq.metadata["train_seconds_total"] = round(time.perf_counter() - started, 1)
    json_path, _ = seq.save(out)
    progress(f"wrote {json_path} ({time.perf_counter() - started:.1f}s); evaluating")
    report = evaluate(lr, seed=seed, scale=scale, progress=progress, baselines=False, sequence=seq)
    write_sequence_card(seq, report, out)
    progress(f"metrics card: {out / 'sequence_metrics.md'}")
    return seq, json_path
