"""Soft-label distillation of the toy LM through the gateway, per enforcement level.

    python -m bench.extraction.distill [--quick] [--write-benchmarks]

An attacker asks the gateway for the next-token ``top_logprobs`` (20 asked; the gateway
caps them) of many prompts and trains a numpy student (``student_lm.StudentLM``) on them:
the returned probabilities, with the mass left over spread evenly over the rest of the
vocabulary; where logprobs are withheld, the returned token itself (label-smoothed). The
student is scored on held-out prompts against the teacher's exact distribution:
KL(teacher || student) and top-1 agreement.

Rows: ``controls off`` (a tier with every control off: the ceiling), then the shipped
ladder with the attacker's client put at ``allow``, ``watch``, ``degrade`` and
``throttle`` (as ``antidistill client set-level`` does), then, as an ablation, ``watch``
and ``degrade`` in a tier without the text watermark (which withholds logprobs wherever it
marks text, so there the ladder's logprob rounding and noise act alone). Beside each, the
benign cost: an honest client at the same level asks the held-out prompts greedily
(temperature 0, top 5 logprobs), and we count how often its answer token, and the top
token of its logprobs, are the direct upstream's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.extraction import report
from bench.extraction.harness import GatewayStack, bench_tier, post_all, tier_clients
from bench.extraction.logits import OFF_CONTROLS
from bench.extraction.student_lm import StudentLM, contexts_of
from sim.toy_lm import ToyLM, load_toy_lm
from sim.toy_upstream import create_app as create_toy_upstream

NAME = "distill"
MODULE = "bench.extraction.distill"
COMPLETIONS = "/v1/completions"
ROWS: dict[str, tuple[str, str]] = {
    # row: (tier, level)
    "controls off": ("open", "allow"),
    "allow": ("default", "allow"),
    "watch": ("default", "watch"),
    "degrade": ("default", "degrade"),
    "throttle": ("default", "throttle"),
    "watch, no text watermark": ("no-watermark", "watch"),
    "degrade, no text watermark": ("no-watermark", "degrade"),
}
"""The shipped ladder, its ceiling, and (ablation) the ladder without the text watermark,
which withholds logprobs wherever it marks text: what logprob rounding and noise do alone."""
QUICK_ROWS = ("controls off", "allow", "degrade", "throttle")
SMOOTHING = 0.1
F64 = npt.NDArray[np.float64]


@dataclass
class Row:
    setting: str
    logprobs_returned: float  # mean entries per answer
    kl: float
    top1_agreement: float
    benign_answer_unchanged: float
    benign_top_logprob_unchanged: float | None
    queries: int


def sample_prompts(lm: ToyLM, count: int, rng: np.random.Generator) -> list[str]:
    """Prefixes of sentences the teacher itself writes (deterministic), that tokenize back
    to the same ids; ``<unk>`` never appears."""
    prompts: list[str] = []
    seen: set[str] = set()
    while len(prompts) < count:
        seed = int(rng.integers(2**31))
        ids = [t.token_id for t in lm.generate_ids([lm.eos_id], max_tokens=14, seed=seed)]
        if len(ids) < 2 or lm.unk_id in ids:
            continue
        cut = int(rng.integers(1, len(ids)))
        text = lm.detokenize(ids[:cut])
        if text not in seen and lm.tokenize(text) == ids[:cut]:
            seen.add(text)
            prompts.append(text)
    return prompts


def _batches(prompts: Sequence[str], size: int, **params: Any) -> list[dict[str, Any]]:
    return [
        {"model": "toy-lm", "prompt": list(prompts[i : i + size]), "max_tokens": 1, **params}
        for i in range(0, len(prompts), size)
    ]


def _choices(answers: list[tuple[int, Any]], prompts: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for status, body in answers:
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"gateway answered {status}: {str(body)[:300]}")
        out += sorted(body["choices"], key=lambda c: c.get("index", 0))
    if len(out) != prompts:
        raise RuntimeError(f"{len(out)} choices for {prompts} prompts")
    return out


def answer_token(lm: ToyLM, choice: dict[str, Any]) -> int:
    """The token the model answered; an empty answer that stopped is ``<eos>``."""
    text = str(choice.get("text") or "")
    token = lm.token_id(text) if text.strip() else lm.eos_id
    return lm.unk_id if token is None else token


def top_logprobs(lm: ToyLM, choice: dict[str, Any]) -> dict[int, float]:
    logprobs = choice.get("logprobs") or {}
    tops = logprobs.get("top_logprobs") or []
    out: dict[int, float] = {}
    for piece, value in (tops[0] if tops and tops[0] else {}).items():
        token = lm.token_id(str(piece))
        if token is not None:
            out[token] = float(value)
    return out


def soft_target(lm: ToyLM, choice: dict[str, Any]) -> tuple[F64, int]:
    """The attacker's training target for one answer, and how many logprobs it had."""
    v = lm.vocab_size
    tops = top_logprobs(lm, choice)
    if not tops:
        target = np.full(v, SMOOTHING / (v - 1))
        target[answer_token(lm, choice)] = 1 - SMOOTHING
        return target, 0
    probs = {t: math.exp(lp) for t, lp in tops.items()}
    total = sum(probs.values())
    if total > 1:
        probs = {t: p / total for t, p in probs.items()}
        total = 1.0
    target = np.full(v, (1 - total) / (v - len(probs)))
    for t, p in probs.items():
        target[t] = p
    return target / target.sum(), len(tops)


