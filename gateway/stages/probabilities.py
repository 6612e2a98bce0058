"""Response stage: defences for probability endpoints (route kind ``probabilities``).

The vectors sit at the route's ``probabilities_pointer``: one vector (a list of numbers)
or a batch (a list of them). Per ``ex.controls.probabilities.mode`` each row is rounded,
cut to its top k, reduced to a one-hot label, or perturbed by reverse sigmoid, always
keeping its argmax (:mod:`gateway.protect.probabilities`). A row of one number is read as
a binary output ``[1 - p, p]``. Rows that are not probability vectors (wrong types, values
outside [0, 1], nothing positive) and documents without the pointer pass unchanged.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from gateway.controls import ProbabilityControls
from gateway.exchange import Exchange
from gateway.policy import RouteKind
from gateway.protect.pointer import get, locate, put
from gateway.protect.probabilities import protect

_SLACK = 1e-6  # upstream float noise tolerated outside [0, 1]


class ProbabilityGuard:
    name = "probabilities"

    def __init__(self, secret: bytes = b"") -> None:
        self._secret = secret

    def on_json(self, ex: Exchange, body: dict[str, Any]) -> bool:
        return self._guard(ex, body)

    def on_event(self, ex: Exchange, event: dict[str, Any]) -> bool:
        return self._guard(ex, event)

    def _guard(self, ex: Exchange, doc: dict[str, Any]) -> bool:
        controls = ex.controls
        pointer = ex.route.probabilities_pointer
        if controls is None or ex.route.kind is not RouteKind.PROBABILITIES or not pointer:
            return False
        settings = controls.probabilities
        if settings.mode in (None, "full"):
            return False
        shadow = ex.policy.shadow
        work = copy.deepcopy(doc) if shadow else doc
        location = locate(work, pointer)
        if location is None:
            return False
        value = get(location)
        if not isinstance(value, list) or not value:
            return False
        single = all(_is_number(x) for x in value)
        rows: list[Any] = [value] if single else list(value)
        if not _protect_rows(rows, settings):
            return False
        put(location, rows[0] if single else rows)
        if self.name not in ex.state:
            ex.state[self.name] = True
            ex.modifications.append(("shadow:" if shadow else "") + _describe(settings))
        return not shadow


def _protect_rows(rows: list[Any], settings: ProbabilityControls) -> bool:
    """Protect the valid rows in place, grouped by length; False if none was valid."""
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        if _is_vector(row):
            groups.setdefault(len(row), []).append(i)
    for width, members in groups.items():
        p = np.array([rows[i] for i in members], dtype=np.float64).clip(0.0, 1.0)
        if width == 1:
            p = np.concatenate([1.0 - p, p], axis=1)
        out = protect(
            p,
            settings.mode or "full",
            decimals=settings.decimals if settings.decimals is not None else 8,
            k=settings.top_k or 1,
            beta=settings.reverse_sigmoid_beta or 0.0,
            gamma=settings.reverse_sigmoid_gamma or 1.0,
        )
        if width == 1:
            out = out[:, 1:]
        for i, new in zip(members, out.tolist(), strict=True):
            rows[i] = new
    return bool(groups)


def _is_number(x: Any) -> bool:
    return (type(x) is float and math.isfinite(x)) or type(x) is int


def _is_vector(row: Any) -> bool:
    if not isinstance(row, list) or not row:
        return False
    total = 0.0
    for x in row:
        if not _is_number(x) or not -_SLACK <= x <= 1.0 + _SLACK:
            return False
        total += x
    return total > 0.0


def _describe(settings: ProbabilityControls) -> str:
    mode = settings.mode
    if mode == "labels":
        return "probabilities_labels"
    if mode == "top_k":
        return f"probabilities_top_k:{settings.top_k}:{settings.decimals}"
    if mode == "reverse_sigmoid":
        return (
            f"probabilities_reverse_sigmoid:{settings.reverse_sigmoid_beta:g}:"
            f"{settings.reverse_sigmoid_gamma:g}:{settings.decimals}"
        )
    return f"probabilities_rounded:{settings.decimals}"
