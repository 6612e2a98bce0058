"""``antidistill eval``: client-level detection metrics on simulated traffic never trained on.

The evaluation set is a fresh simulation (seed + ``EVAL_SEED_OFFSET``): every client is new,
and the families in ``HELD_OUT_FAMILIES`` were never in training at all. Each client is
scored the way the online worker sees it, at growing request counts (its bounded window at
each checkpoint); its client-level score is the highest any window got, and a client is
flagged when that crosses a threshold calibrated on benign training clients only.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import numpy.typing as npt
import typer

from detectors.models import Detector, load_default_detector, load_detector
from detectors.schema import RequestRecord
from detectors.train import (
    CHECKPOINTS,
    DEFAULT_SCALE,
    EVAL_SEED_OFFSET,
    HELD_OUT_FAMILIES,
    Client,
    Progress,
    checkpoints,
    simulate,
    trajectories,
)
from detectors.windows import MAX_WINDOW, bounded_window

if TYPE_CHECKING:
    from detectors.models.sequence import SequenceDetector

OPERATING_FPR = "0.003"
LOOKALIKES = ("eval_harness", "batch_labelling")
SHARES = (0.05, 0.1, 0.25, 0.5)

WindowScorer = Callable[[Sequence[RequestRecord]], float]


def _quiet(_: str) -> None:
    return None


def _pure(c: Client) -> bool:
    return c.attack and c.family not in ("blended", "hydra")


def roc_metrics(pos: npt.NDArray[np.float64], neg: npt.NDArray[np.float64]) -> dict[str, float]:
    """AUROC and TPR at test FPR ≤ 0.1 % / 0.3 % / 1 % (threshold-free, from the ROC)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if pos.size == 0 or neg.size == 0:
        return {
            "auroc": float("nan"),
            "tpr_at_fpr_0.001": float("nan"),
            "tpr_at_fpr_0.003": float("nan"),
            "tpr_at_fpr_0.01": float("nan"),
        }
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    s = np.nan_to_num(np.r_[pos, neg], neginf=-1e9)
    fpr, tpr, _ = roc_curve(y, s)
    out = {"auroc": float(roc_auc_score(y, s))}
    for cap in (0.001, 0.003, 0.01):
        out[f"tpr_at_fpr_{cap}"] = float(tpr[fpr <= cap].max()) if (fpr <= cap).any() else 0.0
    return out


def first_detection(
    scores: npt.NDArray[np.float64], ks: npt.NDArray[np.int64], threshold: float
) -> int | None:
    hit = np.nonzero(scores >= threshold)[0]
    return int(ks[hit[0]]) if hit.size else None


def _baseline_scores(
    clients: Sequence[Client],
    owner: npt.NDArray[np.int64],
    ks: npt.NDArray[np.int64],
    scorers: Mapping[str, WindowScorer],
) -> dict[str, npt.NDArray[np.float64]]:
    out = {name: np.zeros(len(owner)) for name in scorers}
    for row, (i, k) in enumerate(zip(owner.tolist(), ks.tolist(), strict=True)):
        window = bounded_window(clients[i].records, k)
        for name, fn in scorers.items():
            out[name][row] = fn(window)
    return out


def baseline_scorers(detector: Detector) -> dict[str, WindowScorer]:
    from detectors.baselines import MMDBaseline, PradaBaseline

    return {
        "prada": PradaBaseline().score_window,
        "mmd": MMDBaseline(detector.benign).score_window,
    }


def calibrate_baselines(
    clients: Sequence[Client], detector: Detector, progress: Progress = _quiet
) -> dict[str, dict[str, float]]:
    """Baseline thresholds from benign training clients (stored in the artifact's metadata)."""
    from detectors.train import thresholds_for

    benign = [c for c in clients if not c.attack]
    owner, ks = [], []
    for i, c in enumerate(benign):
        k = checkpoints(len(c.records), detector.min_requests)
        owner += [i] * len(k)
        ks += k
    o, k_arr = np.array(owner, dtype=np.int64), np.array(ks, dtype=np.int64)
    scores = _baseline_scores(benign, o, k_arr, baseline_scorers(detector))
    out = {}
    for name, s in scores.items():
        per_client = np.full(len(benign), -np.inf)
        np.maximum.at(per_client, o, s)
        out[name] = thresholds_for(per_client)
        progress(f"  baseline {name} calibrated on {len(benign)} benign training clients")
    return out


