"""What a request is charged against: rates, charges and the state reported back."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """`limit` units per `period_s` seconds, GCRA with a burst capacity of `burst` units.

    `burst` defaults to `limit`: an idle client may spend a whole period's allowance at once.
    """

    name: str  # e.g. "requests", "tokens", "tokens_per_day"; used in headers and reason codes
    limit: float
    period_s: float
    burst: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.limit) and self.limit > 0):
            raise ValueError(f"rate {self.name!r}: limit must be > 0, got {self.limit}")
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(f"rate {self.name!r}: period_s must be > 0, got {self.period_s}")
        if self.burst is not None and not (math.isfinite(self.burst) and self.burst > 0):
            raise ValueError(f"rate {self.name!r}: burst must be > 0, got {self.burst}")

    @property
    def capacity(self) -> float:
        """The burst in units (`burst`, or `limit` when unset)."""
        return self.limit if self.burst is None else self.burst

    @property
    def period_ms(self) -> float:
        return self.period_s * 1000.0


@dataclass(frozen=True, slots=True)
class Charge:
    """`cost` units of `rate`, reserved on the GCRA key `key`."""

    rate: Rate
    key: str  # built by gateway.keys.KeySpace.limit / scoped_limit
    cost: float  # 1 for requests; estimated tokens for token limits

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cost) and self.cost >= 0):
            raise ValueError(f"charge on {self.rate.name!r}: cost must be >= 0, got {self.cost}")


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit as the client sees it after the admission decision."""

    name: str
    limit: float  # effective limit (after the throttle factor)
    remaining: float  # units left now (after this request's reservation if admitted), >= 0
    reset_s: float  # seconds until the bucket is full again
