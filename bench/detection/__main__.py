"""Detection benchmark: the shipped detector and the baselines on fresh simulated traffic.

    python -m bench.detection [--quick] [--write-benchmarks]

Prints the table, writes ``bench/detection/results/detection.json``, the plots in
``bench/detection/plots/`` and, with ``--write-benchmarks``, the detection section of
``BENCHMARKS.md``. The numbers come from ``detectors.evaluate`` (the same code as
``antidistill eval``); this adds costs (per-request features, window scoring) and plots.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from detectors.evaluate import DETECTOR_NAMES, _fmt, markdown_table, run_eval, sequence_for_eval
from detectors.features import request_features
from detectors.models import Detector, load_default_detector, load_detector
from detectors.models.sequence import SequenceDetector, StreamArrays, sequence_matrix
from detectors.schema import RequestRecord
from detectors.train import DEFAULT_SCALE, HELD_OUT_FAMILIES
from detectors.windows import bounded_window

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
START, END = "<!-- detection:start -->", "<!-- detection:end -->"


def _best_us(fn: Callable[[], object], repeat: int = 5, number: int = 200) -> float:
    """Best-of-``repeat`` mean time per call in µs (robust to a loaded machine)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t) / number * 1e6)
    return best


def feature_cost() -> dict[str, Any]:
    """µs per ``request_features`` call on simulated request bodies of several personas."""
    from sim.traffic import generate

    out: dict[str, Any] = {}
    for family in ("chat_user", "coding_assistant", "agent", "self_instruct", "wiki_sentence"):
        clients = generate(family, seed=7, clients=2, duration_s=3_600, keep_bodies=True)
        bodies = [b for c in clients for b in (c.bodies or ())][:50]
        if not bodies:
            continue
        per = [_best_us(functools.partial(request_features, "chat", b), 3, 50) for b in bodies]
        out[family] = {"median_us": statistics.median(per), "p90_us": float(np.percentile(per, 90))}
    all_med = [v["median_us"] for v in out.values()]
    out["typical_us"] = statistics.median(all_med) if all_med else float("nan")
    return out


def _score_one(detector: Detector, window: Sequence[RequestRecord]) -> float:
    return float(detector.score(detector.features(window)[None, :])[0])


def scoring_cost(detector: Detector) -> dict[str, Any]:
    """Window features + score per window (µs), and events/s at the policy's rescoring rate."""
    from sim.traffic import generate

    client = max(generate("app_backend", seed=7, clients=3), key=lambda c: len(c.records))
    out: dict[str, Any] = {}
    for size in (64, 256, 500):
        window = bounded_window(client.records[: max(size, 1) * 4])[-size:]
        us = _best_us(functools.partial(_score_one, detector, window), 3, 20)
        out[f"window_{size}_us"] = us
    every = 8  # the default policy scores a client at most every 8 new requests
    out["score_every_requests"] = every
    out["events_per_s_window_256"] = every * 1e6 / out["window_256_us"]
    return out


def _cost_window(size: int) -> Sequence[RequestRecord]:
    from sim.traffic import generate

    client = max(generate("app_backend", seed=7, clients=3), key=lambda c: len(c.records))
    return bounded_window(client.records[: max(size, 1) * 4])[-size:]


