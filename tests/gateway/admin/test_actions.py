"""Operator actions: validation, what each writes to Redis, and its audit entry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from detectors.ladder import decide
from gateway.admin import audit
from gateway.admin.actions import Action, ActionError, clean_actor, perform, reason_code
from gateway.keys import KeySpace
from gateway.policy import DetectorThresholds
from gateway.ratelimit.limiter import Limiter
from tests.gateway.admin.seed import HARVESTER, drop


@pytest.fixture
async def aredis(redis_url: str, keyspace: KeySpace) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await drop(client, keyspace)
    await client.aclose()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (Action("promote", "x"), "unknown action"),
        (Action("block", "   "), "reason is required"),
        (Action("block", "x" * 501), "longer than 500"),
        (Action("set_level", "x"), "unknown level"),
        (Action("set_level", "x", level="banish"), "unknown level"),
        (Action("block", "x", level="watch"), "takes no level"),
        (Action("reset", "x", level="allow"), "takes no level"),
        (Action("label", "x"), "unknown label"),
        (Action("label", "x", label="evil"), "unknown label"),
        (Action("block", "x", label="benign"), "takes no label"),
        (Action("allowlist", "x", ttl_s=60), "takes no ttl"),
        (Action("reset", "x", ttl_s=60), "takes no ttl"),
        (Action("block", "x", ttl_s=0), "positive duration"),
        (Action("block", "x", ttl_s=float("inf")), "positive duration"),
    ],
)
def test_invalid_actions_are_refused(action: Action, message: str) -> None:
    with pytest.raises(ActionError, match=message):
        action.validated()


def test_validated_fills_in_the_level_and_strips_the_reason() -> None:
    assert Action("block", "  scraping \n").validated() == Action("block", "scraping", "block")
    assert Action("allowlist", "partner").validated().level == "allow"
    assert Action("reset", "ok").validated().level is None
    assert Action("set_level", "x", level="degrade", ttl_s=60).validated().ttl_s == 60


def test_reason_code_and_actor() -> None:
    assert reason_code("Scraping via <script> API, see ticket #12") == (
        "operator:scraping_via_script_api_see_ticket_12"
    )
    assert reason_code("x" * 100) == "operator:" + "x" * 64
    assert reason_code("!!!") == "operator:_"
    assert clean_actor("  alice ") == "alice"
    assert clean_actor(None) == clean_actor("") == "admin"
    with pytest.raises(ActionError):
        clean_actor("eve\nactor=detector")
    with pytest.raises(ActionError):
        clean_actor("x" * 65)


async def test_set_level_writes_an_operator_level_and_audits_it(
    aredis: aioredis.Redis, keyspace: KeySpace
) -> None:
    reason = "Harvesting logprobs, ticket #7"
    entry = await perform(
        aredis,
        keyspace,
        HARVESTER,
        Action("set_level", reason, level="throttle", ttl_s=3600),
        "alice",
    )
    level = await Limiter(aredis).get_level(keyspace.level(HARVESTER))
    assert level.level == "throttle"
    assert level.reasons == ("operator:harvesting_logprobs_ticket_7",)
    secs, _ = await aredis.time()
    assert level.expires_at_ms is not None
    assert abs(level.expires_at_ms - (secs * 1000 + 3_600_000)) < 5_000
    assert (entry.action, entry.actor, entry.client) == ("set_level", "alice", HARVESTER)
    assert (entry.level, entry.previous_level, entry.reason) == ("throttle", "allow", reason)
    assert entry.id and entry.ts_ms > 0
    assert await audit.read(aredis, keyspace, client=HARVESTER) == [entry]


async def test_block_then_reset(aredis: aioredis.Redis, keyspace: KeySpace) -> None:
    limiter = Limiter(aredis)
    await limiter.set_level(keyspace.level(HARVESTER), "watch", ["detector:0.6"], 600)
    await aredis.hset(keyspace.shadow_levels, HARVESTER, orjson.dumps({"level": "degrade"}))
    blocked = await perform(aredis, keyspace, HARVESTER, Action("block", "abuse"), "bob")
    level = await limiter.get_level(keyspace.level(HARVESTER))
    assert (level.level, level.expires_at_ms) == ("block", None)
    assert await aredis.ttl(keyspace.level(HARVESTER)) == -1  # no expiry
    assert (blocked.level, blocked.previous_level) == ("block", "watch")

    reset = await perform(aredis, keyspace, HARVESTER, Action("reset", "false positive"), "")
    assert await aredis.exists(keyspace.level(HARVESTER)) == 0
    assert await aredis.hget(keyspace.shadow_levels, HARVESTER) is None
    assert (await limiter.get_level(keyspace.level(HARVESTER))).level == "allow"
    assert (reset.actor, reset.level, reset.previous_level) == ("admin", "allow", "block")
    entries = await audit.read(aredis, keyspace, client=HARVESTER)
    assert [e.action for e in entries] == ["reset", "block"]


async def test_allowlist_is_a_pardon_the_detector_keeps(
    aredis: aioredis.Redis, keyspace: KeySpace
) -> None:
    entry = await perform(
        aredis, keyspace, HARVESTER, Action("allowlist", "known partner"), "carol"
    )
    level = await Limiter(aredis).get_level(keyspace.level(HARVESTER))
    assert (level.level, level.reasons, level.expires_at_ms) == (
        "allow",
        ("operator:known_partner",),
        None,
    )
    assert await aredis.exists(keyspace.level(HARVESTER)) == 1
    verdict = decide(
        level, 0.99, ("detector:0.99",), thresholds=DetectorThresholds(), hysteresis=0.1
    )
    assert (verdict.level, verdict.write) == ("allow", False)
    assert (entry.action, entry.level) == ("allowlist", "allow")


async def test_label_writes_the_labels_hash(aredis: aioredis.Redis, keyspace: KeySpace) -> None:
    entry = await perform(
        aredis, keyspace, HARVESTER, Action("label", "confirmed", label="harvesting"), "dan"
    )
    assert await aredis.hget(keyspace.labels, HARVESTER) == b"harvesting"
    assert await aredis.exists(keyspace.level(HARVESTER)) == 0  # no level change
    assert (entry.label, entry.level, entry.previous_level) == ("harvesting", "", "allow")
    await perform(aredis, keyspace, HARVESTER, Action("label", "oops", label="benign"), "dan")
    assert await aredis.hget(keyspace.labels, HARVESTER) == b"benign"


async def test_invalid_action_writes_nothing(aredis: aioredis.Redis, keyspace: KeySpace) -> None:
    with pytest.raises(ActionError):
        await perform(aredis, keyspace, HARVESTER, Action("set_level", "x", level="nope"), "eve")
    with pytest.raises(ActionError):
        await perform(aredis, keyspace, HARVESTER, Action("block", "x"), "e\x00ve")
    assert await aredis.exists(keyspace.level(HARVESTER), keyspace.audit) == 0
