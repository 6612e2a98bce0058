"""The review read model against a real Redis, seeded the way the gateway writes."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from detectors.schema import RequestFeatures
from gateway.admin import review as review_module
from gateway.admin.actions import Action, perform
from gateway.admin.review import ClientSummary, Review, ScorePoint, to_jsonable
from gateway.keys import KeySpace
from gateway.policy import ClientOverride, Policy
from gateway.ratelimit.limiter import Limiter
from tests.gateway.admin.seed import (
    BENIGN,
    BLOCKED,
    HARVESTER,
    LINKED,
    NEVER_SEEN,
    campaign,
    drop,
    event,
    record,
    scored,
)

NAME = "<script>alert('name')</script>"
NOW = int(time.time() * 1000)
DAY_AGO = NOW - 86_400_000


@pytest.fixture
async def aredis(redis_url: str, keyspace: KeySpace) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await drop(client, keyspace)
    await client.aclose()


def _policy(shadow: bool = False, keep_samples: bool = True) -> Policy:
    return Policy.model_validate(
        {
            "shadow": shadow,
            "clients": {HARVESTER: {"name": NAME, "tier": "default"}},
            "store": {"retention": {"keep_prompt_samples": keep_samples}},
        }
    )


@pytest.fixture
async def seeded(aredis: aioredis.Redis, keyspace: KeySpace, tmp_path: Path) -> Review:
    """A harvester (scored, throttled, in a campaign), a benign client seen a day ago, an
    operator-blocked client never scored, and a campaign member."""
    harvester_features = RequestFeatures(system_chars=12, reasoning_marker=True).to_json()
    events = [
        event(
            HARVESTER,
            NOW - 10_000 + i,
            params={
                "logprobs": True,
                "top_logprobs": 5,
                "temperature": 0,
                "n": 2,
                "max_tokens": 256 if i % 2 else 512,
            },
            stream=i % 4 == 0,
            client_ip=f"10.0.0.{i % 3}",
            tls_fingerprint="ja3-x" if i else "",
            org_id="org-1",
            features=harvester_features,
            prompt_sample=f"<script>sample {i % 12}</script>",
            prompt_tokens=100 + i,
            completion_tokens=200,
            route="/v1/completions" if i == 0 else "/v1/chat/completions",
        )
        for i in range(30)
    ]
    events += [
        event(BENIGN, DAY_AGO + i, params={"temperature": 0.7, "max_tokens": 100}) for i in range(5)
    ]
    events += [event(BLOCKED, NOW - 5_000), event(LINKED, NOW - 4_000)]
    await record(aredis, keyspace, events, tmp_path)
    limiter = Limiter(aredis)
    await limiter.set_level(keyspace.level(HARVESTER), "throttle", ["detector:0.91"], 3600)
    await scored(
        aredis,
        keyspace,
        HARVESTER,
        score=0.91,
        level="throttle",
        reasons=("detector:0.91", "logprob_share"),
        explain=[("logprob_share", 1.5, 1.0, 0.0), ("temperature_zero", 0.7, 1.0, 0.1)],
        campaign="camp-1",
        history=[(NOW - 2_000, 0.5, "watch"), (NOW - 1_000, 0.91, "throttle")],
    )
    await scored(aredis, keyspace, BENIGN, score=0.05, level="allow")
    await scored(aredis, keyspace, LINKED, score=0.3, level="allow")
    await perform(aredis, keyspace, BLOCKED, Action("block", "manual"), "alice")
    await campaign(aredis, keyspace, "camp-1", [HARVESTER, LINKED], score=0.95, ts=NOW)
    await campaign(aredis, keyspace, "camp-old", [BENIGN, LINKED], score=0.4, ts=DAY_AGO)
    await aredis.hset(keyspace.campaigns, "broken", b"{not json")
    await aredis.hset(keyspace.labels, LINKED, "benign")
    return Review(aredis, keyspace, _policy)


async def test_clients_ranked_flagged_first_then_score(seeded: Review) -> None:
    found = await seeded.clients()
    assert [c.id for c in found] == [HARVESTER, BLOCKED, LINKED, BENIGN]
    harvester, blocked, linked, benign = found
    assert harvester.name == NAME and harvester.tier == "default"
    assert (harvester.level, harvester.score, harvester.flagged) == ("throttle", 0.91, True)
    assert harvester.level_reasons == ("detector:0.91",)
    assert harvester.reasons == ("detector:0.91", "logprob_share")
    assert harvester.requests == 30 and harvester.decisions == {"admitted": 30}
    assert harvester.tokens > 0
    assert harvester.first_ts_ms == NOW - 10_000 and harvester.last_ts_ms == NOW - 10_000 + 29
    assert harvester.campaign == "camp-1"
    assert (blocked.level, blocked.score, blocked.flagged) == ("block", None, True)
    assert blocked.level_reasons == ("operator:manual",) and blocked.level_expires_at_ms is None
    assert (linked.label, linked.campaign, linked.flagged) == ("benign", "camp-1", False)
    assert (benign.name, benign.campaign, benign.label) == ("", "camp-old", None)


async def test_clients_filters(seeded: Review) -> None:
    assert [c.id for c in await seeded.clients(flagged=True)] == [HARVESTER, BLOCKED]
    recent = await seeded.clients(since_ms=NOW - 3_600_000)
    assert [c.id for c in recent] == [HARVESTER, BLOCKED, LINKED]
    assert [c.id for c in await seeded.clients(limit=1)] == [HARVESTER]
    assert await seeded.clients(limit=0) == []


async def test_clients_across_batches(seeded: Review, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = await seeded.clients()
    monkeypatch.setattr(review_module, "BATCH", 1)
    assert await seeded.clients() == whole


async def test_shadow_level_counts_as_flagged_only_in_shadow_mode(
    aredis: aioredis.Redis, keyspace: KeySpace, seeded: Review
) -> None:
    shadow = {"level": "degrade", "reasons": ["detector:0.7"], "score": 0.7, "ts": NOW}
    await aredis.hset(keyspace.shadow_levels, LINKED, orjson.dumps(shadow))
    assert LINKED not in [c.id for c in await seeded.clients(flagged=True)]
    in_shadow = Review(aredis, keyspace, lambda: _policy(shadow=True))
    found = {c.id: c for c in await in_shadow.clients(flagged=True)}
    assert found[LINKED].shadow_level == "degrade" and found[LINKED].level == "allow"


async def test_client_detail(seeded: Review) -> None:
    detail = await seeded.client(HARVESTER)
    assert detail is not None
    assert detail.summary.id == HARVESTER and detail.summary.name == NAME
    assert detail.history == (
        ScorePoint(NOW - 2_000, 0.5, "watch"),
        ScorePoint(NOW - 1_000, 0.91, "throttle"),
    )
    assert [(e.feature, e.contribution, e.value, e.benign) for e in detail.evidence] == [
        ("logprob_share", 1.5, 1.0, 0.0),
        ("temperature_zero", 0.7, 1.0, 0.1),
    ]
    params = detail.params
    assert params.requests == 30
    assert params.shares["logprobs"] == params.shares["top_logprobs"] == 1.0
    assert params.shares["temperature=0"] == params.shares["n>1"] == 1.0
    assert params.shares["system_prompt"] == params.shares["reasoning"] == 1.0
    assert params.shares["stream"] == pytest.approx(8 / 30)
    assert params.shares["logit_bias"] == params.shares["tools"] == 0.0
    assert params.medians == {
        "max_tokens": 384.0,
        "temperature": 0.0,
        "prompt_tokens": 114.5,
        "completion_tokens": 200.0,
    }
    assert params.routes == {"/v1/chat/completions": 29, "/v1/completions": 1}
    # distinct samples, newest first: events 29, 28, … carry samples 5, 4, …
    assert detail.samples == tuple(
        f"<script>sample {i}</script>" for i in (5, 4, 3, 2, 1, 0, 11, 10, 9, 8)
    )
    assert detail.metadata["client_ip"][0] in {"10.0.0.0", "10.0.0.1", "10.0.0.2"}
    assert sorted(detail.metadata["client_ip"]) == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert detail.metadata["tls_fingerprint"] == ("ja3-x",)
    assert detail.metadata["org_id"] == ("org-1",)
    assert [c.id for c in detail.campaigns] == ["camp-1"]
    assert detail.campaigns[0].members == (HARVESTER, LINKED)
    assert detail.audit == ()
    assert len(detail.recent) == 30 and detail.recent[-1].ts == NOW - 10_000 + 29


async def test_samples_follow_the_policy_in_force(
    seeded: Review, aredis: aioredis.Redis, keyspace: KeySpace
) -> None:
    """Samples stored while the policy kept them are hidden once it no longer does."""
    stopped = Review(aredis, keyspace, lambda: _policy(keep_samples=False))
    detail = await stopped.client(HARVESTER)
    assert detail is not None and detail.samples == ()
    assert all(e.prompt_sample == "" for e in detail.recent)
    assert all(e.prompt_sample == "" for e in await stopped.decisions(client=HARVESTER))
    kept = await seeded.decisions(client=HARVESTER)
    assert any(e.prompt_sample for e in kept)


async def test_client_detail_limits_and_audit(seeded: Review) -> None:
    detail = await seeded.client(HARVESTER, events=4)
    assert detail is not None and detail.params.requests == 4
    assert [e.ts for e in detail.recent] == [NOW - 10_000 + i for i in (26, 27, 28, 29)]
    since = await seeded.client(HARVESTER, since_ms=NOW - 10_000 + 25)
    assert since is not None and since.params.requests == 5
    blocked = await seeded.client(BLOCKED)
    assert blocked is not None
    assert [(e.action, e.actor, e.level) for e in blocked.audit] == [("block", "alice", "block")]
    assert blocked.history == () and blocked.evidence == () and blocked.samples == ()
    assert await seeded.client(NEVER_SEEN) is None


async def test_campaigns_and_decisions(seeded: Review) -> None:
    assert [c.id for c in await seeded.campaigns()] == ["camp-1", "camp-old"]
    assert [c.id for c in await seeded.campaigns(since_ms=NOW - 60_000)] == ["camp-1"]
    first = (await seeded.campaigns())[0]
    assert (first.links, first.score, first.ts_ms) == (("template", "timing"), 0.95, NOW)
    latest = await seeded.decisions(count=3)
    assert [e.client for e in latest] == [BENIGN, BLOCKED, LINKED]  # stream order, newest last
    mine = await seeded.decisions(client=BENIGN, count=100)
    assert [e.ts for e in mine] == [DAY_AGO + i for i in range(5)]
    assert await seeded.decisions(client=NEVER_SEEN) == []


async def test_known_and_seen(aredis: aioredis.Redis, keyspace: KeySpace, seeded: Review) -> None:
    assert await seeded.seen(BENIGN) and not await seeded.seen(NEVER_SEEN)
    assert await seeded.known(HARVESTER) and not await seeded.known(NEVER_SEEN)
    named = Review(aredis, keyspace, lambda: Policy(clients={NEVER_SEEN: ClientOverride()}))
    assert await named.known(NEVER_SEEN) and not await named.seen(NEVER_SEEN)


async def test_malformed_detector_data_is_skipped(
    aredis: aioredis.Redis, keyspace: KeySpace, seeded: Review
) -> None:
    await aredis.hset(
        keyspace.detector(BENIGN), mapping={"score": "garbage", "explain": "[not json"}
    )
    await aredis.rpush(keyspace.score_history(BENIGN), "bad", "1 x watch", f"{NOW} 0.2 allow")
    await aredis.hset(keyspace.level(BENIGN), mapping={"level": "watch", "expires_at_ms": "x"})
    detail = await seeded.client(BENIGN)
    assert detail is not None
    assert detail.summary.score is None and detail.evidence == ()
    assert detail.summary.level == "allow"
    assert detail.history == (ScorePoint(NOW, 0.2, "allow"),)


def test_to_jsonable(seeded: Review) -> None:
    summary = ClientSummary(
        id=HARVESTER,
        name=NAME,
        tier="",
        level="watch",
        level_reasons=("detector:0.6",),
        level_expires_at_ms=None,
        score=math.nan,
        reasons=(),
        shadow_level=None,
        requests=1,
        tokens=2,
        decisions={"admitted": 1},
        first_ts_ms=1,
        last_ts_ms=2,
        label=None,
        campaign=None,
    )
    doc = to_jsonable(summary)
    assert doc["flagged"] is True and doc["score"] is None and doc["name"] == NAME
    assert doc["level_reasons"] == ["detector:0.6"]
    assert orjson.loads(orjson.dumps(doc)) == doc
    assert to_jsonable({"a": (1, b"x")}) == {"a": [1, "x"]}
    with pytest.raises(TypeError):
        to_jsonable(object())


async def test_events_are_searched_in_the_latest_scan_limit_entries(
    aredis: aioredis.Redis, keyspace: KeySpace, seeded: Review
) -> None:
    narrow = Review(aredis, keyspace, _policy, scan_limit=3)  # BENIGN's last event, 2 others
    detail = await narrow.client(BENIGN)
    assert detail is not None and [e.ts for e in detail.recent] == [DAY_AGO + 4]
    assert detail.summary.requests == 5  # the summary is not limited
