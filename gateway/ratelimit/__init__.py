"""Rate limits, concurrency leases and enforcement levels in one Redis round trip."""

from gateway.ratelimit.levels import Level
from gateway.ratelimit.limiter import Admission, Limiter
from gateway.ratelimit.rates import Charge, LimitState, Rate

__all__ = ["Admission", "Charge", "Level", "LimitState", "Limiter", "Rate"]
