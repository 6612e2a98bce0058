"""Load generator of the concurrency test: one OS process hammering one client's limits.

Run as ``python -m tests.gateway.ratelimit.hammer URL PREFIX SCENARIO ATTEMPTS SEED PROCS``.
All processes wait at a Redis barrier (INCR, then BLPOP), then fire every attempt at once,
each on its own connection, and print one JSON list of outcomes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

from redis.asyncio import Redis

from gateway.keys import KeySpace
from gateway.ratelimit.limiter import Charge, Limiter, Rate

CLIENT = "hammered"
SCENARIOS: dict[str, tuple[Rate, ...]] = {
    "requests": (Rate("requests", 5, 60),),
    "tokens": (Rate("tokens", 100, 60),),
    "both": (Rate("requests", 10, 60), Rate("tokens", 100, 60)),
}
MAX_COST = 30


def charges(ks: KeySpace, scenario: str, tokens: int) -> list[Charge]:
    return [
        Charge(rate, ks.limit(CLIENT, rate.name), tokens if rate.name == "tokens" else 1)
        for rate in SCENARIOS[scenario]
    ]


async def hammer(
    url: str, prefix: str, scenario: str, attempts: int, seed: int, procs: int
) -> list[dict[str, Any]]:
    ks = KeySpace(prefix)
    rng = random.Random(seed)
    costs = [rng.randint(1, MAX_COST) for _ in range(attempts)]
    client = Redis.from_url(url)
    try:
        limiter = Limiter(client)
        barrier = f"{prefix}:barrier:{scenario}"
        if await client.incr(barrier) == procs:  # the last to arrive lets everyone go
            await client.rpush(f"{barrier}:go", *["go"] * procs)
        await client.blpop([f"{barrier}:go"], timeout=30)

        async def attempt(cost: int) -> dict[str, Any]:
            a = await limiter.admit(level_key=ks.level(CLIENT), charges=charges(ks, scenario, cost))
            return {"cost": cost, "allowed": a.allowed, "reason": a.reason, "now_ms": a.now_ms}

        return list(await asyncio.gather(*(attempt(c) for c in costs)))
    finally:
        await client.aclose()


def main() -> None:
    url, prefix, scenario, attempts, seed, procs = sys.argv[1:7]
    outcomes = asyncio.run(hammer(url, prefix, scenario, int(attempts), int(seed), int(procs)))
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main()
