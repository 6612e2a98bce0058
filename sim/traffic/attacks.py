"""Attack campaigns: scripted harvesters, adaptive attackers, hydra networks, blended keys.

Content comes from :mod:`sim.traffic.content`; this module decides when requests are sent
and how adaptive attackers disguise them.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from sim.traffic import apps, bodies, personas, timing
from sim.traffic.bodies import assistant, system, user
from sim.traffic.client import Draft
from sim.traffic.content import KINDS, REPLAY, Ask, Maker, make
from sim.traffic.text import TextBank, pick

Rng = np.random.Generator


def _draft(rng: Rng, t: float, ask: Ask) -> Draft:
    tokens = bodies.answer_tokens(rng, ask.body, ask.median_tokens, 0.5)
    return Draft(t, ask.body, tokens * int(ask.body.get("n", 1)), True, ask.route)


def scripted_times(rng: Rng, duration: float) -> np.ndarray:
    """A harvesting script's schedule: steady, bursty or Poisson, in one long active window."""
    start = float(rng.uniform(0.0, duration * 0.4)) if rng.random() < 0.6 else 0.0
    end = start + (duration - start) * float(rng.uniform(0.4, 1.0))
    n = int(min(2500, rng.lognormal(np.log(600), 0.5) * (end - start) / timing.DAY))
    n = max(n, 150)
    mode = int(rng.integers(3))
    if mode == 0:  # steady, paced to a rate
        gaps = timing.machine_gaps(rng, n, (end - start) / n, float(rng.uniform(0.02, 0.4)))
        return start + np.cumsum(gaps)
    if mode == 1:  # bursts of concurrent requests, then a pause
        size = int(rng.integers(4, 65))
        waves = start + np.sort(rng.uniform(0, end - start, size=max(1, n // size)))
        t = (waves[:, None] + rng.uniform(0, 3.0, size=(waves.size, size))).ravel()
        return np.sort(t)
    return start + np.sort(rng.uniform(0, end - start, size=n))


def scripted(kind: str) -> personas.Persona:
    """A pure harvester of one content kind, driven by a script."""

    def build(rng: Rng, bank: TextBank, duration: float) -> list[Draft]:
        maker = make(kind, rng, bank)
        times = scripted_times(rng, duration)
        return [_draft(rng, float(t), maker(rng, i)) for i, t in enumerate(times) if t < duration]

    build.__doc__ = f"A scripted {kind} harvester."
    return build


_PARAPHRASES = (
    (
        re.compile(r"[Tt]hink step by step and show your work\.?"),
        "Lay out every part of your solution carefully.",
    ),
    (re.compile(r"Let's think step by step\."), "Go slowly and be thorough."),
    (re.compile(r"[Ee]xplain your reasoning in detail"), "Be detailed about how you get there"),
    (re.compile(r"show the steps"), "be thorough"),
    (re.compile(r"^Write "), "Could you write "),
    (re.compile(r"^Explain "), "I'd love to understand "),
    (re.compile(r"^List "), "Can you give me "),
)
_OPENERS = (
    "",
    "",
    "hey, ",
    "Quick question: ",
    "ok so ",
    "Hi! ",
    "For my class, ",
    "My friend asked me this: ",
)
_CLOSERS = ("", "", " thanks!", " :)", " Thanks in advance.", " no rush", " ty")


def _disguise(rng: Rng, bank: TextBank, ask: Ask, sys_prompt: str | None, stream: bool) -> Ask:
    """Paraphrase the ask, wrap it in fake earlier turns, vary its parameters."""
    text = _last_user_text(ask.body)
    if rng.random() < 0.8:
        for pattern, repl in _PARAPHRASES:
            text = pattern.sub(repl, text)
    text = pick(rng, _OPENERS) + text + pick(rng, _CLOSERS)
    history: list[dict[str, Any]] = []
    if rng.random() < 0.6:
        conv = bank.conversation(rng, 2)
        for k in range(min(len(conv) // 2, int(rng.integers(1, 4)))):
            history += [user(conv[2 * k]), assistant(conv[2 * k + 1])]
    head = [system(sys_prompt)] if sys_prompt else []
    body = dict(ask.body)
    body.pop("messages", None)
    body.pop("prompt", None)
    body["messages"] = [*head, *history, user(text)]
    body["temperature"] = float(pick(rng, ("0.7", "0.8", "1.0", "0.9")))
    body.pop("stream", None)
    if stream:
        body["stream"] = True
    return Ask(body, ask.median_tokens)


def _last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return str(body.get("prompt", ""))


def adaptive(rng: Rng, bank: TextBank, duration: float) -> list[Draft]:
    """An attacker who hides: paraphrased templates, fake multi-turn, human-like timing."""
    kind = pick(
        rng,
        (
            "self_instruct",
            "reasoning_elicitation",
            "coverage_sweep",
            REPLAY,
            REPLAY,
        ),
    )
    maker = make(kind, rng, bank)
    sys_prompt = (
        pick(rng, ("You are a helpful assistant.", "You are ChatBot, a friendly AI.", "")) or None
    )
    stream = bool(rng.random() < 0.6)
    tz = timing.tz_offset(rng)
    daily = float(rng.lognormal(np.log(300), 0.5))
    per_session = float(rng.uniform(8, 40))
    sessions = timing.session_starts(
        rng, max(1, int(daily / per_session * duration / timing.DAY)), duration, tz
    )
    out, i = [], 0
    for start in sessions:
        t = float(start)
        for _ in range(int(rng.poisson(per_session)) + 1):
            out.append(_draft(rng, t, _disguise(rng, bank, maker(rng, i), sys_prompt, stream)))
            i += 1
            t += float(timing.think_times(rng, 1, float(rng.uniform(10, 40)), 0.8)[0])
    out.sort(key=lambda d: d.t)
    return [d for d in out if d.t < duration]


def hydra(rng: Rng, bank: TextBank, duration: float, accounts: int) -> list[list[Draft]]:
    """A network of light accounts sharing one maker and one synchronised wave schedule."""
    kind = pick(
        rng,
        (
            "self_instruct",
            "reasoning_elicitation",
            "coverage_sweep",
            "wiki_sentence",
            "random_word",
            "logprob_sweep",
            REPLAY,
        ),
    )
    maker: Maker = make(kind, rng, bank)
    period = float(rng.uniform(300, 1800))
    waves = np.arange(float(rng.uniform(0, period)), duration, period)
    join = float(rng.uniform(0.3, 0.8))
    burst = int(rng.integers(1, 5))
    out: list[list[Draft]] = [[] for _ in range(accounts)]
    counters = [0] * accounts
    for wave in waves:
        for a in range(accounts):
            if rng.random() >= join:
                continue
            t = float(wave + rng.uniform(0, 30))
            for _ in range(int(rng.integers(1, burst + 1))):
                index = a + accounts * counters[a]  # shards a sweep across the accounts
                counters[a] += 1
                out[a].append(_draft(rng, t, maker(rng, index)))
                t += float(rng.uniform(2, 10))
    return [[d for d in drafts if d.t < duration] for drafts in out]


_BLEND_BASES = (
    ("app_backend", 0.5),
    ("chat_user", 0.15),
    ("coding_assistant", 0.2),
    ("agent", 0.15),
)


def blended(rng: Rng, bank: TextBank, duration: float, share: float) -> tuple[str, list[Draft]]:
    """A benign key with harvesting mixed in at ``share`` of its requests."""
    bases: dict[str, personas.Persona] = {
        "app_backend": apps.app_backend,
        "chat_user": personas.chat_user,
        "coding_assistant": personas.coding_assistant,
        "agent": personas.agent,
    }
    names = [n for n, _ in _BLEND_BASES]
    p = np.array([w for _, w in _BLEND_BASES])
    base = names[int(rng.choice(len(names), p=p / p.sum()))]
    benign = bases[base](rng, bank, duration)
    while len(benign) < 40:  # a quiet base: give it more activity so the share means something
        benign = sorted([*benign, *bases[base](rng, bank, duration)], key=lambda d: d.t)
    n_attack = max(1, round(share / (1.0 - share) * len(benign)))
    maker = make(pick(rng, (*KINDS, REPLAY, REPLAY)), rng, bank)
    if rng.random() < 0.5:  # interleaved with the key's own traffic
        anchors = np.array([d.t for d in benign])
        times = rng.choice(anchors, size=n_attack) + rng.uniform(0, 20, size=n_attack)
    else:  # a script run on the same key over one window
        start = float(rng.uniform(0, duration * 0.5))
        times = start + np.sort(rng.uniform(0, (duration - start) * 0.8, size=n_attack))
    attack = [_draft(rng, float(t), maker(rng, i)) for i, t in enumerate(np.sort(times))]
    merged = sorted([*benign, *attack], key=lambda d: d.t)
    return base, [d for d in merged if d.t < duration]
