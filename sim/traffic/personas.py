"""Benign personas: how legitimate clients use an LLM API, one function per persona.

Each takes the client's random generator, the text bank and the simulated duration, and
returns the client's requests as time-ordered :class:`Draft` objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sim.traffic import bodies, timing, vocab
from sim.traffic.bodies import assistant, draft, system, user
from sim.traffic.client import Draft
from sim.traffic.text import TextBank, code_snippet, logic_problem, math_problem, pick

Rng = np.random.Generator
Persona = Callable[[Rng, TextBank, float], list[Draft]]

_HELP_ASKS = (
    "can you walk me through it step by step?",
    "explain your reasoning please",
    "why is that?",
    "can you make it shorter?",
    "thanks! one more thing:",
)


def _human_task(rng: Rng, bank: TextBank) -> str:
    """What a person might ask a chatbot outright (overlaps with harvesting content)."""
    roll = rng.random()
    if roll < 0.35:
        task = pick(rng, vocab.SELF_INSTRUCT_TASKS).format(topic=pick(rng, vocab.TOPICS))
        return task.lower() if rng.random() < 0.5 else task
    if roll < 0.55:
        return f"{math_problem(rng)} {pick(rng, _HELP_ASKS)}"
    if roll < 0.65:
        return logic_problem(rng)
    ask = pick(rng, vocab.APP_QUESTIONS).format(
        thing=pick(rng, vocab.APP_THINGS), verb=pick(rng, vocab.APP_VERBS)
    )
    return f"{bank.turn(rng)} {ask}"


def chat_user(rng: Rng, bank: TextBank, duration: float) -> list[Draft]:
    """A person in a chat UI: a few sessions a day, growing conversations, think time."""
    tz = timing.tz_offset(rng)
    s = bodies.style(
        rng,
        think=0.2,
        stream=0.75,
        temps=(5, 0, 0, 0, 1, 3, 1, 2),
        max_tokens=(6, 0, 0, 0, 1, 2, 0, 2, 2),
    )
    sessions = timing.session_starts(
        rng, 1 + int(rng.poisson(4 * duration / timing.DAY)), duration, tz
    )
    out: list[Draft] = []
    sys_prompt = [system("You are a helpful assistant.")] if rng.random() < 0.3 else []
    for start in sessions:
        conv = bank.assistant_chat(rng) if rng.random() < 0.5 else bank.conversation(rng, 2)
        turns = min(len(conv) // 2, 1 + int(rng.geometric(0.25)))
        messages = list(sys_prompt)
        t = float(start)
        for k in range(turns):
            text = conv[2 * k]
            if k == 0 and rng.random() < 0.3:
                text = _human_task(rng, bank)
            elif rng.random() < 0.04:
                text = f"{text} {pick(rng, _HELP_ASKS)}"
            messages.append(user(text))
            d = draft(rng, t, bodies.chat(s, list(messages)), 180, 0.8)
            out.append(d)
            messages.append(assistant(conv[2 * k + 1]))
            t += float(timing.think_times(rng, 1, 25.0)[0]) + d.completion_tokens / 8.0
            if t >= duration:
                break
    out.sort(key=lambda d: d.t)
    return out


_FOLLOW_UPS = (
    "That didn't work, I get a {err} on line {n}.",
    "Can you also handle empty input?",
    "Now make it work for {n} items at a time.",
    "Thanks. How would I test this?",
    "Can you explain the second part again?",
    "Use the standard library only, please.",
    "Same problem with this version:\n```\n{code}\n```",
)
_EDITORS = ("Code", "Vim", "IDEA", "Zed")
_ERRORS = (
    "TypeError",
    "KeyError",
    "NullPointerException",
    "segfault",
    "borrow error",
    "syntax error",
    "timeout",
)


def coding_assistant(rng: Rng, bank: TextBank, duration: float) -> list[Draft]:
    """A developer in an IDE: working-hours sessions, code in and out, iterating on a fix."""
    tz = timing.tz_offset(rng)
    s = bodies.style(
        rng,
        think=0.3,
        stream=0.9,
        temps=(3, 3, 3, 1, 0, 1, 0, 0),
        max_tokens=(3, 0, 0, 0, 0, 1, 0, 3, 3),
    )
    lang = pick(rng, vocab.LANGUAGES)
    editor = system(
        f"You are an AI programming assistant inside the {pick(rng, _EDITORS)} "
        "editor. Answer with code blocks. The user's project language is "
        f"{lang}. Keep explanations brief."
    )
    out: list[Draft] = []
    sessions = timing.session_starts(
        rng, 1 + int(rng.poisson(4 * duration / timing.DAY)), duration, tz
    )
    for start in sessions:
        t = float(start)
        if rng.random() < 0.2:
            lang = pick(rng, vocab.LANGUAGES)
        for _ in range(int(rng.integers(1, 5))):  # a few threads per session
            ask = pick(rng, vocab.CODE_TASKS).format(lang=lang)
            messages = [editor, user(f"{ask}\n```\n{code_snippet(rng, lang)}\n```")]
            for _ in range(int(rng.geometric(0.3))):
                d = draft(rng, t, bodies.chat(s, list(messages)), 350, 0.7)
                out.append(d)
                messages.append(assistant(f"Here is a fix:\n```\n{code_snippet(rng, lang)}\n```"))
                follow = pick(rng, _FOLLOW_UPS).format(
                    err=pick(rng, _ERRORS),
                    n=int(rng.integers(2, 200)),
                    code=code_snippet(rng, lang),
                )
                messages.append(user(follow if rng.random() < 0.8 else bank.turn(rng)))
                t += float(timing.think_times(rng, 1, 70.0, 1.0)[0])
            t += float(timing.think_times(rng, 1, 300.0, 0.8)[0])
    out.sort(key=lambda d: d.t)
    return [d for d in out if d.t < duration]


def _tool_result(rng: Rng, bank: TextBank, tool: str) -> str:
    if tool in ("run_sql", "python"):
        rows = ", ".join(
            f"[{int(rng.integers(1, 999))}, {rng.uniform(0, 1e4):.2f}]"
            for _ in range(int(rng.integers(1, 8)))
        )
        return f'{{"rows": [{rows}], "elapsed_ms": {int(rng.integers(3, 900))}}}'
    if tool == "get_weather":
        return (
            f'{{"temp_c": {int(rng.integers(-5, 35))}, "rain_mm": {rng.uniform(0, 12):.1f}, '
            f'"wind_kmh": {int(rng.integers(0, 60))}}}'
        )
    texts = " ".join(bank.turn(rng) for _ in range(int(rng.integers(1, 4))))
    return f'{{"status": "ok", "content": {texts[:800]!r}}}'


def agent(rng: Rng, bank: TextBank, duration: float) -> list[Draft]:
    """An agent framework: tool loops with a long repeated system prompt and tool results."""
    tz = timing.tz_offset(rng)
    s = bodies.style(
        rng,
        think=0.2,
        stream=0.1,
        temps=(2, 4, 2, 1, 0, 1, 0, 0),
        max_tokens=(3, 0, 1, 0, 1, 2, 0, 1, 2),
    )
    tools = [vocab.TOOLS[i] for i in rng.permutation(len(vocab.TOOLS))[: int(rng.integers(3, 7))]]
    spec = [
        {
            "type": "function",
            "function": {"name": n, "description": d, "parameters": {"type": "object"}},
        }
        for n, d in tools
    ]
    sys_msg = system(
        "You are an autonomous assistant that completes the user's goal by calling tools. "
        "Think about which tool to call next, call exactly one tool at a time, and stop when "
        "the goal is done with a short report. Available tools: "
        + "; ".join(f"{n}: {d}" for n, d in tools)
    )
    daily = float(rng.lognormal(np.log(10), 0.6))
    starts = timing.poisson(rng, daily / timing.DAY / 0.6, duration, tz, depth=0.6)
    out = []
    for start in starts:
        goal = pick(rng, vocab.AGENT_GOALS).format(
            name=pick(rng, vocab.FIRST_NAMES),
            city=pick(rng, vocab.CITIES),
            topic=pick(rng, vocab.TOPICS),
            slug=pick(rng, vocab.IDENTIFIERS),
        )
        messages: list[dict[str, Any]] = [sys_msg, user(goal)]
        t = float(start)
        steps = int(rng.integers(2, 14))
        for k in range(steps):
            body = bodies.chat(s, list(messages), tools=spec)
            out.append(draft(rng, t, body, 60 if k < steps - 1 else 300, 0.5))
            name = tools[int(rng.integers(len(tools)))][0]
            call_id = f"call_{rng.bytes(6).hex()}"
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": "{}"},
                        }
                    ],
                }
            )
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": _tool_result(rng, bank, name)}
            )
            t += float(rng.lognormal(np.log(2.5), 0.5))
    out.sort(key=lambda d: d.t)
    return [d for d in out if d.t < duration]
