"""Request bodies: per-client parameter styles drawn from one shared, realistic pool.

Benign and attack clients draw their models, temperatures, ``max_tokens`` and streaming
from the same options (with different weights), so no parameter alone gives the label away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.traffic.client import COMPLETIONS_ROUTE, Draft

Rng = np.random.Generator
MODEL = "toy-lm"
THINK_MODEL = "toy-lm-think"
MAX_TOKENS = (None, 256, 512, 800, 1000, 1024, 1500, 2000, 2048)
TEMPERATURES = (None, 0.0, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0)
DEFAULT_CAP = 256  # what the default policy sends upstream when a request names none


@dataclass(frozen=True, slots=True)
class Style:
    """How one client's code (or UI) sets request parameters."""

    model: str
    temperature: float | None
    max_tokens: int | None
    stream: bool
    top_p: float | None = None
    seed: bool = False


def _weighted(rng: Rng, options: tuple[Any, ...], weights: tuple[float, ...] | None) -> Any:
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def style(
    rng: Rng,
    *,
    think: float = 0.15,
    stream: float = 0.3,
    temps: tuple[float, ...] | None = None,
    max_tokens: tuple[float, ...] | None = None,
    top_p: float = 0.1,
    seed: float = 0.05,
) -> Style:
    """A client's parameter style; ``temps``/``max_tokens`` weight TEMPERATURES/MAX_TOKENS."""
    return Style(
        model=THINK_MODEL if rng.random() < think else MODEL,
        temperature=_weighted(rng, TEMPERATURES, temps),
        max_tokens=_weighted(rng, MAX_TOKENS, max_tokens),
        stream=bool(rng.random() < stream),
        top_p=float(_weighted(rng, (0.9, 0.95, 1.0), None)) if rng.random() < top_p else None,
        seed=bool(rng.random() < seed),
    )


def chat(s: Style, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": s.model, "messages": messages}
    if s.temperature is not None:
        body["temperature"] = s.temperature
    if s.max_tokens is not None:
        body["max_tokens"] = s.max_tokens
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.stream:
        body["stream"] = True
    if s.seed:
        body["seed"] = 1234
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def answer_tokens(rng: Rng, body: dict[str, Any], median: float, sigma: float = 0.6) -> int:
    """Completion tokens of the answer: log-normal, capped by the request's max_tokens."""
    cap = body.get("max_tokens") or DEFAULT_CAP
    return int(min(cap, max(1, rng.lognormal(np.log(median), sigma))))


def draft(
    rng: Rng,
    t: float,
    body: dict[str, Any],
    median: float,
    sigma: float = 0.6,
    attack: bool = False,
) -> Draft:
    return Draft(t, body, answer_tokens(rng, body, median, sigma), attack)


def completion_draft(t: float, body: dict[str, Any], tokens: int, attack: bool = False) -> Draft:
    return Draft(t, body, tokens, attack, COMPLETIONS_ROUTE)
