"""DAWN-style provenance marks on probability endpoints (Szyller et al. 2019).

For a keyed, tiny fraction of inputs the gateway answers with a keyed wrong label: the
probability vector's top entry and the entry of label ``L`` swap places, so ``L`` becomes
the argmax. Which inputs, and which ``L``, follow from HMAC(provenance key, client id ‖
input), so one client gets the same answer every time it asks (re-querying cannot average
the mark away) and the gateway keeps no state to decide. Each mark is recorded; a model
trained on the client's answers tends to reproduce the marked labels, an independent
model agrees with them only by chance (:func:`evidence`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import redis.asyncio as aioredis

from gateway.keys import KeySpace
from gateway.protect.pointer import get, locate
from gateway.provenance.stats import log_binomial_sf, log_poisson_binomial_sf

INPUTS_POINTER = "/inputs"
"""Where the request's input vectors are (one vector, or a list of them)."""
LABELS_POINTER = "/labels"
"""A list of predicted labels beside the probabilities, kept consistent if present."""
DEFAULT_PROBABILITIES_POINTER = "/probabilities"
"""The toy classifier's; routes name theirs in ``probabilities_pointer``."""
MAX_MARKS = 10_000
"""Marks kept per client (the newest); a few hundred already prove a copy."""

Mark = dict[str, Any]


def pointer_get(doc: Any, pointer: str) -> Any:
    """The value at a JSON pointer (RFC 6901), or None if there is none."""
    location = locate(doc, pointer)
    return get(location) if location is not None else None


def _canonical(array: npt.NDArray[np.float64]) -> bytes:
    shape = ",".join(str(d) for d in array.shape).encode()
    return shape + b":" + array.tobytes()


def canonical_input(vector: Any) -> bytes | None:
    """The bytes an input is keyed by: float64 little-endian values after its shape.

    ``16`` and ``16.0`` key alike, as do ``-0.0`` and ``0.0``. None if ``vector`` is not a
    non-empty, finite, rectangular array of numbers.
    """
    if not isinstance(vector, list) or not vector:
        return None
    try:
        array = np.asarray(vector, dtype="<f8") + 0.0
    except (TypeError, ValueError):
        return None
    if not np.all(np.isfinite(array)):
        return None
    return _canonical(array)


def _canonical_batch(vectors: list[Any]) -> list[bytes | None]:
    """:func:`canonical_input` of each vector; one array conversion when they are alike."""
    try:
        array = np.asarray(vectors, dtype="<f8") + 0.0
    except (TypeError, ValueError):
        return [canonical_input(v) for v in vectors]
    if array.ndim < 2 or array.shape[1] == 0:
        return [canonical_input(v) for v in vectors]
    return [_canonical(row) if np.isfinite(row).all() else None for row in array]


def _digest(key: bytes, client_id: str, canonical: bytes) -> bytes:
    return hmac.new(
        key, b"dawn\x00" + client_id.encode() + b"\x00" + canonical, hashlib.sha256
    ).digest()


def _selected(digest: bytes, fraction: float) -> bool:
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def _label(digest: bytes, true_label: int, classes: int) -> int:
    other = int.from_bytes(digest[8:16], "big") % (classes - 1)
    return other if other < true_label else other + 1


def keyed_mark(
    key: bytes, client_id: str, canonical: bytes, true_label: int, classes: int, fraction: float
) -> int | None:
    """The keyed label ``L != true_label`` if this input is marked for this client, else None.

    Whether an input is marked depends on the key, client and input only, never on the answer.
    """
    digest = _digest(key, client_id, canonical)
    if classes < 2 or not _selected(digest, fraction):
        return None
    return _label(digest, true_label, classes)


def _probability_vector(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
    )


def _pairs(inputs: Any, probabilities: Any) -> list[tuple[Any, list[Any]]]:
    """(input, probability vector) pairs of a single answer or of a batch."""
    if _probability_vector(probabilities):
        return [(inputs, probabilities)]
    if (
        isinstance(probabilities, list)
        and isinstance(inputs, list)
        and len(inputs) == len(probabilities)
        and all(isinstance(x, list) for x in inputs)
    ):
        return [(x, p) for x, p in zip(inputs, probabilities, strict=True)]
    return []