def sequence_cost(seq: SequenceDetector, lr: Detector) -> dict[str, Any]:
    """One core (torch and BLAS on one thread): per-window latency of the sequence model
    (request stream + network) and of the additive model (window features + score), and
    windows/s when many windows are scored at once (the sequence model batches them)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, Any] = {}
        for size in (64, 256, 500):
            window = _cost_window(size)
            out[f"sequence_window_{size}_us"] = _best_us(
                functools.partial(seq.score_records, window), 3, 20
            )
            out[f"lr_window_{size}_us"] = _best_us(functools.partial(_score_one, lr, window), 3, 20)
        window = _cost_window(256)
        many = [window] * 256

        def batched() -> None:
            seq.score_matrices(
                [sequence_matrix(StreamArrays.of(w), 0, len(w), seq.config.seq_len) for w in many]
            )

        out["sequence_batched_256_windows_per_s"] = 256 * 1e6 / _best_us(batched, 3, 1)
        out["sequence_windows_per_s_one_at_a_time"] = 1e6 / out["sequence_window_256_us"]
        out["lr_windows_per_s"] = 1e6 / out["lr_window_256_us"]
        return out
    finally:
        torch.set_num_threads(threads)


def sequence_info(seq: SequenceDetector) -> dict[str, Any]:
    meta = seq.metadata
    return {
        "version": seq.version,
        "parameters": int(sum(w.size for w in seq.weights.values())),
        "seq_len": seq.config.seq_len,
        "features": int(seq.input_mean.size),
        "epochs": meta.get("fit", {}).get("epochs"),
        "train_seconds": meta.get("train_seconds", float("nan")),
        "train_seconds_total": meta.get("train_seconds_total", float("nan")),
        "oof": meta.get("out_of_fold", {}),
        "lr_oof": seq.combined.get("lr_oof", {}),
        "combined_oof": seq.combined.get("oof", {}),
    }


def plots(report: dict[str, Any]) -> list[str]:
    """The ROC and score-over-time PNGs (none without matplotlib: the ``bench`` extra)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib missing (pip install -e '.[bench]'): plots not redrawn")
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = HERE / "plots"
    out_dir.mkdir(exist_ok=True)
    names = DETECTOR_NAMES
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, roc in report["roc_held_out"].items():
        if roc["fpr"]:
            ax.plot(roc["fpr"], roc["tpr"], label=names.get(name, name))
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(0, 1)
    ax.set_xlabel("client-level FPR (benign clients)")
    ax.set_ylabel("TPR (held-out attack families)")
    ax.set_title("ROC on families never trained on")
    ax.legend(loc="lower right")
    fig.tight_layout()
    roc_path = out_dir / "roc_held_out.png"
    fig.savefig(roc_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9.0, 4.5))
    thr = report["detectors"]["ours"]["thresholds"].get("0.003")
    for fam, series in report["score_over_time"].items():
        style = "--" if fam in HELD_OUT_FAMILIES else "-"
        attack = fam not in (
            "chat_user",
            "app_backend",
            "coding_assistant",
            "agent",
            "eval_harness",
            "batch_labelling",
        )
        ax.plot(
            series["k"],
            series["median"],
            style if attack else ":",
            color=None if attack else "black",
            alpha=1.0 if attack else 0.6,
            label=fam + (" (held out)" if style == "--" else ""),
        )
    if thr is not None:
        ax.axhline(thr, color="red", linewidth=0.8, label="threshold @ 0.3 % FPR")
    ax.set_xlabel("requests seen")
    ax.set_ylabel("median score")
    ax.set_title("Median score over time per scenario family (dotted black: benign)")
    ax.legend(fontsize=6, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    sot_path = out_dir / "score_over_time.png"
    fig.savefig(sot_path, dpi=110)
    plt.close(fig)
    return [str(p.relative_to(ROOT)) for p in (roc_path, sot_path)]


def pick(info: dict[str, Any]) -> str:
    """The model the worker should use, by out-of-fold TPR at 1 % FPR on the *training*
    families (leave-attack-family-out; the held-out families play no part); a tie goes to the
    additive model (cheaper, no torch, exact reason codes)."""
    oof = {
        "ours": info.get("lr_oof", {}).get("oof_tpr_at_fpr_0.01", float("nan")),
        "sequence": info.get("oof", {}).get("oof_tpr_at_fpr_0.01", float("nan")),
        "combined": info.get("combined_oof", {}).get("oof_tpr_at_fpr_0.01", float("nan")),
    }
    rivals = [n for n in ("sequence", "combined") if np.isfinite(oof[n])]
    best = max(rivals, key=lambda n: oof[n], default="ours")
    return best if best != "ours" and oof[best] > oof["ours"] + 0.01 else "ours"


def sequence_lines(report: dict[str, Any], costs: dict[str, Any]) -> list[str]:
    """The sequence model's paragraph: costs beside the additive model's, and the pick."""
    det = report["detectors"]
    if "sequence" not in det:
        why = "; ".join(report.get("notes", [])) or "not evaluated"
        return [f"Sequence model: {why}.", ""]
    info, c = costs["sequence_info"], costs["sequence"]
    chosen = pick(info)
    held = {name: det[name]["held_out"] for name in ("ours", "sequence", "combined") if name in det}

    def oof(key: str) -> str:
        v = info.get(key, {})
        tpr, auroc = v.get("oof_tpr_at_fpr_0.01", float("nan")), v.get("oof_auroc", float("nan"))
        return f"{tpr:.3f} / {auroc:.3f}"

    return [
        f"Sequence model `{info['version']}` (torch, {info['parameters']:,} parameters): the "
        f"last {info['seq_len']} requests of the window, {info['features']} features each (the "
        "request's own numbers plus gap, SimHash distance to the previous 8 prompts, template / "
        "prompt repeats, IP change), a linear embedding, two residual 1-D convolutions, "
        "attention + mean pooling. Trained with the same families, checkpoints, "
        "leave-attack-family-out folds and threshold calibration as the additive model: "
        f"`antidistill train --model sequence` took {info['train_seconds_total']:.0f} s "
        f"(simulation included; fit {info['train_seconds']:.0f} s: 4 folds + final, "
        f"{info['epochs']} epochs each, one thread). The combined row is the mean of the two "
        "calibrated scores, with thresholds from both models' out-of-fold scores.",
        "",
        "| | additive LR | sequence | combined |",
        "|---|---|---|---|",
        f"| out-of-fold TPR @ 1 % / AUROC (training families) | {oof('lr_oof')} | {oof('oof')} | "
        f"{oof('combined_oof')} |",
        "| held-out AUROC | "
        + " | ".join(
            _fmt(held[n]["auroc"], False) if n in held else "n/a"
            for n in ("ours", "sequence", "combined")
        )
        + " |",
        "| held-out TPR @ op. | "
        + " | ".join(
            _fmt(held[n]["tpr_at_operating"]) if n in held else "n/a"
            for n in ("ours", "sequence", "combined")
        )
        + " |",
        f"| latency per window, 64 / 256 / 500 requests (µs, one core) | "
        f"{c['lr_window_64_us']:.0f} / {c['lr_window_256_us']:.0f} / {c['lr_window_500_us']:.0f} | "
        f"{c['sequence_window_64_us']:.0f} / {c['sequence_window_256_us']:.0f} / "
        f"{c['sequence_window_500_us']:.0f} | sum of both |",
        f"| windows/s, 256 requests, one core | {c['lr_windows_per_s']:,.0f} | "
        f"{c['sequence_windows_per_s_one_at_a_time']:,.0f} one at a time, "
        f"{c['sequence_batched_256_windows_per_s']:,.0f} batched by 256 | "
        f"{1e6 / (c['lr_window_256_us'] + c['sequence_window_256_us']):,.0f} |",
        "",
        "At the operating point (0.3 % FPR threshold from training) the benign FPR is "
        + ", ".join(
            f"{_fmt(det[n]['benign_fpr_at_operating'])} ({DETECTOR_NAMES[n]})"
            for n in ("ours", "sequence", "combined")
            if n in det
        )
        + f" of {report['benign_scored']} benign clients; at 5 / 10 % attacker share the "
        "sequence model alone detects "
        + " / ".join(_fmt(det["sequence"]["by_share"][k]) for k in ("0.05", "0.1"))
        + " (a few harvesting requests among 256 barely move its pooled view), the additive "
        + " / ".join(_fmt(det["ours"]["by_share"][k]) for k in ("0.05", "0.1"))
        + (
            ", the combination "
            + " / ".join(_fmt(det["combined"]["by_share"][k]) for k in ("0.05", "0.1"))
            if "combined" in det
            else ""
        )
        + ".",
        "",
        f"Pick (by out-of-fold TPR @ 1 % FPR on the training families, a tie within 0.01 going "
        f"to the cheaper additive model; the held-out families play no part): "
        f"**{DETECTOR_NAMES[chosen]}**. The policy's default stays `detector.model: additive`: "
        "the sequence model needs the optional torch extra, and both rows with it have a "
        "higher benign FPR at the operating point; `detector.model: combined` switches the "
        "worker to the combination (the same thresholds apply, as both are calibrated alike).",
        "",
    ]


def section(report: dict[str, Any], costs: dict[str, Any], images: list[str], command: str) -> str:
    ours = report["detectors"]["ours"]
    hydra = ours["hydra"]
    held, ind = ours["held_out"], ours["in_distribution"]
    feat, score = costs["features"], costs["scoring"]
    lines = [
        START,
        "## Harvesting detection (`bench/detection/`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"Python {platform.python_version()}; model `{report['detector']}`.  ",
        f"Traffic: a fresh simulation (`sim.traffic.dataset`, seed {report['seed']}, scale "
        f"{report['scale']}): {report['clients']} clients, {report['benign_scored']} benign "
        f"clients scored ({report['benign_unscored']} benign clients sent fewer than 20 requests "
        "and are never scored). Held-out families (never trained on, fixed before any "
        f"evaluation): {', '.join(sorted(HELD_OUT_FAMILIES))}. Client-level score = the highest "
        "score of the client's window (last ≤ 500 requests, ≤ 24 h) at growing request counts; "
        "thresholds calibrated on benign *training* clients (out-of-fold); the operating point "
        "is the 0.3 % FPR threshold. Baselines are calibrated the same way on the same clients.",
        "",
        markdown_table(report),
        "",
        "TPR @ FPR x: from the test ROC (threshold-free; with "
        f"{report['benign_scored']} benign clients, 0.1 % FPR means no false positive at all). "
        "TPR / FPR @ op.: at the threshold fixed in training. "
        "Look-alikes: evaluation-harness and batch-labelling clients (legitimate).",
        "",
        f"Hydra ({hydra['networks']} networks of {', '.join(map(str, hydra['network_sizes']))} "
        f"accounts): campaign recall {_fmt(hydra['campaign_recall'])} (≥ half a network linked "
        f"into one flagged campaign), precision {_fmt(hydra['campaign_precision'])}; accounts "
        f"flagged on their own {_fmt(hydra['account_recall_alone'])}, with campaigns "
        f"{_fmt(hydra['account_recall_with_campaigns'])}; benign accounts swept into flagged "
        f"campaigns: {hydra['benign_accounts_in_flagged_campaigns']}.",
        "",
        f"Costs: `request_features` {feat['typical_us']:.0f} µs per request (median over "
        "personas, best of 3; per persona: "
        + ", ".join(f"{k} {v['median_us']:.0f}" for k, v in feat.items() if isinstance(v, dict))
        + f" µs); window features + score: {score['window_64_us']:.0f} / "
        f"{score['window_256_us']:.0f} / {score['window_500_us']:.0f} µs for 64 / 256 / 500 "
        f"requests, i.e. {score['events_per_s_window_256']:,.0f} events/s on one core when a "
        f"256-request window is rescored every {score['score_every_requests']} events"
        + (f" (measured at {costs['load_note']})." if costs.get("load_note") else "."),
        "",
        *sequence_lines(report, costs),
        "Targets (issue 4), held-out families: "
        f"TPR ≥ 95 % at FPR ≤ 0.3 %: {_fmt(held['tpr_at_operating'])} at "
        f"{_fmt(ours['benign_fpr_at_operating'])} benign FPR; median queries-to-detect ≤ 300: "
        f"{held['queries_to_detect_median']:.0f}; ≥ 80 % at 5 % share: "
        f"{_fmt(ours['by_share']['0.05'])}; hydra recall ≥ 90 %: campaigns "
        f"{_fmt(hydra['campaign_recall'])}, accounts "
        f"{_fmt(hydra['account_recall_with_campaigns'])}; features ≤ 100 µs: "
        f"{feat['typical_us']:.0f} µs; ≥ 5,000 events/s: {score['events_per_s_window_256']:,.0f}. "
        f"In-distribution TPR @ op.: {_fmt(ind['tpr_at_operating'])}.",
        "",
        "Per family (TPR @ op.): "
        + ", ".join(
            f"{k} {_fmt(v)}" for k, v in {**held["per_family_tpr"], **ind["per_family_tpr"]}.items()
        )
        + "; benign FPR @ op. by persona: "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in ours["benign_fpr_by_family"].items())
        + ".",
        "",
        "Notes:",
        "",
        "- Model: additive logistic regression (a linear term plus an 8-quantile-bin step "
        "function per window feature), chosen over plain linear models and other bin counts / "
        "regularisation by leave-attack-family-out cross-validation on the training families "
        "only (candidates and their out-of-fold scores are in the artifact's metadata). In a "
        "one-off comparison during development (random client folds, scale 1), scikit-learn "
        "gradient-boosted trees scored no better out-of-fold than the additive model (TPR at "
        "1 % FPR 0.976 vs 0.994) and were not pursued. The torch sequence model is compared "
        "above. Training also includes the linked groups of the "
        "training clients as pooled pseudo-clients (labelled by member majority), because the "
        "worker scores a campaign's pooled window with the same model: without them, benign "
        "teams' pooled windows (colleagues sharing an office /24 and an org) scored as "
        "harvesting.",
        "- Baselines see what the gateway keeps: the 64-bit SimHash of each prompt, not the "
        "text (the MMD paper uses sentence-transformer embeddings). SimHashes of unrelated "
        "texts are close to uniformly random, so a diverse harvesting window looks like the "
        "pooled benign sample (low MMD) and gives a near-binomial min-distance stream (normal "
        "for PRADA), while one benign client's window is narrow and repetitive; both baselines "
        "therefore rank many benign clients above attackers here (AUROC below 0.5 on some "
        "splits). This is a property of sketch embeddings, not a claim about the published "
        "detectors on real embeddings.",
        f"- Misses: held-out TPR at the operating point is {_fmt(held['tpr_at_operating'])} "
        "against a 95 % target. The adaptive family (paraphrased templates, fake multi-turn, "
        "human timing) is built to look benign and is mostly missed; for the other held-out "
        "families the model leans on habits of the six training attack families, and "
        "leave-family-out validation on the training families shows the same gap (out-of-fold "
        f"TPR at 1 % FPR {report['model_selection_best']:.2f}). The blended (attacker-share) "
        "and hydra families are training families (fresh clients and seeds in the test).",
        "",
        *(
            [f"![{Path(p).stem}]({p})" for p in images]
            or [
                "Plots not redrawn in this run (matplotlib, the `bench` extra, was not "
                "installed); the PNGs in `bench/detection/plots/` are from the previous run "
                "(additive model and baselines only)."
            ]
        ),
        END,
    ]
    return "\n".join(lines)


