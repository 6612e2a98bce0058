"""Log-probabilities at one token position: truncation, keyed bounded noise, rounding.

The contract of :func:`protect_position`: every value ends up at most ``noise`` nats (plus
half a rounding unit) from where it was, never above 0, and the order of the values is
kept (ties may form), so the entry that was on top stays on top and the sampled token
keeps its rank relative to it.

Noise design. A value moves by ``noise * u``, ``u`` in [-1, 1) read from BLAKE2b keyed
with a server secret, over (the noise bound, the request's conditioning content, the
tokens this choice has emitted so far, the token). Consequences:

* One context, one draw. Asking the same question again, asking for ``n`` samples of it,
  or streaming it instead returns the very same numbers, so averaging repeats gains
  nothing; a fresh draw needs a different context, which is a different distribution.
* The client id is deliberately *not* in the key: with it, a network of N accounts
  ("hydra") asking the same question would get N independent draws and average the noise
  down by sqrt(N). Without it every account sees the same numbers.
* The bound is in the key: with one shared ``u``, two levels' answers ``x + a*u`` and
  ``x + b*u`` would solve for ``x`` exactly.
* The key is secret, so the noise can be neither predicted nor subtracted.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

_SCALE = 2.0 / 2**64


def is_logprob(value: Any) -> bool:
    """A JSON number (not a boolean) that is finite."""
    return (type(value) is float and math.isfinite(value)) or type(value) is int


def noise_key(secret: bytes) -> bytes:
    """The BLAKE2b key of the logprob noise, derived from the gateway's secret."""
    return hashlib.blake2b(secret, digest_size=32, person=b"ad-logprob-noise").digest()


def context_root(key: bytes, noise: float, content: bytes) -> bytes:
    """The noise context of a request: its conditioning content under one noise bound."""
    return hashlib.blake2b(
        repr(float(noise)).encode() + b"\x00" + content, key=key, digest_size=16
    ).digest()


def advance(context: bytes, token: str) -> bytes:
    """The context after ``token`` was emitted."""
    return hashlib.blake2b(
        context + token.encode("utf-8", "surrogatepass"), digest_size=16
    ).digest()


def noise_unit(key: bytes, context: bytes, token: str) -> float:
    """A keyed pseudo-random number in [-1, 1) for ``token`` in ``context``."""
    digest = hashlib.blake2b(
        context + token.encode("utf-8", "surrogatepass"), key=key, digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") * _SCALE - 1.0


def keep_highest(values: Sequence[Any], k: int) -> list[int]:
    """Indices of the ``k`` highest values (non-numbers count as lowest; ties: first
    wins), in their original order."""
    ranked = sorted(
        range(len(values)), key=lambda i: -values[i] if is_logprob(values[i]) else math.inf
    )
    return sorted(ranked[:k])


def protect_position(
    tokens: Sequence[str],
    values: Sequence[float],
    *,
    decimals: int,
    noise: float = 0.0,
    key: bytes = b"",
    context: bytes = b"",
) -> list[float]:
    """New values for the (token, logprob) pairs of one position, in the same order.

    The same token always gets the same noise, so a sampled token that is also listed
    among the alternatives keeps one value. Among equal values the one listed first
    counts as higher.
    """
    if noise <= 0:
        return [round(min(v, 0.0), decimals) + 0.0 for v in values]
    units: dict[str, float] = {}
    first = {t: i for i, t in reversed(list(enumerate(tokens)))}
    out = [0.0] * len(values)
    ceiling = 0.0
    # Highest first; ties in listed order, with a token's repeats side by side, so they
    # come out as one value.
    for i in sorted(range(len(values)), key=lambda i: (-values[i], first[tokens[i]])):
        token = tokens[i]
        unit = units.get(token)
        if unit is None:
            unit = units[token] = noise_unit(key, context, token)
        # A running minimum keeps the order (a >= b gives a' >= b') and the bound: each
        # term it takes the minimum of is >= b - noise, since every earlier value is >= b.
        ceiling = min(values[i] + noise * unit, ceiling)
        out[i] = ceiling
    return [round(v, decimals) + 0.0 for v in out]
