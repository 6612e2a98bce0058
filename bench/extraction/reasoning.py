"""Reasoning withholding against a student that learns from a reasoning teacher.

    python -m bench.extraction.reasoning [--quick] [--write-benchmarks]

The teacher (``bench.extraction.arithmetic``: multi-digit addition answered with
column-by-column ``<think>`` steps and ``reasoning_content``) runs behind the real
gateway. A student client asks it questions (every other request streamed) and trains
``arithmetic.LookupStudent`` on whatever comes back; it is scored on held-out questions.

Settings (the student's client, with the policy's controls):

- ``keep``: level ``allow``, the shipped default (reasoning passes);
- ``truncate``: a tier whose ``allow`` level truncates reasoning to a few characters;
- ``drop``: level ``watch``, where the shipped ladder drops reasoning (flagged clients).

Beside the student's accuracy, "answers intact" counts the replies whose final answer
(the text after the reasoning) is still the right sum: the cost of withholding to a
client that only wants answers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench.extraction import report
from bench.extraction.arithmetic import (
    MODEL,
    LookupStudent,
    create_teacher,
    parse_reply,
    question,
    trace,
)
from bench.extraction.harness import GatewayStack, bench_tier, post_all, sse_events, tier_clients

NAME = "reasoning"
MODULE = "bench.extraction.reasoning"
CHAT = "/v1/chat/completions"
TRUNCATE_CHARS = 12
SETTINGS = ("keep", "truncate", "drop")


@dataclass
class Row:
    setting: str
    reasoning_chars: float  # mean characters of reasoning the student saw
    answers_intact: float
    accuracy: dict[int, float] = field(default_factory=dict)  # by number of queries


def problems(digits: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    while len(out) < count:
        pair = (int(rng.integers(10**digits)), int(rng.integers(10**digits)))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def _message(status: int, body: Any) -> dict[str, Any]:
    """The assistant message of a reply, streamed (SSE text) or not (JSON)."""
    if status != 200:
        raise RuntimeError(f"gateway answered {status}: {str(body)[:300]}")
    if isinstance(body, dict):
        message: dict[str, Any] = body["choices"][0]["message"]
        return message
    content: list[str] = []
    reasoning: list[str] = []
    for event in sse_events(str(body)):
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or delta.get("reasoning") or "")
    return {"content": "".join(content), "reasoning_content": "".join(reasoning) or None}


def ask(stack: GatewayStack, key: str, pairs: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    bodies = [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": question(a, b)}],
            "max_tokens": 64,
            "stream": i % 2 == 1,
        }
        for i, (a, b) in enumerate(pairs)
    ]
    return [_message(s, b) for s, b in post_all(stack.url + CHAT, key, bodies)]


def _answer_ok(answer: str, a: int, b: int) -> bool:
    return answer.strip() == str(a + b)


def run(quick: bool, seed: int) -> tuple[list[Row], int, list[int]]:
    digits = 3 if quick else 4
    budgets = [300] if quick else [250, 500, 1000, 2000]
    rng = np.random.default_rng(seed)
    pool = problems(digits, max(budgets) + 500, rng)
    train, test = pool[: max(budgets)], pool[max(budgets) :]
    keys = {s: f"student-{s}" for s in SETTINGS}
    policy = {
        "routes": [{"path": CHAT, "kind": "openai-chat"}],
        "tiers": {
            "default": bench_tier(),
            "truncate": bench_tier(
                {"allow": {"reasoning": "truncate", "reasoning_max_chars": TRUNCATE_CHARS}}
            ),
        },
        "clients": tier_clients({keys["truncate"]: "truncate"}),
    }
    rows: list[Row] = []
    with GatewayStack(create_teacher(digits), policy) as stack:
        stack.set_level(keys["drop"], "watch")
        for setting in SETTINGS:
            replies = [parse_reply(m) for m in ask(stack, keys[setting], train)]
            traces = [trace(r, answer, digits) for r, answer in replies]
            row = Row(
                setting=setting,
                reasoning_chars=float(np.mean([len(r) for r, _ in replies])),
                answers_intact=float(
                    np.mean(
                        [
                            _answer_ok(ans, a, b)
                            for (_, ans), (a, b) in zip(replies, train, strict=True)
                        ]
                    )
                ),
            )
            for budget in budgets:
                student = LookupStudent(digits).fit(train[:budget], traces[:budget])
                guesses = student.predict(test)
                row.accuracy[budget] = float(
                    np.mean([g == a + b for g, (a, b) in zip(guesses, test, strict=True)])
                )
            rows.append(row)
    return rows, digits, budgets


def render(rows: list[Row], budgets: list[int]) -> str:
    headers = [
        "setting",
        "reasoning chars seen",
        "answers intact",
        *(f"student acc. @ {b} queries" for b in budgets),
    ]
    return report.table(
        headers,
        [
            [
                r.setting,
                round(r.reasoning_chars, 1),
                r.answers_intact,
                *(r.accuracy[b] for b in budgets),
            ]
            for r in rows
        ],
    )


NOTE = f"""
Task: a + b with up to {{digits}} digits; the teacher writes one line per column
(`7+8+0=15`) inside `<think>` and as `reasoning_content`, then the sum; half of the
replies are streamed (the `<think>` tag split across chunks). `keep`: level `allow`
(shipped default); `truncate`: `reasoning: truncate`, `reasoning_max_chars: {TRUNCATE_CHARS}`;
`drop`: level `watch`, where the shipped ladder drops reasoning. The student is a
generic lookup-rule learner (see `bench/extraction/arithmetic.py`); with the steps it
learns the column rule and generalises to unseen sums, with the answers alone it only
gets the low digits right. Accuracy is exact-match on held-out questions.
"""


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = report.parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    with report.one_thread():
        rows, digits, budgets = run(args.quick, args.seed)
    elapsed = time.perf_counter() - started
    text = render(rows, budgets)
    print(text)
    report.publish(
        args,
        argv,
        module=MODULE,
        name=NAME,
        title="Reasoning withholding vs a reasoning-distilled student",
        text=text,
        note=NOTE.format(digits=digits),
        elapsed_s=elapsed,
        results={"digits": digits, "budgets": budgets, "rows": [asdict(r) for r in rows]},
    )
    return rows


if __name__ == "__main__":
    main()