def write_benchmarks(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text()
    if START in current and END in current:
        head, rest = current.split(START, 1)
        _, tail = rest.split(END, 1)
        path.write_text(head + text + tail)
    else:
        path.write_text(current.rstrip("\n") + "\n\n" + text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write-benchmarks", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--sequence-model", type=Path, default=None)
    parser.add_argument("--no-sequence", action="store_true")
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="Redraw plots and the BENCHMARKS.md section from the last results JSON.",
    )
    args = parser.parse_args()
    results = HERE / "results"
    name = "detection_quick.json" if args.quick else "detection.json"
    command = (
        "python -m bench.detection" + (" --quick" if args.quick else "") + " --write-benchmarks"
    )
    if args.from_results:
        saved = json.loads((results / name).read_text())
        write_benchmarks(section(saved, saved.pop("costs"), plots(saved), command))
        print("BENCHMARKS.md updated from", results / name)
        return
    detector = load_default_detector() if args.model is None else load_detector(args.model)
    seq, note = sequence_for_eval(not args.no_sequence, args.sequence_model)
    report = run_eval(
        detector,
        seed=args.seed,
        scale=args.scale,
        quick=args.quick,
        sequence=seq,
        progress=print,
    )
    if note:
        report["notes"].append(note)
    chosen = detector.metadata.get("chosen", "")
    selection = detector.metadata.get("model_selection", {}).get(chosen, {})
    report["model_selection_best"] = float(selection.get("oof_tpr_at_fpr_0.01", float("nan")))
    print(markdown_table(report))
    costs: dict[str, Any] = {"features": feature_cost(), "scoring": scoring_cost(detector)}
    costs["load_note"] = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    if seq is not None:
        costs["sequence"] = sequence_cost(seq, detector)
        costs["sequence_info"] = sequence_info(seq)
    print(json.dumps(costs, indent=1))
    results.mkdir(exist_ok=True)
    (results / name).write_text(
        json.dumps({**report, "costs": costs}, indent=1, sort_keys=True) + "\n"
    )
    images = plots(report)
    if args.write_benchmarks:
        write_benchmarks(section(report, costs, images, command))
        print("BENCHMARKS.md updated")


if __name__ == "__main__":
    main()
