"""What a client's decision events show: the parameters it asked for, its prompt samples,
the network metadata it came with. Pure functions over
:class:`gateway.store.events.DecisionEvent` (part of :mod:`gateway.admin.review`)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from detectors.schema import RequestFeatures
from gateway.store.events import DecisionEvent

METADATA = ("client_ip", "tls_fingerprint", "org_id")
PARAM_USES = (
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "n>1",
    "stream",
    "temperature=0",
    "seed",
    "tools",
    "system_prompt",
    "reasoning",
)
MEDIANS = ("max_tokens", "temperature", "prompt_tokens", "completion_tokens")
REASONING_PARAMS = ("reasoning_effort", "reasoning", "thinking", "include_reasoning")


@dataclass(frozen=True, slots=True)
class ParamProfile:
    """What the client's requests asked for, over the events read (``requests`` of them).

    ``shares`` maps a parameter use (``logprobs``, ``top_logprobs``, ``logit_bias``, ``n>1``,
    ``stream``, ``temperature=0``, ``reasoning``, ``tools``, ``system_prompt`` …) to the
    fraction of requests using it; ``medians`` holds medians of numeric ones (``max_tokens``,
    ``temperature``, ``prompt_tokens``, ``completion_tokens``); ``routes`` counts requests
    per route path.
    """

    requests: int
    shares: dict[str, float]
    medians: dict[str, float]
    routes: dict[str, int]


def param_profile(events: Sequence[DecisionEvent]) -> ParamProfile:
    """What ``events`` asked for: shares of parameter uses, medians, routes."""
    counts = dict.fromkeys(PARAM_USES, 0)
    numbers: dict[str, list[float]] = {name: [] for name in MEDIANS}
    routes: Counter[str] = Counter()
    for event in events:
        for name, used in _uses(event).items():
            counts[name] += int(used)
        params = event.params
        max_tokens = json_number(params.get("max_tokens", params.get("max_completion_tokens")))
        if max_tokens is not None:
            numbers["max_tokens"].append(max_tokens)
        temperature = json_number(params.get("temperature"))
        if temperature is not None:
            numbers["temperature"].append(temperature)
        if event.prompt_tokens is not None:
            numbers["prompt_tokens"].append(float(event.prompt_tokens))
            numbers["completion_tokens"].append(float(event.completion_tokens))
        routes[event.route] += 1
    n = len(events)
    return ParamProfile(
        requests=n,
        shares={name: (c / n if n else 0.0) for name, c in counts.items()},
        medians={name: float(statistics.median(v)) for name, v in numbers.items() if v},
        routes=dict(routes.most_common()),
    )


def _uses(event: DecisionEvent) -> dict[str, bool]:
    params = event.params
    features = _features(event.features)
    temperature = json_number(params.get("temperature"))
    return {
        "logprobs": _on(params.get("logprobs")),
        "top_logprobs": (json_number(params.get("top_logprobs")) or 0) > 0,
        "logit_bias": (json_number(params.get("logit_bias_tokens")) or 0) > 0
        or bool(params.get("logit_bias")),
        "n>1": (json_number(params.get("n")) or 1) > 1,
        "stream": event.stream or params.get("stream") is True,
        "temperature=0": temperature == 0.0,
        "seed": bool(params.get("seed")),
        "tools": bool(params.get("tools")),
        "system_prompt": features.system_chars > 0,
        "reasoning": features.reasoning_marker or any(params.get(k) for k in REASONING_PARAMS),
    }


def _features(text: str) -> RequestFeatures:
    try:
        return RequestFeatures.from_json(text)
    except (ValueError, TypeError, AttributeError):
        return RequestFeatures()


def samples(events: Sequence[DecisionEvent], most: int) -> tuple[str, ...]:
    """Distinct non-empty prompt samples of ``events`` (oldest first), newest first, at
    most ``most``."""
    out: list[str] = []
    for event in reversed(events):
        sample = event.prompt_sample
        if sample and sample not in out:
            out.append(sample)
            if len(out) >= most:
                break
    return tuple(out)


def metadata(events: Sequence[DecisionEvent], top: int) -> dict[str, tuple[str, ...]]:
    """The ``top`` most frequent distinct non-empty values of each field in ``METADATA``."""
    out = {}
    for name in METADATA:
        counts = Counter(v for v in (getattr(e, name) for e in events) if v)
        out[name] = tuple(v for v, _ in counts.most_common(top))
    return out


def _on(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    number = json_number(value)
    return number is not None and number > 0


def json_number(value: Any) -> float | None:
    """A JSON number as float (bools and anything else: None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