def _rates(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def _pct(values: Sequence[int], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _hydra(
    clients: Sequence[Client], detector: Detector, flagged: npt.NDArray[np.bool_], threshold: float
) -> dict[str, Any]:
    from detectors.campaigns import link_clients

    windows = {c.client: c.records[-MAX_WINDOW:] for c in clients}
    truth = {c.client: c.campaign for c in clients if c.family == "hydra" and c.campaign}
    campaigns = link_clients(windows, detector=detector)
    flagged_campaigns = [cp for cp in campaigns if cp.score >= threshold]
    networks: dict[str, list[str]] = defaultdict(list)
    for client, net in truth.items():
        networks[net].append(client)
    recalled = 0
    caught = {c.client for c, f in zip(clients, flagged, strict=True) if f}
    for cp in flagged_campaigns:
        caught.update(cp.clients)
    for members in networks.values():
        best = max((len(set(members) & set(cp.clients)) for cp in flagged_campaigns), default=0)
        recalled += best >= 0.5 * len(members)
    true_flags = 0
    benign_swept = 0
    attack_of = {c.client: c.attack for c in clients}
    for cp in flagged_campaigns:
        nets = [truth.get(m) for m in cp.clients]
        top = max(set(nets), key=nets.count)
        true_flags += top is not None and nets.count(top) > 0.5 * len(nets)
        benign_swept += sum(not attack_of[m] for m in cp.clients)
    hydra_accounts = list(truth)
    return {
        "networks": len(networks),
        "network_sizes": sorted(len(m) for m in networks.values()),
        "campaign_recall": recalled / len(networks) if networks else float("nan"),
        "campaign_precision": true_flags / len(flagged_campaigns)
        if flagged_campaigns
        else float("nan"),
        "campaigns_linked": len(campaigns),
        "campaigns_flagged": len(flagged_campaigns),
        "account_recall_alone": _rates(
            [bool(flagged[i]) for i, c in enumerate(clients) if c.client in truth]
        ),
        "account_recall_with_campaigns": _rates([c in caught for c in hydra_accounts]),
        "benign_accounts_in_flagged_campaigns": benign_swept,
    }


def evaluate(
    detector: Detector,
    *,
    seed: int = 0,
    scale: float = DEFAULT_SCALE,
    clients: Sequence[Client] | None = None,
    baselines: bool = True,
    sequence: SequenceDetector | None = None,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """The evaluation report (a JSON-able dict) of ``detector`` on a fresh simulation.

    With ``sequence``, the sequence model scores the same windows (rows ``sequence``), and,
    when its artifact carries thresholds for this additive model, so does the mean of the two
    calibrated scores (rows ``combined``).
    """
    started = time.perf_counter()
    if clients is None:
        progress(f"simulating evaluation traffic (seed {seed + EVAL_SEED_OFFSET}, scale {scale})")
        clients = simulate(seed + EVAL_SEED_OFFSET, scale)
    traj = trajectories(clients, detector.benign, progress)
    scores: dict[str, npt.NDArray[np.float64]] = {"ours": detector.score(traj.X)}
    thresholds: dict[str, dict[str, float]] = {"ours": detector.threshold_by_fpr}
    if baselines:
        progress("scoring baselines")
        scores.update(_baseline_scores(clients, traj.owner, traj.k, baseline_scorers(detector)))
        thresholds.update(detector.metadata.get("baseline_thresholds", {}))
    notes: list[str] = []
    if sequence is not None:
        progress(f"scoring the sequence model {sequence.version}")
        scores["sequence"] = sequence_window_scores(sequence, clients, traj.owner, traj.k)
        thresholds["sequence"] = sequence.threshold_by_fpr
        combined = sequence.combined
        if combined.get("lr_version") == detector.version:
            scores["combined"] = 0.5 * (scores["ours"] + scores["sequence"])
            thresholds["combined"] = dict(combined["threshold_by_fpr"])
        else:
            notes.append(
                f"no combined row: {sequence.version} was calibrated with additive model "
                f"{combined.get('lr_version')!r}, not {detector.version!r}"
            )
    n = len(clients)
    scored = np.bincount(traj.owner, minlength=n) > 0
    benign = [i for i, c in enumerate(clients) if not c.attack and scored[i]]
    groups = {
        "in_distribution": [
            i for i, c in enumerate(clients) if _pure(c) and c.family not in HELD_OUT_FAMILIES
        ],
        "held_out": [
            i for i, c in enumerate(clients) if _pure(c) and c.family in HELD_OUT_FAMILIES
        ],
    }
    report: dict[str, Any] = {
        "detector": detector.version,
        "seed": seed + EVAL_SEED_OFFSET,
        "scale": scale,
        "held_out_families": sorted(HELD_OUT_FAMILIES),
        "clients": n,
        "benign_scored": len(benign),
        "benign_unscored": sum(1 for i, c in enumerate(clients) if not c.attack and not scored[i]),
        "operating_fpr": OPERATING_FPR,
        "detectors": {},
        "notes": notes,
    }
    for name, s in scores.items():
        client_max = traj.client_max(s, n)
        thr = thresholds.get(name, {})
        op = thr.get(OPERATING_FPR, float("inf"))
        flagged = client_max >= op
        entry: dict[str, Any] = {"thresholds": thr}
        for group, idx in groups.items():
            g: dict[str, Any] = dict(roc_metrics(client_max[idx], client_max[benign]))
            g["n_attack"] = len(idx)
            g["tpr_at_operating"] = _rates([bool(flagged[i]) for i in idx])
            qtd = []
            for i in idx:
                rows = traj.owner == i
                hit = first_detection(s[rows], traj.k[rows], op)
                if hit is not None:
                    qtd.append(hit)
            g["queries_to_detect_median"] = _pct(qtd, 50)
            g["queries_to_detect_p90"] = _pct(qtd, 90)
            g["per_family_tpr"] = {
                f: _rates([bool(flagged[i]) for i in idx if clients[i].family == f])
                for f in sorted({clients[i].family for i in idx})
            }
            entry[group] = g
        entry["benign_fpr_at_operating"] = _rates([bool(flagged[i]) for i in benign])
        entry["benign_fpr_by_family"] = {
            f: _rates([bool(flagged[i]) for i in benign if clients[i].family == f])
            for f in sorted({clients[i].family for i in benign})
        }
        entry["lookalike_fpr"] = _rates(
            [bool(flagged[i]) for i in benign if clients[i].family in LOOKALIKES]
        )
        entry["by_share"] = {
            str(share): _rates(
                [
                    bool(flagged[i])
                    for i, c in enumerate(clients)
                    if c.family == "blended" and abs(c.attacker_share - share) < 1e-6
                ]
            )
            for share in SHARES
        }
        if name == "ours":
            entry["hydra"] = _hydra(clients, detector, flagged, op)
        report["detectors"][name] = entry
    report["score_over_time"] = _score_over_time(clients, traj.owner, traj.k, scores["ours"])
    report["roc_held_out"] = {
        name: _roc_points(traj.client_max(s, n), groups["held_out"], benign)
        for name, s in scores.items()
    }
    report["eval_seconds"] = round(time.perf_counter() - started, 1)
    return report


def sequence_window_scores(
    sequence: SequenceDetector,
    clients: Sequence[Client],
    owner: npt.NDArray[np.int64],
    ks: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64]:
    """The sequence model's score of each (client, checkpoint) window."""
    from detectors.train_sequence import windows_of

    win = windows_of(clients, sequence.config.seq_len, sequence.min_requests)
    if not (np.array_equal(win.owner, owner) and np.array_equal(win.k, ks)):
        raise ValueError("sequence windows differ from the additive model's checkpoints")
    return sequence.score_matrices(win.mats)


def _roc_points(
    client_max: npt.NDArray[np.float64], pos: list[int], neg: list[int]
) -> dict[str, list[float]]:
    from sklearn.metrics import roc_curve

    if not pos or not neg:
        return {"fpr": [], "tpr": []}
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, _ = roc_curve(y, np.nan_to_num(np.r_[client_max[pos], client_max[neg]], neginf=-1e9))
    return {"fpr": [round(float(x), 5) for x in fpr], "tpr": [round(float(x), 5) for x in tpr]}


def _score_over_time(
    clients: Sequence[Client],
    owner: npt.NDArray[np.int64],
    ks: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
) -> dict[str, dict[str, list[float]]]:
    """Per family: the median score at each fixed checkpoint (up to 500 requests)."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, k, s in zip(owner.tolist(), ks.tolist(), scores.tolist(), strict=True):
        if k in CHECKPOINTS:
            acc[clients[i].family][k].append(s)
    return {
        fam: {"k": sorted(by_k), "median": [float(np.median(by_k[k])) for k in sorted(by_k)]}
        for fam, by_k in sorted(acc.items())
    }


def _fmt(x: float, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{100 * x:.1f} %" if pct else f"{x:.3f}"


DETECTOR_NAMES = {
    "ours": "ours (additive LR)",
    "sequence": "sequence (torch conv+attention)",
    "combined": "combined (mean of LR and sequence)",
    "prada": "PRADA-style",
    "mmd": "MMD (SimHash)",
}


def markdown_table(report: Mapping[str, Any]) -> str:
    names = DETECTOR_NAMES
    lines = [
        "| detector | split | AUROC | TPR @ FPR 0.1 % | TPR @ FPR 0.3 % | TPR @ FPR 1 % | "
        "TPR @ op. threshold | benign FPR @ op. | look-alike FPR | "
        "median / p90 queries-to-detect |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(DETECTOR_NAMES)}
    detectors = sorted(report["detectors"].items(), key=lambda kv: order.get(kv[0], len(order)))
    for name, entry in detectors:
        for split in ("held_out", "in_distribution"):
            g = entry[split]
            q50, q90 = g["queries_to_detect_median"], g["queries_to_detect_p90"]
            qtd = f"{q50:.0f} / {q90:.0f}" if np.isfinite(q50) else "n/a"
            lines.append(
                f"| {names.get(name, name)} | {split.replace('_', '-')} (n={g['n_attack']}) | "
                f"{_fmt(g['auroc'], False)} | {_fmt(g['tpr_at_fpr_0.001'])} | "
                f"{_fmt(g.get('tpr_at_fpr_0.003', float('nan')))} | "
                f"{_fmt(g['tpr_at_fpr_0.01'])} | {_fmt(g['tpr_at_operating'])} | "
                f"{_fmt(entry['benign_fpr_at_operating'])} | {_fmt(entry['lookalike_fpr'])} | "
                f"{qtd} |"
            )
    lines += [
        "",
        "| detector | " + " | ".join(f"{int(s * 100)} % share" for s in SHARES) + " |",
        "|---|" + "---|" * len(SHARES),
    ]
    for name, entry in detectors:
        lines.append(
            f"| {names.get(name, name)} | "
            + " | ".join(_fmt(entry["by_share"][str(s)]) for s in SHARES)
            + " |"
        )
    lines += [f"\nNote: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


def write_card(detector: Detector, report: Mapping[str, Any], out: Path) -> None:
    """``metrics.json`` and ``metrics.md`` next to the artifact."""
    slim = {
        k: v
        for k, v in report.items()
        if k not in ("roc_held_out", "score_over_time", "eval_seconds")
    }
    (out / "metrics.json").write_text(json.dumps(slim, indent=2, sort_keys=True) + "\n")
    ours = report["detectors"]["ours"]
    hydra = ours.get("hydra", {})
    md = [
        f"# Detector {detector.version}: metrics card",
        "",
        f"Model: additive logistic regression over {len(detector.feature_names)} window features "
        f"(standardized and clipped at ±8, plus quantile-bin steps; chosen by "
        f"leave-attack-family-out validation: {detector.metadata.get('chosen', '?')}), "
        f"min {detector.min_requests} requests per window. Scores are calibrated so that the "
        "default policy's watch (0.5) and throttle (0.85) thresholds are the 1 % and 0.3 % "
        "benign-client FPR points of out-of-fold training scores.",
        f"Trained on simulator families: {', '.join(detector.metadata.get('families', []))}.",
        f"Held out (never trained on): {', '.join(report['held_out_families'])}.",
        f"Evaluation: fresh simulation, seed {report['seed']}, scale {report['scale']}, "
        f"{report['clients']} clients ({report['benign_scored']} benign scored, "
        f"{report['benign_unscored']} benign below the minimum window).",
        f"Operating point: threshold for {float(OPERATING_FPR) * 100:.1f} % client-level FPR "
        "on benign training clients (out-of-fold): "
        f"{ours['thresholds'].get(OPERATING_FPR, float('nan')):.4f}.",
        "",
        markdown_table(report),
        "",
        f"Hydra: {hydra.get('networks', 0)} networks, campaign recall "
        f"{_fmt(hydra.get('campaign_recall', float('nan')))}, precision "
        f"{_fmt(hydra.get('campaign_precision', float('nan')))}, accounts caught "
        f"{_fmt(hydra.get('account_recall_with_campaigns', float('nan')))} "
        f"(alone: {_fmt(hydra.get('account_recall_alone', float('nan')))}).",
        "",
        "Reproduce: `antidistill train --seed "
        f"{detector.metadata.get('seed', 0)}` (writes this card), `antidistill eval`.",
    ]
    (out / "metrics.md").write_text("\n".join(md) + "\n")


QUICK_SCALE = 0.25
QUICK_FAMILIES = (
    "chat_user",
    "app_backend",
    "coding_assistant",
    "agent",
    "eval_harness",
    "batch_labelling",
    "self_instruct",
    "wiki_sentence",
    "logit_bias_sweep",
    "coverage_sweep",
    "adaptive",
)


def eval_command(
    model: Annotated[
        Path | None, typer.Option(help="Artifact (.json) or directory; the shipped one if unset.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed (the simulation uses seed + 1000).")] = 0,
    scale: Annotated[float, typer.Option(help="Simulated clients per family, x.")] = DEFAULT_SCALE,
    quick: Annotated[
        bool, typer.Option(help="A small subset of families at scale 0.25 (seconds, not minutes).")
    ] = False,
    baselines: Annotated[bool, typer.Option(help="Also score the PRADA and MMD baselines.")] = True,
    sequence: Annotated[
        bool, typer.Option(help="Also score the torch sequence model (needs the torch extra).")
    ] = True,
    sequence_model: Annotated[
        Path | None, typer.Option(help="Sequence artifact (.json) or directory; shipped if unset.")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """Evaluate the detector on fresh simulated traffic, held-out families included."""
    from detectors.models import ArtifactError

    try:
        detector = load_default_detector() if model is None else load_detector(model)
        seq, note = sequence_for_eval(sequence, sequence_model)
    except ArtifactError as exc:
        raise typer.BadParameter(str(exc)) from exc
    report = run_eval(
        detector,
        seed=seed,
        scale=scale,
        quick=quick,
        baselines=baselines,
        sequence=seq,
        progress=typer.echo,
    )
    if note:
        report["notes"].append(note)
    typer.echo(markdown_table(report))
    hydra = report["detectors"]["ours"].get("hydra", {})
    if hydra:
        typer.echo(
            f"hydra: {hydra['networks']} networks, campaign recall "
            f"{_fmt(hydra['campaign_recall'])}, precision {_fmt(hydra['campaign_precision'])}"
        )
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def run_eval(
    detector: Detector,
    *,
    seed: int = 0,
    scale: float = DEFAULT_SCALE,
    quick: bool = False,
    baselines: bool = True,
    sequence: SequenceDetector | None = None,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """:func:`evaluate` on a fresh simulation (``quick``: a family subset at a small scale)."""
    if not quick:
        return evaluate(
            detector,
            seed=seed,
            scale=scale,
            baselines=baselines,
            sequence=sequence,
            progress=progress,
        )
    progress(f"simulating (quick: {len(QUICK_FAMILIES)} families, scale {QUICK_SCALE})")
    clients = simulate(seed + EVAL_SEED_OFFSET, QUICK_SCALE, QUICK_FAMILIES)
    report = evaluate(
        detector,
        seed=seed,
        scale=QUICK_SCALE,
        clients=clients,
        baselines=baselines,
        sequence=sequence,
        progress=progress,
    )
    report["quick"] = True
    return report


def sequence_for_eval(
    enabled: bool, path: Path | None = None
) -> tuple[SequenceDetector | None, str | None]:
    """(the sequence model to evaluate, or None with the reason as a note for the table).

    An explicit ``path`` that does not load raises ``ArtifactError``.
    """
    from detectors.models.sequence import (
        load_default_sequence_detector,
        load_sequence_detector,
        torch_available,
    )

    if not enabled:
        return None, None
    if not torch_available():
        return None, (
            "sequence model not evaluated: torch is not installed "
            "(install the extra: pip install -e '.[torch]')"
        )
    if path is not None:
        return load_sequence_detector(path), None
    from detectors.models import ARTIFACT_DIR
    from detectors.models.sequence import SEQUENCE_NAME

    if not (ARTIFACT_DIR / f"{SEQUENCE_NAME}.json").exists():
        return None, "sequence model not evaluated: no shipped sequence artifact"
    return load_default_sequence_detector(), None


def write_sequence_card(seq: SequenceDetector, report: Mapping[str, Any], out: Path) -> None:
    """``sequence_metrics.json`` and ``sequence_metrics.md`` next to the sequence artifact."""
    slim = {
        k: v
        for k, v in report.items()
        if k not in ("roc_held_out", "score_over_time", "eval_seconds")
    }
    (out / "sequence_metrics.json").write_text(json.dumps(slim, indent=2, sort_keys=True) + "\n")
    fit = seq.metadata.get("fit", {})
    oof = seq.metadata.get("out_of_fold", {})
    combined = seq.combined
    md = [
        f"# Sequence detector {seq.version}: metrics card",
        "",
        f"Model: per-request stream (last {seq.config.seq_len} requests of the window, "
        f"{len(seq.input_mean)} features per request) -> linear embedding ({seq.config.hidden}) "
        f"-> two residual 1-D convolutions (kernel {seq.config.kernel}, the second dilated) -> "
        "attention + mean pooling -> MLP; torch, trained "
        f"{fit.get('epochs', '?')} epochs (AdamW, lr {fit.get('lr', '?')}, weight decay "
        f"{fit.get('weight_decay', '?')}, batch {fit.get('batch_size', '?')}, "
        f"{fit.get('threads', '?')} threads, deterministic algorithms), in "
        f"{seq.metadata.get('train_seconds', '?')} s. Scores are calibrated like the additive "
        "model's (0.5 / 0.85 = 1 % / 0.3 % out-of-fold benign-client FPR).",
        f"Out-of-fold on the training families (leave-attack-family-out, "
        f"{fit.get('folds', '?')} folds): TPR @ 1 % FPR "
        f"{oof.get('oof_tpr_at_fpr_0.01', float('nan')):.3f}, AUROC "
        f"{oof.get('oof_auroc', float('nan')):.4f}"
        + (
            f"; combined with {combined['lr_version']} (mean of calibrated scores): "
            f"{combined['oof']['oof_tpr_at_fpr_0.01']:.3f} / {combined['oof']['oof_auroc']:.4f}; "
            f"additive alone: {combined['lr_oof']['oof_tpr_at_fpr_0.01']:.3f} / "
            f"{combined['lr_oof']['oof_auroc']:.4f}."
            if combined
            else "."
        ),
        f"Trained on simulator families: {', '.join(seq.metadata.get('families', []))}.",
        f"Held out (never trained on): {', '.join(report['held_out_families'])}.",
        f"Evaluation: fresh simulation, seed {report['seed']}, scale {report['scale']}, "
        f"{report['clients']} clients ({report['benign_scored']} benign scored).",
        "",
        markdown_table(report),
        "",
        "Reproduce: `antidistill train --model sequence --seed "
        f"{seq.metadata.get('seed', 0)}` (writes this card), `antidistill eval`.",
    ]
    (out / "sequence_metrics.md").write_text("\n".join(md) + "\n")
