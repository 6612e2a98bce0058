"""The shape stage on hand-built exchanges, with its logit_bias window on a real Redis."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.responses import Response

from gateway.controls import ControlSet, resolve
from gateway.exchange import Exchange
from gateway.identity import Client
from gateway.keys import KeySpace
from gateway.policy import Limits, Policy, Route, RouteKind, Store
from gateway.stages.shape import Shape
from tests.servers import free_port

CLIENT = Client(id="c" * 64, tier="default", known=True, allowlisted=False, limits=Limits())
CHAT_ROUTE = Route(path="/v1/chat/completions", kind=RouteKind.OPENAI_CHAT)
LEGACY_ROUTE = Route(path="/v1/completions", kind=RouteKind.OPENAI_COMPLETIONS)
MESSAGES = [{"role": "user", "content": "hi"}]
POLICIES = {False: Policy(), True: Policy(shadow=True)}


def exchange(
    body: dict[str, Any] | None,
    *,
    level: str = "allow",
    controls: ControlSet | None = None,
    route: Route = CHAT_ROUTE,
    policy: Policy | None = None,
) -> Exchange:
    return Exchange(
        id="req-1",
        route=route,
        policy=policy or Policy(),
        method="POST" if body is not None else "GET",
        headers={},
        raw_body=orjson.dumps(body) if body is not None else b"",
        body=body,
        client=CLIENT,
        level=level,
        controls=controls or resolve(level),
    )


def with_controls(level: str = "allow", **changes: Any) -> ControlSet:
    return resolve(level).model_copy(update=changes)


def error_of(answer: Response | None) -> dict[str, Any]:
    assert answer is not None
    return orjson.loads(bytes(answer.body))["error"]  # type: ignore[no-any-return]


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def shape(redis_client: aioredis.Redis, keyspace: KeySpace) -> Shape:
    return Shape(redis_client, keyspace)


# -- logprobs ------------------------------------------------------------------------------


async def test_top_logprobs_capped_at_allow(shape: Shape) -> None:
    ex = exchange({"messages": MESSAGES, "logprobs": True, "top_logprobs": 20})
    assert await shape.on_request(ex) is None
    assert ex.body == {"messages": MESSAGES, "logprobs": True, "top_logprobs": 5}
    assert ex.modifications == ["top_logprobs_capped:20>5"]
    assert ex.body_modified


async def test_nothing_to_change_changes_nothing(shape: Shape) -> None:
    body = {"messages": MESSAGES, "logprobs": True, "top_logprobs": 5, "n": 2, "max_tokens": 9}
    ex = exchange(dict(body))
    assert await shape.on_request(ex) is None
    assert ex.body == body and not ex.modifications and not ex.body_modified and not ex.reasons


async def test_legacy_logprobs_is_the_count_that_is_capped(shape: Shape) -> None:
    ex = exchange({"prompt": "x", "logprobs": 20}, route=LEGACY_ROUTE)
    await shape.on_request(ex)
    assert ex.body == {"prompt": "x", "logprobs": 5}
    assert ex.modifications == ["logprobs_capped:20>5"]


async def test_negative_counts_mean_whole_vocabulary_and_are_capped(shape: Shape) -> None:
    ex = exchange(
        {"messages": MESSAGES, "logprobs": True, "top_logprobs": -1, "prompt_logprobs": 20}
    )
    await shape.on_request(ex)
    assert ex.body is not None
    assert ex.body["top_logprobs"] == 5 and ex.body["prompt_logprobs"] == 5
    assert ex.modifications == ["top_logprobs_capped:-1>5", "prompt_logprobs_capped:20>5"]


async def test_cap_of_zero_keeps_only_the_sampled_tokens_logprob(shape: Shape) -> None:
    ex = exchange(
        {"prompt": "x", "logprobs": 3},
        route=LEGACY_ROUTE,
        controls=with_controls(top_logprobs_max=0),
    )
    await shape.on_request(ex)
    assert ex.body == {"prompt": "x", "logprobs": 0}


@pytest.mark.parametrize("route", [CHAT_ROUTE, LEGACY_ROUTE])
async def test_logprobs_dropped_at_throttle(shape: Shape, route: Route) -> None:
    body: dict[str, Any] = {"logprobs": True if route is CHAT_ROUTE else 5, "top_logprobs": 3}
    ex = exchange({**body, "max_tokens": 4}, level="throttle", route=route)
    await shape.on_request(ex)
    assert ex.body is not None and "logprobs" not in ex.body and "top_logprobs" not in ex.body
    assert ex.modifications[0] == "logprobs_dropped"


async def test_logprobs_false_is_not_a_drop(shape: Shape) -> None:
    ex = exchange({"messages": MESSAGES, "logprobs": False}, level="throttle")
    await shape.on_request(ex)
    assert "logprobs_dropped" not in ex.modifications


# -- logit_bias ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "logprobs"),
    [
        (CHAT_ROUTE, {"logprobs": True}),
        (CHAT_ROUTE, {"logprobs": True, "top_logprobs": 0}),
        (CHAT_ROUTE, {"top_logprobs": 2}),
        (CHAT_ROUTE, {"prompt_logprobs": 0}),
        (LEGACY_ROUTE, {"logprobs": 0}),
        (LEGACY_ROUTE, {"logprobs": 5}),
    ],
)
async def test_logit_bias_with_logprobs_refused_with_the_reason(
    shape: Shape, redis_client: aioredis.Redis, keyspace: KeySpace, route: Route, logprobs: dict
) -> None:
    ex = exchange({"logit_bias": {"42": 100}, **logprobs}, route=route)
    error = error_of(await shape.on_request(ex))
    assert error["code"] == "logit_bias_with_logprobs_refused"
    assert error["type"] == "invalid_request_error"
    assert "logit-stealing" in error["message"] and "Carlini" in error["message"]
    assert ex.reasons == ["logit_bias_with_logprobs_refused"]
    assert await redis_client.keys(f"{keyspace.prefix}*") == []  # a refusal counts nothing


async def test_logit_bias_with_logprobs_stripped_when_the_policy_says_so(shape: Shape) -> None:
    controls = with_controls(logit_bias_with_logprobs="strip")
    ex = exchange({"logprobs": True, "logit_bias": {"1": 5}}, controls=controls)
    assert await shape.on_request(ex) is None
    assert ex.body == {"logprobs": True}
    assert ex.modifications == ["logit_bias_stripped_with_logprobs"]


async def test_logit_bias_with_logprobs_dropped_at_throttle_is_refused_as_bias(
    shape: Shape,
) -> None:
    ex = exchange({"logprobs": True, "logit_bias": {"1": 5}}, level="throttle")
    assert error_of(await shape.on_request(ex))["code"] == "logit_bias_refused"


async def test_logit_bias_stripped_at_degrade(shape: Shape) -> None:
    ex = exchange({"messages": MESSAGES, "logit_bias": {"1": 5}}, level="degrade")
    assert await shape.on_request(ex) is None
    assert ex.body is not None and "logit_bias" not in ex.body
    assert "logit_bias_stripped" in ex.modifications


async def test_logit_bias_alone_is_forwarded_and_counted(
    shape: Shape, redis_client: aioredis.Redis, keyspace: KeySpace
) -> None:
    ex = exchange({"messages": MESSAGES, "logit_bias": {"7": 100, "007": -3, "9": 1.5}})
    assert await shape.on_request(ex) is None
    assert ex.body is not None and ex.body["logit_bias"] == {"7": 100, "007": -3, "9": 1.5}
    assert not ex.modifications and not ex.body_modified
    (key,) = await redis_client.keys(f"{keyspace.prefix}*")
    assert key.decode().startswith(keyspace.bias_tokens(CLIENT.id, 0).rsplit(":", 1)[0])
    assert await redis_client.smembers(key) == {b"7", b"9"}  # "007" is token 7
    assert 0 < await redis_client.ttl(key) <= 3600 + 60


@pytest.mark.parametrize(
    "bias",
    [
        [1, 2],
        "42:100",
        7,
        True,
        {"42": "100"},
        {"42": None},
        {"42": True},
        {"42": {"nested": [1]}},
        {"forty-two": 1},
        {"": 1},
        {"1" * 40: 1},
        {"1.5": 1},
    ],
)
async def test_malformed_logit_bias_is_a_400(shape: Shape, bias: Any) -> None:
    ex = exchange({"messages": MESSAGES, "logit_bias": bias})
    error = error_of(await shape.on_request(ex))
    assert error["code"] == "invalid_logit_bias"
    assert ex.reasons == ["invalid_logit_bias"]


@pytest.mark.parametrize("bias", [None, {}])
async def test_empty_logit_bias_is_no_bias(shape: Shape, bias: Any) -> None:
    ex = exchange({"logprobs": True, "logit_bias": bias}, level="throttle")
    assert await shape.on_request(ex) is None


# -- the window of distinct biased tokens --------------------------------------------------


async def test_distinct_token_window_is_all_or_nothing(
    shape: Shape, redis_client: aioredis.Redis, keyspace: KeySpace
) -> None:
    controls = with_controls(logit_bias_distinct_tokens=3, logit_bias_window_s=600)

    async def send(*tokens: int) -> Response | None:
        body = {"messages": MESSAGES, "logit_bias": {str(t): 1 for t in tokens}}
        return await shape.on_request(exchange(body, controls=controls))

    assert await send(1, 2) is None
    assert await send(2, 3) is None  # 2 was already biased: 3 distinct
    refused = await send(4)
    error = error_of(refused)
    assert refused is not None and refused.status_code == 400
    assert error["code"] == "logit_bias_budget_exceeded"
    assert "3 distinct token ids" in error["message"] and "logit-stealing" in error["message"]
    assert 0 < int(refused.headers["retry-after"]) <= 600
    assert await send(3, 1) is None  # already in the window: free
    (key,) = await redis_client.keys(f"{keyspace.prefix}*")
    assert await redis_client.smembers(key) == {b"1", b"2", b"3"}
    too_many = error_of(await send(5, 6, 7, 8))
    assert too_many["code"] == "logit_bias_budget_exceeded"
    assert await redis_client.scard(key) == 3


async def test_window_counts_per_client(shape: Shape, keyspace: KeySpace) -> None:
    controls = with_controls(logit_bias_distinct_tokens=2)
    other = Client(id="d" * 64, tier="default", known=True, allowlisted=False, limits=Limits())
    for client in (CLIENT, other):
        ex = exchange({"logit_bias": {"1": 1, "2": 1}}, controls=controls)
        ex.client = client
        assert await shape.on_request(ex) is None


async def test_large_bias_within_a_large_cap(shape: Shape, redis_client: aioredis.Redis) -> None:
    controls = with_controls(logit_bias_distinct_tokens=20_000)
    bias = {str(t): 1 for t in range(12_000)}  # more than one Lua batch, more than unpack allows
    assert await shape.on_request(exchange({"logit_bias": bias}, controls=controls)) is None
    more = {str(t): 1 for t in range(11_000, 21_000)}
    ex = exchange({"logit_bias": more}, controls=controls)
    assert error_of(await shape.on_request(ex))["code"] == "logit_bias_budget_exceeded"


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.2, socket_timeout=0.2
    )
    yield client
    await client.aclose()


async def test_store_down_fails_open(dead_redis: aioredis.Redis, keyspace: KeySpace) -> None:
    ex = exchange({"messages": MESSAGES, "logit_bias": {"1": 1}})
    assert await Shape(dead_redis, keyspace).on_request(ex) is None
    assert ex.reasons == ["store_unavailable"]


async def test_store_down_fails_closed(dead_redis: aioredis.Redis, keyspace: KeySpace) -> None:
    policy = Policy(store=Store(on_store_error="fail_closed"))
    ex = exchange({"messages": MESSAGES, "logit_bias": {"1": 1}}, policy=policy)
    answer = await Shape(dead_redis, keyspace).on_request(ex)
    assert answer is not None and answer.status_code == 503
    assert error_of(answer)["code"] == "store_unavailable"
    assert ex.reasons == ["store_unavailable"]


async def test_no_round_trip_without_a_cap_or_a_bias(
    dead_redis: aioredis.Redis, keyspace: KeySpace
) -> None:
    stage = Shape(dead_redis, keyspace)
    uncapped = with_controls(logit_bias_distinct_tokens=0)
    for ex in (
        exchange({"messages": MESSAGES, "logit_bias": {"1": 1}}, controls=uncapped),
        exchange({"messages": MESSAGES, "top_logprobs": 9, "logprobs": True}),
    ):
        assert await stage.on_request(ex) is None
        assert "store_unavailable" not in ex.reasons


# -- sampling parameters -------------------------------------------------------------------


async def test_degrade_clamps_drops_and_raises(shape: Shape) -> None:
    body = {
        "messages": MESSAGES,
        "n": 4,
        "seed": 42,
        "temperature": 0,
        "max_tokens": 50,
        "logprobs": True,
        "top_logprobs": 20,
    }
    ex = exchange(body, level="degrade")
    await shape.on_request(ex)
    assert ex.body == {
        "messages": MESSAGES,
        "n": 1,
        "temperature": 0.7,
        "max_tokens": 50,
        "logprobs": True,
        "top_logprobs": 1,
    }
    assert ex.modifications == [
        "top_logprobs_capped:20>1",
        "n_clamped:4>1",
        "seed_dropped",
        "temperature_raised:0.0>0.7",
    ]


async def test_max_tokens_clamped(shape: Shape) -> None:
    controls = with_controls(max_tokens_max=100)
    ex = exchange({"max_tokens": 5000, "max_completion_tokens": -1}, controls=controls)
    await shape.on_request(ex)
    assert ex.body == {"max_tokens": 100, "max_completion_tokens": 100}
    assert ex.modifications == [
        "max_tokens_clamped:5000>100",
        "max_completion_tokens_clamped:-1>100",
    ]


async def test_invalid_but_harmless_values_pass_through(shape: Shape) -> None:
    body = {"n": 0, "max_tokens": 0, "seed": None, "temperature": 1.5}
    ex = exchange(dict(body), level="degrade")
    assert await shape.on_request(ex) is None
    assert ex.body == body and not ex.modifications


@pytest.mark.parametrize(
    ("floor", "body", "expected"),
    [
        (0.7, {}, None),  # absent means 1.0, above the floor
        (1.2, {}, 1.2),
        (1.2, {"temperature": None}, 1.2),
        (0.7, {"temperature": 0.2}, 0.7),
        (0.7, {"temperature": 0.9}, 0.9),
        (0.0, {"temperature": 0}, 0),
        (0.0, {"temperature": "cold"}, "cold"),  # no floor, nothing to enforce
    ],
)
async def test_temperature_floor(shape: Shape, floor: float, body: dict, expected: Any) -> None:
    ex = exchange(dict(body), controls=with_controls(temperature_floor=floor))
    assert await shape.on_request(ex) is None
    assert ex.body is not None and ex.body.get("temperature") == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("top_logprobs", "20"),
        ("top_logprobs", 20.0),
        ("top_logprobs", True),
        ("prompt_logprobs", [20]),
        ("n", "4"),
        ("n", {"n": 4}),
        ("max_tokens", "100000"),
        ("max_tokens", 1e9),
        ("max_completion_tokens", False),
        ("temperature", "0"),
        ("temperature", [0]),
    ],
)
async def test_values_a_lenient_upstream_could_coerce_are_refused(
    shape: Shape, name: str, value: Any
) -> None:
    ex = exchange({"messages": MESSAGES, "logprobs": True, name: value}, level="degrade")
    error = error_of(await shape.on_request(ex))
    assert error["code"] == "invalid_type" and f"'{name}'" in error["message"]
    assert ex.reasons == [f"invalid_type:{name}"]


async def test_legacy_logprobs_must_be_an_integer(shape: Shape) -> None:
    ex = exchange({"prompt": "x", "logprobs": "5"}, route=LEGACY_ROUTE)
    assert error_of(await shape.on_request(ex))["code"] == "invalid_type"


# -- shadow mode, other routes -------------------------------------------------------------


async def test_shadow_records_and_forwards_unchanged(shape: Shape) -> None:
    body = {"messages": MESSAGES, "logprobs": True, "top_logprobs": 20, "seed": 1, "n": 3}
    ex = exchange(copy.deepcopy(body), level="degrade", policy=Policy(shadow=True))
    assert await shape.on_request(ex) is None
    assert ex.body == body and not ex.body_modified
    assert ex.modifications == [
        "shadow:top_logprobs_capped:20>1",
        "shadow:n_clamped:3>1",
        "shadow:seed_dropped",
    ]


async def test_shadow_never_refuses(shape: Shape) -> None:
    body = {"messages": MESSAGES, "logprobs": True, "logit_bias": {"1": 1}, "n": 99}
    ex = exchange(copy.deepcopy(body), policy=Policy(shadow=True))
    assert await shape.on_request(ex) is None
    assert ex.body == body and not ex.body_modified
    assert ex.reasons == ["logit_bias_with_logprobs_refused", "shadow"]


async def test_shadow_store_down_fails_open(dead_redis: aioredis.Redis, keyspace: KeySpace) -> None:
    policy = Policy(shadow=True, store=Store(on_store_error="fail_closed"))
    ex = exchange({"logit_bias": {"1": 1}}, policy=policy)
    assert await Shape(dead_redis, keyspace).on_request(ex) is None
    assert "store_unavailable" in ex.reasons


async def test_other_routes_and_bodiless_requests_untouched(shape: Shape) -> None:
    embeddings = Route(path="/v1/embeddings", kind=RouteKind.EMBEDDINGS)
    ex = exchange({"input": "x", "n": 99, "top_logprobs": 20}, route=embeddings)
    assert await shape.on_request(ex) is None
    assert ex.body == {"input": "x", "n": 99, "top_logprobs": 20}
    models = Route(path="/v1/models", kind=RouteKind.MODELS)
    assert await shape.on_request(exchange(None, route=models)) is None


# -- anything a client can send ------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=10,
)
params = st.dictionaries(
    st.sampled_from(
        [
            "logprobs",
            "top_logprobs",
            "prompt_logprobs",
            "logit_bias",
            "n",
            "max_tokens",
            "max_completion_tokens",
            "seed",
            "temperature",
        ]
    ),
    json_values | st.dictionaries(st.text(max_size=6), json_values, max_size=4),
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    body=params,
    level=st.sampled_from(["allow", "watch", "degrade", "throttle"]),
    legacy=st.booleans(),
    shadow=st.booleans(),
)
async def test_any_params_give_a_400_or_a_forwardable_body(
    shape: Shape, body: dict[str, Any], level: str, legacy: bool, shadow: bool
) -> None:
    controls = resolve(level)
    ex = exchange(
        copy.deepcopy(body),
        controls=controls,
        route=LEGACY_ROUTE if legacy else CHAT_ROUTE,
        policy=POLICIES[shadow],
    )
    answer = await shape.on_request(ex)
    if answer is not None:
        assert not shadow and answer.status_code == 400
        return
    assert ex.body is not None
    if shadow or not ex.body_modified:
        assert ex.body == body
        return
    orjson.dumps(ex.body)
    shaped = ex.body
    cap = controls.top_logprobs_max
    assert cap is not None
    for name in ("top_logprobs", "prompt_logprobs", *(("logprobs",) if legacy else ())):
        value = shaped.get(name)
        assert value is None or (type(value) is int and 0 <= value <= cap)
    assert controls.n_max is not None
    n = shaped.get("n")
    assert n is None or (type(n) is int and n <= controls.n_max)
    if controls.seed == "drop":
        assert shaped.get("seed") is None
    if controls.logprobs == "drop":
        assert not {"top_logprobs", "prompt_logprobs"} & shaped.keys()


async def test_vocabulary_restricting_extras_follow_the_logit_bias_rules(shape: Shape) -> None:
    body = {"messages": [], "logprobs": True, "top_logprobs": 5, "allowed_token_ids": [1, 2, 3]}
    ex = exchange(body)
    answer = await shape.on_request(ex)
    assert answer is not None and answer.status_code == 400
    assert "allowed_token_ids_refused" in ex.reasons
    plain = exchange({"messages": [], "allowed_token_ids": [1, 2, 3]})
    assert await shape.on_request(plain) is None  # without logprobs: allowed at allow


async def test_temperature_floor_also_removes_greedy_shortcuts(shape: Shape) -> None:
    body = {"messages": [], "temperature": 0, "top_k": 1, "min_p": 0.9, "top_p": 0.01}
    ex = exchange(body, level="degrade")
    assert await shape.on_request(ex) is None
    assert ex.body is not None
    assert "top_k" not in ex.body and "min_p" not in ex.body
    assert ex.body["top_p"] == 0.9 and ex.body["temperature"] == 0.7
