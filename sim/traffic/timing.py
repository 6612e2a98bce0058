"""Arrival processes: human sessions with think time, diurnal Poisson load, machine schedules."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Rng = np.random.Generator
Times = npt.NDArray[np.float64]
DAY = 86_400.0
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: time zero of every simulation

# Relative human activity by local hour (0 h .. 23 h): quiet nights, busy days and evenings.
_HOURLY = np.array(
    [0.12, 0.06, 0.04, 0.03, 0.03, 0.05, 0.15, 0.35, 0.6, 0.85, 1.0, 1.0,
     0.9, 0.95, 1.0, 1.0, 0.95, 0.85, 0.8, 0.85, 0.9, 0.8, 0.55, 0.3]
)  # fmt: skip


def diurnal(t: Times, tz_h: float, depth: float = 1.0) -> Times:
    """Activity weight in [0, 1] at simulated times ``t``: ``depth`` 0 is flat, 1 fully human."""
    hour = ((t / 3600.0 + tz_h) % 24.0).astype(np.int64)
    return (1.0 - depth) + depth * _HOURLY[hour]


def poisson(
    rng: Rng, rate_per_s: float, duration: float, tz_h: float = 0.0, depth: float = 0.0
) -> Times:
    """A Poisson process with a diurnal profile (thinning); peak rate ``rate_per_s``."""
    n = int(rng.poisson(rate_per_s * duration))
    t = np.sort(rng.uniform(0.0, duration, size=n))
    if depth > 0.0:
        t = t[rng.random(n) < diurnal(t, tz_h, depth)]
    return t


def session_starts(rng: Rng, n: int, duration: float, tz_h: float) -> Times:
    """``n`` session start times drawn from the human diurnal profile."""
    t = rng.uniform(0.0, duration, size=n * 8)
    t = t[rng.random(t.size) < diurnal(t, tz_h)][:n]
    return np.sort(t)


def think_times(rng: Rng, n: int, median_s: float = 30.0, sigma: float = 0.9) -> Times:
    """Human gaps between turns: log-normal, heavy-tailed."""
    return np.asarray(rng.lognormal(np.log(median_s), sigma, size=n), dtype=np.float64)


def machine_gaps(rng: Rng, n: int, interval_s: float, jitter: float = 0.05) -> Times:
    """Gaps of a scheduled client: a fixed interval with a little relative jitter."""
    gaps = interval_s * (1.0 + jitter * rng.standard_normal(n))
    return np.maximum(gaps, interval_s * 0.05)


def tz_offset(rng: Rng) -> float:
    """A client's local time zone (hours from UTC), weighted towards populous zones."""
    zones = np.array([-8, -7, -6, -5, -3, 0, 1, 2, 3, 5.5, 8, 9, 10])
    weights = np.array([8, 3, 5, 9, 4, 6, 9, 4, 3, 8, 9, 4, 2], dtype=np.float64)
    return float(zones[rng.choice(zones.size, p=weights / weights.sum())])
