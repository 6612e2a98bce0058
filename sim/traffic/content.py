"""What harvesters send: one maker per attack content kind.

``make(kind, rng, bank)`` fixes a client's (or a campaign's) choices — its template subset,
its parameters — and returns a function from (generator, request index) to an :class:`Ask`.
Hydra accounts share one maker, so they share templates and parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.traffic import bodies, vocab
from sim.traffic.bodies import Style, system, user
from sim.traffic.client import CHAT_ROUTE, COMPLETIONS_ROUTE
from sim.traffic.text import TextBank, logic_problem, math_problem, pick, wiki_sentence

Rng = np.random.Generator
KINDS = (
    "self_instruct",
    "reasoning_elicitation",
    "logprob_sweep",
    "logit_bias_sweep",
    "random_word",
    "wiki_sentence",
    "coverage_sweep",
)
# Replaying real user prompts (ShareGPT-style distillation) is not a family of its own: it is
# what adaptive attackers, some hydra networks and some blended keys send.
REPLAY = "prompt_replay"


@dataclass(frozen=True, slots=True)
class Ask:
    body: dict[str, Any]
    median_tokens: float
    route: str = CHAT_ROUTE


Maker = Callable[[Rng, int], Ask]

_REASONING_TEMPLATES = (
    "Solve the following problem. Think step by step and show your work.\n\n{p}",
    "{p}\nLet's think step by step.",
    "Problem: {p}\nExplain your reasoning in detail before giving the final answer.",
    "{p}\n\nWalk me through the solution, justify each step, and put the answer in a box.",
    "Reason it out carefully and show the steps: {p}",
    "<think> is required. Question: {p}",
)
_SEED_TASK_HEADERS = (
    "Here are some example tasks:",
    "Come up with a series of tasks:",
    "You are asked to come up with a set of diverse task instructions.",
)


_SYSTEM_PROMPTS = (  # generic and distillation-style (Orca-like) system messages
    "You are a helpful assistant.",
    "You are an AI assistant. User will give you a task. Your goal is to complete the task as "
    "faithfully as you can. While performing the task think step-by-step and justify your steps.",
    "You are an expert. Provide a detailed, thorough and accurate answer.",
    "You are a helpful assistant who always explains the answer so that a five year old can "
    "understand.",
    "You are a knowledgeable teacher. Give long, well-structured answers.",
)


def _system_prompt(rng: Rng, p: float) -> list[dict[str, Any]]:
    """A client's constant system message (with probability ``p``), else none."""
    return [system(pick(rng, _SYSTEM_PROMPTS))] if rng.random() < p else []


def _attack_style(rng: Rng) -> Style:
    return bodies.style(
        rng,
        think=0.25,
        stream=0.3,
        temps=(3, 1, 0, 0, 1, 3, 2, 3),
        max_tokens=(1, 0, 0, 1, 1, 2, 1, 3, 3),
    )


def _self_instruct(rng: Rng, bank: TextBank) -> Maker:
    del bank
    s = _attack_style(rng)
    idx = rng.permutation(len(vocab.SELF_INSTRUCT_TASKS))[: int(rng.integers(5, 15))]
    tasks = tuple(vocab.SELF_INSTRUCT_TASKS[i] for i in idx)
    sys_msg = _system_prompt(rng, 0.6)
    seeds = rng.random() < 0.4
    n = int(pick(rng, ("1", "1", "1", "2", "4")))

    def make(r: Rng, i: int) -> Ask:
        del i
        if seeds and r.random() < 0.5:
            examples = "\n".join(
                f"{k + 1}. " + pick(r, tasks).format(topic=pick(r, vocab.TOPICS)) + "."
                for k in range(int(r.integers(3, 8)))
            )
            text = (
                f"{pick(r, _SEED_TASK_HEADERS)}\n{examples}\nWrite a new task that is "
                "different from these, then answer it in full detail."
            )
        else:
            text = pick(r, tasks).format(topic=pick(r, vocab.TOPICS)) + pick(r, vocab.FORMATS) + "."
        body = bodies.chat(s, [*sys_msg, user(text)], n=n if n > 1 else None)
        return Ask(body, 700)

    return make


def _reasoning(rng: Rng, bank: TextBank) -> Maker:
    del bank
    s = _attack_style(rng)
    if rng.random() < 0.5:
        s = Style(bodies.THINK_MODEL, s.temperature, s.max_tokens or 2048, s.stream)
    templates = tuple(str(t) for t in rng.choice(_REASONING_TEMPLATES, size=3, replace=False))
    sys_msg = _system_prompt(rng, 0.5)

    def make(r: Rng, i: int) -> Ask:
        del i
        problem = math_problem(r) if r.random() < 0.7 else logic_problem(r)
        return Ask(bodies.chat(s, [*sys_msg, user(pick(r, templates).format(p=problem))]), 900)

    return make


