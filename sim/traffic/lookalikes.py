"""Legitimate look-alikes: evaluation-harness runs and batch labelling jobs.

Both are systematic, templated and machine-timed, like harvesting; they differ in what
they take out (short answers, one benchmark at a time, bounded runs) rather than in form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.traffic import bodies, timing, vocab
from sim.traffic.bodies import Style, completion_draft, draft, system, user
from sim.traffic.client import Draft
from sim.traffic.text import TextBank, code_snippet, logic_problem, math_problem, pick

Rng = np.random.Generator


def _mcq(rng: Rng) -> str:
    topic = pick(rng, vocab.TOPICS)
    options = [str(o) for o in rng.choice(vocab.TOPICS, size=3, replace=False)]
    stem = pick(
        rng,
        (
            "Which of the following is most closely related to {t}?",
            "Which field would study {t}?",
            "What is the main idea behind {t}?",
        ),
    )
    shuffled = [str(o) for o in rng.permutation(np.array([*options, topic], dtype=object))]
    return (
        stem.format(t=topic)
        + "\n"
        + "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", shuffled, strict=True))
    )


def _run_body(rng: Rng, bench: str, shots: list[str], s: Style) -> tuple[dict[str, Any], float]:
    if bench == "mcq":
        q = "\n\n".join([*shots, f"Question: {_mcq(rng)}\nAnswer:"])
        return bodies.chat(s, [user(q)]), 2
    if bench == "gsm_cot":
        q = "\n\n".join(
            [*shots, f"Question: {math_problem(rng)}\nAnswer: Let's think step by step."]
        )
        return bodies.chat(s, [user(q)]), 160
    if bench == "logic":
        return bodies.chat(
            s, [user(f"{logic_problem(rng)}\nAnswer with a single name or number.")]
        ), 6
    lang = pick(rng, ("Python", "TypeScript"))
    return bodies.chat(
        s, [system("Complete the function. Output only code."), user(code_snippet(rng, lang))]
    ), 120


def _loglik(rng: Rng, t: float, shots: list[str], model: str) -> Draft:
    """A log-likelihood item (lm-eval-harness style): the completions route, echo, logprobs."""
    q = "\n\n".join([*shots, f"Question: {_mcq(rng)}\nAnswer: {pick(rng, ('A', 'B', 'C', 'D'))}"])
    body = {"model": model, "prompt": q, "max_tokens": 1, "temperature": 0.0, "logprobs": 5,
            "echo": True}  # fmt: skip
    return completion_draft(t, body, 1)


def eval_harness(rng: Rng, bank: TextBank, duration: float) -> list[Draft]:
    """Benchmark runs: fixed few-shot template, temperature 0, sometimes logprobs, bounded."""
    del bank
    out: list[Draft] = []
    for _ in range(int(rng.integers(1, 3))):
        bench = pick(rng, ("mcq", "mcq", "gsm_cot", "logic", "code", "loglik"))
        s = bodies.style(
            rng,
            think=0.1,
            stream=0.0,
            temps=(0, 1, 0, 0, 0, 0, 0, 0),
            max_tokens=(1, 2, 2, 0, 0, 1, 0, 0, 0),
            top_p=0.0,
            seed=0.3,
        )
        if bench == "mcq":
            s = Style(s.model, 0.0, int(pick(rng, ("1", "5", "16"))), False, None, s.seed)
        k = int(pick(rng, ("0", "3", "5")))
        shots = [
            f"Question: {_mcq(rng) if bench == 'mcq' else math_problem(rng)}\nAnswer: "
            f"{pick(rng, ('A', 'B', 'C', 'D'))}"
            for _ in range(k)
        ]
        logprobs = bench == "mcq" and rng.random() < 0.5
        top = int(pick(rng, ("5", "5", "10", "20")))
        n_samples = int(pick(rng, ("1", "1", "5", "10"))) if bench == "code" else 1
        items = int(rng.integers(80, 500))
        t = float(rng.uniform(0.0, max(1.0, duration - items)))
        gaps = timing.machine_gaps(rng, items, float(rng.uniform(0.3, 2.5)), 0.35)
        for i in range(items):
            if bench == "loglik":
                out.append(_loglik(rng, t, shots, s.model))
                t += float(gaps[i])
                continue
            body, median = _run_body(rng, bench, shots, s)
            if logprobs:
                body.update(logprobs=True, top_logprobs=top)
            if n_samples > 1:
                body.update(n=n_samples, temperature=0.8)
            out.append(draft(rng, t, body, median, 0.5))
            t += float(gaps[i])
    out.sort(key=lambda d: d.t)
    return [d for d in out if d.t < duration]


def batch_labelling(rng: Rng, bank: TextBank, duration: float) -> list[Draft]:
    """Labelling jobs: one instruction template over many real texts, tiny answers."""
    out: list[Draft] = []
    s = bodies.style(
        rng,
        think=0.0,
        stream=0.0,
        temps=(1, 6, 1, 0, 0, 0, 0, 0),
        max_tokens=(2, 0, 0, 0, 0, 0, 0, 0, 0),
        top_p=0.0,
    )
    for _ in range(int(rng.integers(1, 3))):
        instruction, labels = vocab.LABEL_TASKS[int(rng.integers(len(vocab.LABEL_TASKS)))]
        cap = int(pick(rng, ("1", "2", "5", "10", "20")))
        sys_msg = [system("You are a careful data annotator.")] if rng.random() < 0.5 else []
        items = int(rng.integers(80, 500))
        t = float(rng.uniform(0.0, max(1.0, duration - items)))
        gaps = timing.machine_gaps(rng, items, float(rng.uniform(0.15, 1.5)), 0.4)
        for i in range(items):
            text = bank.turn(rng)
            body = bodies.chat(s, [*sys_msg, user(f"{instruction}\n\nMessage: {text}\nLabel:")])
            body["max_tokens"] = cap
            d = draft(rng, t, body, 1.5, 0.4)
            out.append(d)
            t += float(gaps[i])
        del labels
    out.sort(key=lambda d: d.t)
    return [d for d in out if d.t < duration]