def mark_response(
    key: bytes,
    client_id: str,
    request: dict[str, Any] | None,
    response: dict[str, Any],
    probabilities_pointer: str,
    fraction: float,
) -> list[Mark]:
    """Marks ``response`` in place; returns a record of each mark made.

    Only unambiguous answers are marked: the vector's top value must be unique.
    """
    if fraction <= 0 or request is None:
        return []
    inputs = pointer_get(request, INPUTS_POINTER)
    probabilities = pointer_get(response, probabilities_pointer)
    pairs = _pairs(inputs, probabilities)
    labels = pointer_get(response, LABELS_POINTER)
    canonicals = _canonical_batch([vector for vector, _ in pairs])
    marks: list[Mark] = []
    for index, ((vector, probs), canonical) in enumerate(zip(pairs, canonicals, strict=True)):
        if canonical is None:
            continue
        digest = _digest(key, client_id, canonical)
        if not _selected(digest, fraction) or not _probability_vector(probs):
            continue
        top = max(range(len(probs)), key=probs.__getitem__)
        if sum(1 for v in probs if v == probs[top]) > 1:
            continue
        label = _label(digest, top, len(probs))
        probs[top], probs[label] = probs[label], probs[top]
        if isinstance(labels, list) and len(labels) == len(pairs) and labels[index] == top:
            labels[index] = label
        marks.append(
            {
                "kind": "dawn",
                "input": np.asarray(vector, dtype="<f8").tolist(),
                "label": label,
                "true_label": top,
                "classes": len(probs),
            }
        )
    return marks


async def store_marks(
    redis: aioredis.Redis,
    keys: KeySpace,
    client_id: str,
    marks: Sequence[Mark],
    cap: int = MAX_MARKS,
) -> None:
    """Appends ``marks`` to the client's provenance list, keeping the newest ``cap``."""
    if not marks:
        return
    key = keys.provenance(client_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(key, *(orjson.dumps(mark) for mark in marks))
        pipe.ltrim(key, -cap, -1)
        await pipe.execute()


async def load_marks(redis: aioredis.Redis, keys: KeySpace, client_id: str) -> list[Mark]:
    """The client's recorded marks of every kind, oldest first."""
    rows = await redis.lrange(keys.provenance(client_id), 0, -1)
    return [orjson.loads(row) for row in rows]


def distinct_dawn_marks(marks: Iterable[Mark]) -> list[Mark]:
    """The DAWN marks, one per distinct input (a re-asked input is the same trial)."""
    seen: set[bytes] = set()
    out: list[Mark] = []
    for mark in marks:
        if mark.get("kind") != "dawn":
            continue
        canonical = canonical_input(mark.get("input"))
        if canonical is None or canonical in seen:
            continue
        seen.add(canonical)
        out.append(mark)
    return out


@dataclass(frozen=True, slots=True)
class DawnEvidence:
    """How a suspect model answered the marked inputs."""

    marks: int
    deviations: int
    matches: int
    log_p: float

    @property
    def p_value(self) -> float:
        return math.exp(self.log_p)


def evidence(marks: Sequence[Mark], answers: Sequence[int]) -> DawnEvidence:
    """Tests whether a suspect answering ``answers`` on the marks' inputs learned from them.

    Null hypothesis: the suspect was not trained on this client's marked answers, so its
    answers are independent of the client's key. The keyed label ``L`` of each distinct
    input is then uniform over the ``K - 1`` labels other than our model's answer ``y``
    and independent across inputs (HMAC as a pseudo-random function), whatever the suspect
    does. So where the suspect answers ``y`` it cannot match ``L``, and where it answers
    anything else it matches with probability exactly ``1 / (K - 1)``: the number of
    matches is Binomial(deviations, 1/(K-1)) given the suspect's answers. This holds for
    any suspect, however good or biased, because the randomness is in our key, not in
    the suspect; no base rate of the suspect has to be estimated. It is conservative in
    the right direction: a suspect that never deviates from ``y`` gets p = 1, not a
    false accusation. ``marks`` must be distinct inputs (:func:`distinct_dawn_marks`).
    """
    if len(marks) != len(answers):
        raise ValueError("one answer per mark is needed")
    chances: list[float] = []
    matches = 0
    for mark, answer in zip(marks, answers, strict=True):
        if answer == mark["true_label"]:
            continue
        chances.append(1.0 / (int(mark["classes"]) - 1))
        matches += answer == mark["label"]
    if chances and all(c == chances[0] for c in chances):
        log_p = log_binomial_sf(matches, len(chances), chances[0])
    else:
        log_p = log_poisson_binomial_sf(matches, chances)
    return DawnEvidence(marks=len(marks), deviations=len(chances), matches=matches, log_p=log_p)
