"""DAWN verification of stolen digits models, and false accusations of innocent ones.

Each thief that stole under DAWN is tested on its own client's marks with
``gateway.provenance.dawn.evidence`` (what ``antidistill provenance verify`` runs); so are
models that never saw those marks: trained independently on the true labels, or stolen by
other clients without marks.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from bench.extraction import report
from bench.extraction.digits import Data, GatewayOracle, independent_model, predict
from bench.extraction.harness import GatewayStack, client_id
from gateway.provenance.dawn import Mark, distinct_dawn_marks, evidence, load_marks
from gateway.provenance.stats import format_p
from sim.toy_classifier import ToyClassifier

ALPHA = 0.001  # the verdict threshold of `antidistill provenance verify`


@dataclass
class DawnCheck:
    thief: str  # "<attack> @ <budget>"
    marks: int
    deviations: int
    matches: int
    log10_p: float
    source: str  # "gateway record" (the client's provenance list in Redis) or "observed"
    observed: int  # answers whose argmax was not the upstream's
    # the same marks against models that never saw them: (name, log10 p)
    independent: list[tuple[str, float]] = field(default_factory=list)


def marks_of(stack: GatewayStack, key: str) -> list[Mark]:
    """The client's distinct DAWN marks, once the decision-log writer (which stores them
    after the responses, in the background) has caught up: two equal reads in a row."""

    async def read() -> list[Mark]:
        client = aioredis.Redis.from_url(stack.redis_url)
        try:
            return await load_marks(client, stack.keys, client_id(key))
        finally:
            await client.aclose()

    marks = asyncio.run(read())
    while True:
        time.sleep(0.3)
        again = asyncio.run(read())
        if len(again) == len(marks):
            return distinct_dawn_marks(again)
        marks = again


def log10_p(marks: list[Mark], model: Any) -> tuple[int, int, float]:
    if not marks:
        return 0, 0, 0.0
    answers = predict(model, np.asarray([m["input"] for m in marks])).tolist()
    result = evidence(marks, answers)
    return result.deviations, result.matches, result.log_p / math.log(10)


def dawn_checks(
    stack: GatewayStack,
    teacher: ToyClassifier,
    data: Data,
    epochs: int,
    thieves: dict[str, tuple[str, Any, GatewayOracle]],
    unmarked: dict[str, Any],
) -> list[DawnCheck]:
    """Each thief (by name: its API key, stolen model and oracle) tested on its own client's
    marks, and so are three independently trained models and the ``unmarked`` ones. The
    marks are the gateway's record of the client; where the gateway recorded none, the
    answers the thief saw that differ from the upstream's (the same marks)."""
    innocents: dict[str, Any] = {}
    checks: list[DawnCheck] = []
    for name, (key, model, oracle) in thieves.items():
        recorded = marks_of(stack, key)
        observed = distinct_dawn_marks(oracle.deviations(teacher))
        marks = recorded or observed
        if marks and not innocents:
            innocents = {
                f"independent #{s}": independent_model(data, 1000 + s, epochs) for s in range(3)
            }
            innocents.update(unmarked)
        deviations, matches, log_p = log10_p(marks, model)
        check = DawnCheck(
            name,
            len(marks),
            deviations,
            matches,
            log_p,
            "gateway record" if recorded else "observed",
            len(observed),
        )
        check.independent = [(n, log10_p(marks, m)[2]) for n, m in innocents.items()]
        checks.append(check)
    return checks


def render_dawn(checks: list[DawnCheck]) -> str:
    headers = [
        "stolen model",
        "marks (source)",
        "deviate",
        "match",
        "p (stolen)",
        "min p, models that never saw the marks",
        f"false accusations (p < {ALPHA:g})",
    ]
    rows: list[list[report.Cell]] = []
    for c in checks:
        innocent = [p for _, p in c.independent]
        rows.append(
            [
                c.thief,
                f"{c.marks} ({c.source})",
                c.deviations,
                c.matches,
                format_p(c.log10_p * math.log(10)) if c.marks else None,
                format_p(min(innocent) * math.log(10)) if c.marks and innocent else None,
                f"{sum(p < math.log10(ALPHA) for p in innocent)} / {len(innocent)}",
            ]
        )
    return report.table(headers, rows)
