"""One-sided tail probabilities for the provenance tests, in log space.

Evidence of theft can be overwhelming (p far below 1e-300), so tails are computed as
logarithms and never underflow to a misleading 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

EXACT_MAX_TRIALS = 20_000


def _logsumexp(values: npt.NDArray[np.float64]) -> float:
    if values.size == 0:
        return -math.inf
    top = float(np.max(values))
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(np.sum(np.exp(values - top))))


def log_binomial_sf(k: int, n: int, p: float) -> float:
    """log P[X >= k] for X ~ Binomial(n, p); exact."""
    if k <= 0:
        return 0.0
    if k > n or p <= 0:
        return -math.inf
    if p >= 1:
        return 0.0
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    terms = np.array(
        [
            log_n - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q
            for j in range(k, n + 1)
        ]
    )
    return min(0.0, _logsumexp(terms))


def _log_normal_sf(k: int, mean: float, variance: float) -> float:
    if variance <= 0:
        return 0.0 if k <= mean else -math.inf
    z = (k - 0.5 - mean) / math.sqrt(variance)
    tail = 0.5 * math.erfc(z / math.sqrt(2))
    if tail > 0:
        return min(0.0, math.log(tail))
    return -z * z / 2 - math.log(z) - 0.5 * math.log(2 * math.pi)


def log_poisson_binomial_sf(k: int, probabilities: Sequence[float]) -> float:
    """log P[S >= k] for S a sum of independent Bernoulli(p_i) trials.

    Exact (dynamic programming over the count) up to ``EXACT_MAX_TRIALS`` trials; beyond
    that the normal approximation with continuity correction, which is accurate there
    except far in the tail, where the evidence is overwhelming either way.
    """
    n = len(probabilities)
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    ps = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    if n > EXACT_MAX_TRIALS:
        return _log_normal_sf(k, float(ps.sum()), float((ps * (1 - ps)).sum()))
    with np.errstate(divide="ignore"):
        log_p, log_q = np.log(ps), np.log1p(-ps)
    dist = np.full(n + 1, -np.inf)
    dist[0] = 0.0
    none = np.array([-np.inf])
    for i in range(n):
        stay = np.concatenate((dist[: i + 1] + log_q[i], none))
        step = np.concatenate((none, dist[: i + 1] + log_p[i]))
        dist[: i + 2] = np.logaddexp(stay, step)
    return min(0.0, _logsumexp(dist[k:]))


def format_p(log_p: float) -> str:
    """A p-value for people: ``0.42``, ``3.1e-12``, or ``10^-412.3`` below 1e-300."""
    if log_p == -math.inf:
        return "0"
    if log_p >= math.log(1e-300):
        return f"{math.exp(log_p):.3g}"
    return f"10^{log_p / math.log(10):.1f}"
