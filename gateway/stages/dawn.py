"""Response stage: DAWN provenance marks on probability endpoints.

Runs before ProbabilityGuard, whose rounding, top-k, labels-only and reverse-sigmoid modes
all keep the argmax, so the keyed label survives them. Marks are recorded in
``ex.state["provenance_marks"]`` for the decision-log writer to persist (stages do no I/O).
In shadow mode a copy is marked: the modification is logged as ``shadow:dawn_marked:<n>``,
the answer goes out unchanged and nothing is recorded.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway.exchange import Exchange
from gateway.policy import RouteKind
from gateway.provenance.dawn import mark_response

MARKS_STATE = "provenance_marks"


class DawnMark:
    name = "dawn"

    def __init__(self, secret: bytes = b"") -> None:
        if len(secret) < 16:
            raise ValueError("DawnMark needs the provenance key (at least 16 bytes)")
        self._secret = secret

    def on_json(self, ex: Exchange, body: dict[str, Any]) -> bool:
        if ex.route.kind is not RouteKind.PROBABILITIES or ex.client is None:
            return False
        fraction = ex.controls.probabilities.dawn_fraction if ex.controls else None
        if not fraction:
            return False
        pointer = ex.route.probabilities_pointer
        if not pointer:
            return False
        shadow = ex.policy.shadow
        work = copy.deepcopy(body) if shadow else body
        marks = mark_response(self._secret, ex.client.id, ex.body, work, pointer, fraction)
        if not marks:
            return False
        if shadow:
            ex.modifications.append(f"shadow:dawn_marked:{len(marks)}")
            return False
        for mark in marks:
            mark["route"] = ex.route.path
            mark["t"] = ex.received_at_ms
        ex.state.setdefault(MARKS_STATE, []).extend(marks)
        ex.modifications.append(f"dawn_marked:{len(marks)}")
        return True

    def on_event(self, ex: Exchange, event: dict[str, Any]) -> bool:
        return False