def _logprob_sweep(rng: Rng, bank: TextBank) -> Maker:
    completions = rng.random() < 0.3
    top = int(pick(rng, ("20", "20", "20", "10")))
    temp = pick(rng, ("0", "1", "none"))
    cap = int(pick(rng, ("1", "1", "2", "5", "16")))

    def make(r: Rng, i: int) -> Ask:
        del i
        words = bank.turn(r).split()
        prefix = " ".join(words[: int(r.integers(1, max(2, len(words))))])
        body: dict[str, Any] = {"model": bodies.MODEL, "max_tokens": cap}
        if temp != "none":
            body["temperature"] = float(temp)
        if completions:
            body.update(prompt=prefix, logprobs=5)
            return Ask(body, cap, COMPLETIONS_ROUTE)
        body.update(messages=[user(prefix)], logprobs=True, top_logprobs=top)
        return Ask(body, cap)

    return make


def _logit_bias_sweep(rng: Rng, bank: TextBank) -> Maker:
    prompts = tuple(bank.turn(rng) for _ in range(int(rng.integers(1, 6))))
    width = int(pick(rng, ("50", "100", "300")))
    vocab_size = 50_000
    offset = int(rng.integers(0, vocab_size))

    def make(r: Rng, i: int) -> Ask:
        start = (offset + i * width) % vocab_size
        bias = {str((start + k) % vocab_size): 100 for k in range(width)}
        body = {
            "model": bodies.MODEL,
            "messages": [user(pick(r, prompts))],
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": 20,
            "logit_bias": bias,
            "temperature": 0.0,
        }
        return Ask(body, 1)

    return make


def _replay(rng: Rng, bank: TextBank) -> Maker:
    s = _attack_style(rng)
    sys_msg = _system_prompt(rng, 0.5)

    def make(r: Rng, i: int) -> Ask:
        del i
        return Ask(bodies.chat(s, [*sys_msg, user(bank.replay_prompt(r))]), 600)

    return make


def _random_word(rng: Rng, bank: TextBank) -> Maker:
    s = _attack_style(rng)
    lo, hi = int(rng.integers(3, 10)), int(rng.integers(12, 40))
    question = rng.random() < 0.5
    sys_msg = _system_prompt(rng, 0.3)

    def make(r: Rng, i: int) -> Ask:
        del i
        text = " ".join(bank.random_words(r, int(r.integers(lo, hi))))
        if question:
            text = f"{text}?"
        return Ask(bodies.chat(s, [*sys_msg, user(text)]), 120)

    return make


def _wiki(rng: Rng, bank: TextBank) -> Maker:
    del bank
    s = _attack_style(rng)
    ask = rng.random() < 0.5
    sys_msg = _system_prompt(rng, 0.3)

    def make(r: Rng, i: int) -> Ask:
        del i
        text = " ".join(wiki_sentence(r) for _ in range(int(r.integers(1, 4))))
        if ask:
            text += pick(
                r,
                (
                    "\nWhat is this about?",
                    "\nContinue the article.",
                    "\nIs this true?",
                    "\nSummarize the passage.",
                ),
            )
        return Ask(bodies.chat(s, [*sys_msg, user(text)]), 150)

    return make


def _coverage(rng: Rng, bank: TextBank) -> Maker:
    del bank
    s = _attack_style(rng)
    if rng.random() < 0.5:
        s = Style(s.model, 0.0, s.max_tokens, s.stream)
    topics = tuple(str(t) for t in rng.permutation(np.array(vocab.TOPICS, dtype=object)))
    tasks = tuple(vocab.COVERAGE_TASKS[i] for i in rng.permutation(len(vocab.COVERAGE_TASKS)))
    suffix = pick(rng, ("", ".", ":", " in detail."))
    sys_msg = _system_prompt(rng, 0.4)

    def make(r: Rng, i: int) -> Ask:
        del r
        topic, task = topics[(i // len(tasks)) % len(topics)], tasks[i % len(tasks)]
        return Ask(bodies.chat(s, [*sys_msg, user(f"{task} {topic}{suffix}")]), 400)

    return make


_MAKERS: dict[str, Callable[[Rng, TextBank], Maker]] = {
    "self_instruct": _self_instruct,
    "reasoning_elicitation": _reasoning,
    "logprob_sweep": _logprob_sweep,
    "logit_bias_sweep": _logit_bias_sweep,
    "random_word": _random_word,
    "wiki_sentence": _wiki,
    "coverage_sweep": _coverage,
    "prompt_replay": _replay,
}


def make(kind: str, rng: Rng, bank: TextBank) -> Maker:
    """A maker of ``kind`` (:data:`KINDS` or :data:`REPLAY`), its choices fixed by ``rng``."""
    return _MAKERS[kind](rng, bank)
