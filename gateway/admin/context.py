"""What the admin API and the dashboard share: the read model, the store and the token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.admin.review import Review
from gateway.keys import KeySpace
from gateway.policy import Policy


@dataclass(frozen=True, slots=True)
class AdminContext:
    """``token`` is ANTIDISTILL_ADMIN_TOKEN; admin routes exist only when it is set."""

    redis: aioredis.Redis
    keys: KeySpace
    policy: Callable[[], Policy]
    review: Review
    token: str

    @classmethod
    def create(
        cls,
        redis: aioredis.Redis,
        keys: KeySpace,
        policy: Callable[[], Policy],
        token: str,
    ) -> AdminContext:
        """A context whose :class:`Review` reads the same store under the same policy."""
        return cls(redis, keys, policy, Review(redis, keys, policy), token)

    @property
    def enabled(self) -> bool:
        """Whether admin routes are served (a non-empty token is configured)."""
        return bool(self.token)