def evaluate(lm: ToyLM, student: StudentLM, prompts: Sequence[str]) -> tuple[float, float]:
    ids = [lm.tokenize(p) for p in prompts]
    teacher = np.stack([lm.next_token_logprobs(x) for x in ids])
    learned = student.log_probs(contexts_of(ids, student.context, lm.eos_id))
    kl = float(np.mean(np.sum(np.exp(teacher) * (teacher - learned), axis=1)))
    agree = float(np.mean(teacher.argmax(axis=1) == learned.argmax(axis=1)))
    return kl, agree


def run(quick: bool, seed: int) -> list[Row]:
    lm = load_toy_lm()
    rng = np.random.default_rng(seed)
    n_train, n_test = (400, 200) if quick else (3000, 600)
    prompts = sample_prompts(lm, n_train + n_test, rng)
    train, test = prompts[:n_train], prompts[n_train:]
    train_ids = contexts_of([lm.tokenize(p) for p in train], 3, lm.eos_id)
    direct = [int(np.argmax(lm.next_token_logprobs(lm.tokenize(p)))) for p in test]
    attackers = {row: f"distiller-{i}" for i, row in enumerate(ROWS)}
    honest = {row: f"honest-{i}" for i, row in enumerate(ROWS)}
    tier_of = {key[row]: ROWS[row][0] for key in (attackers, honest) for row in ROWS}
    policy = {
        "routes": [{"path": COMPLETIONS, "kind": "openai-completions"}],
        "tiers": {
            "default": bench_tier(),
            "open": bench_tier({"allow": OFF_CONTROLS}),
            "no-watermark": bench_tier({"watch": {"watermark_text": False}}),
        },
        "clients": tier_clients({k: t for k, t in tier_of.items() if t != "default"}),
    }
    epochs = 10 if quick else 20
    rows: list[Row] = []
    with GatewayStack(create_toy_upstream(lm=lm), policy) as stack:
        url = stack.url + COMPLETIONS
        for row, (_, level) in ROWS.items():
            if quick and row not in QUICK_ROWS:
                continue
            if level != "allow":
                stack.set_level(attackers[row], level)
                stack.set_level(honest[row], level)
            bodies = _batches(train, 50, logprobs=20, temperature=0)
            choices = _choices(post_all(url, attackers[row], bodies), len(train))
            pairs = [soft_target(lm, c) for c in choices]
            targets = np.stack([t for t, _ in pairs])
            student = StudentLM(lm.vocab_size, epochs=epochs, seed=seed).fit(train_ids, targets)
            kl, agree = evaluate(lm, student, test)
            bodies = _batches(test, 50, logprobs=5, temperature=0)
            benign = _choices(post_all(url, honest[row], bodies), len(test))
            answers = [answer_token(lm, c) for c in benign]
            tops = [top_logprobs(lm, c) for c in benign]
            with_tops = [
                (max(t, key=t.__getitem__), d) for t, d in zip(tops, direct, strict=True) if t
            ]
            rows.append(
                Row(
                    setting=row,
                    logprobs_returned=float(np.mean([n for _, n in pairs])),
                    kl=kl,
                    top1_agreement=agree,
                    benign_answer_unchanged=float(np.mean(np.equal(answers, direct))),
                    benign_top_logprob_unchanged=float(np.mean([a == d for a, d in with_tops]))
                    if with_tops
                    else None,
                    queries=len(train),
                )
            )
    return rows


def render(rows: list[Row]) -> str:
    headers = [
        "attacker's level",
        "logprobs/answer",
        "KL(teacher‖student)",
        "top-1 agreement",
        "benign answer unchanged",
        "benign top logprob unchanged",
    ]
    return report.table(
        headers,
        [
            [
                r.setting,
                round(r.logprobs_returned, 2),
                r.kl,
                r.top1_agreement,
                r.benign_answer_unchanged,
                r.benign_top_logprob_unchanged,
            ]
            for r in rows
        ],
    )


NOTE = """
The student (a numpy feed-forward LM: 3-token context, 24-d embeddings, 96 tanh units) is
trained on one answer per training prompt (prompts are prefixes of sentences the teacher
writes), asking for 20 top logprobs at temperature 0; where logprobs are withheld it
trains on the answer token itself. Held-out prompts are scored against the teacher's exact
next-token distribution. "Benign answer unchanged": an honest client at that level asking
greedily (temperature 0) gets the direct upstream's answer token; "benign top logprob
unchanged": the top entry of its logprobs is the upstream's top token (n/a: withheld).

Reading it: the top-5 cap and rounding at `allow` cost the distiller a good part of the
soft-label advantage at no cost to honest answers. From `watch` up the shipped ladder
turns on the text watermark, which withholds logprobs wherever it marks text, so the
ladder's own logprob rounding and noise at `watch` / `degrade` never act; the ablation
rows show them alone: 0.05-nat noise and 2 decimals (`watch`) change nothing measurable,
top-1 with 1 decimal and 0.3-nat noise (`degrade`) does. What costs honest clients is the
temperature floor (`degrade` 0.7, `throttle` 1.0: most greedy answers change) and, at
`watch`, the watermark's synonym substitutions (about 1 % of one-word answers). Levels
above `allow` are meant for flagged clients.
"""


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = report.parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    with report.one_thread():
        rows = run(args.quick, args.seed)
    elapsed = time.perf_counter() - started
    text = render(rows)
    print(text)
    report.publish(
        args,
        argv,
        module=MODULE,
        name=NAME,
        title="Soft-label distillation of the toy LM",
        text=text,
        note=NOTE,
        elapsed_s=elapsed,
        results={"rows": [asdict(r) for r in rows]},
    )
    return rows


if __name__ == "__main__":
    main()
