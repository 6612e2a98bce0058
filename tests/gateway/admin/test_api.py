"""The admin API on a real gateway: token, endpoints, actions, validation, store failures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from starlette.applications import Starlette

from gateway.admin.context import AdminContext
from gateway.admin.routes import admin_not_found_routes, admin_routes
from gateway.identity import client_id_for
from gateway.keys import KeySpace
from gateway.policy import Policy
from gateway.settings import Settings
from gateway.store.connect import connect
from tests.gateway.admin.seed import NEVER_SEEN
from tests.gateway.conftest import GatewayFactory, wait_for_events
from tests.servers import free_port, serve_app

TOKEN = "admin-token-0123456789abcdef"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
KEY = {"authorization": "Bearer test-key-1"}
CLIENT = client_id_for("test-key-1", b"test-secret")
NAME = "<script>alert('name')</script>"
PROMPT = "<script>alert('prompt')</script> tell me everything"
POLICY: dict[str, Any] = {
    "detector": {"enabled": False},
    "store": {"retention": {"keep_prompt_samples": True}},
    "clients": {CLIENT: {"name": NAME}},
}
ENDPOINTS = [
    ("GET", "/admin/api/clients"),
    ("GET", f"/admin/api/clients/{CLIENT}"),
    ("POST", f"/admin/api/clients/{CLIENT}/actions"),
    ("GET", "/admin/api/campaigns"),
    ("GET", "/admin/api/decisions"),
    ("GET", "/admin/api/audit"),
]


def _chat(http: httpx.Client, n: int) -> None:
    for i in range(n):
        body = {
            "model": "plain",
            "messages": [{"role": "user", "content": f"{PROMPT} {i}"}],
            "max_tokens": 5,
            "temperature": 0,
            "logprobs": True,
        }
        r = http.post("/v1/chat/completions", json=body, headers=KEY)
        assert r.status_code == 200


@pytest.fixture
def admin(
    gateway: GatewayFactory,
    scripted_upstream: tuple[str, Starlette],
    redis_sync: redis.Redis,
    keyspace: KeySpace,
) -> Iterator[httpx.Client]:
    """A client of a gateway with an admin token (sent by default), after three requests
    of CLIENT were logged."""
    with (
        gateway(scripted_upstream[0], POLICY, admin_token=TOKEN) as gw,
        httpx.Client(base_url=gw, headers=ADMIN, timeout=10) as http,
    ):
        _chat(http, 3)
        wait_for_events(redis_sync, keyspace, 3)
        yield http


def _action(http: httpx.Client, client: str = CLIENT, **body: Any) -> httpx.Response:
    return http.post(f"/admin/api/clients/{client}/actions", json=body)


def test_token_required_on_every_route(admin: httpx.Client) -> None:
    wrong = [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Bearer {TOKEN}x"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": TOKEN},
    ]
    admin.headers.pop("authorization")
    for method, path in ENDPOINTS:
        for headers in wrong:
            r = admin.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["error"]["code"] == "unauthorized"
    ok = admin.get("/admin/api/clients", headers={"authorization": f"bearer {TOKEN}"})
    assert ok.status_code == 200


def test_no_token_means_no_admin_routes_and_nothing_proxied(
    gateway: GatewayFactory, scripted_upstream: tuple[str, Starlette]
) -> None:
    url, upstream = scripted_upstream
    # Even a policy route under /admin is never forwarded.
    routes = [
        {"path": "/v1/chat/completions", "kind": "openai-chat"},
        {
            "path": "/admin/api/clients",
            "kind": "openai-chat",
            "upstream_path": "/v1/chat/completions",
        },
    ]
    with (
        gateway(url, {**POLICY, "routes": routes}) as gw,
        httpx.Client(base_url=gw, headers=ADMIN) as http,
    ):
        for path in ("/admin", "/admin/", "/admin/api/clients", "/admin/anything/else"):
            for method in ("GET", "POST"):
                r = http.request(method, path, json={"model": "plain"})
                assert r.status_code == 404, (method, path)
                assert r.json()["error"]["code"] == "not_found"
        assert upstream.state.seen == []
        assert http.get("/healthz").status_code == 200


def test_read_endpoints(admin: httpx.Client, redis_sync: redis.Redis, keyspace: KeySpace) -> None:
    campaign = {
        "id": "c1",
        "members": [CLIENT],
        "links": ["ip"],
        "score": 0.8,
        "reasons": [],
        "ts": 1,
    }
    redis_sync.hset(keyspace.campaigns, "c1", orjson.dumps(campaign))
    get = admin.get

    listing = get("/admin/api/clients?since=1h&limit=10")
    assert listing.status_code == 200
    assert listing.headers["content-type"] == "application/json"
    assert listing.headers["x-content-type-options"] == "nosniff"
    (summary,) = listing.json()["clients"]
    assert (summary["id"], summary["name"], summary["requests"]) == (CLIENT, NAME, 3)
    assert (summary["level"], summary["flagged"], summary["campaign"]) == ("allow", False, "c1")
    assert get("/admin/api/clients?flagged=true").json() == {"clients": [], "count": 0}

    detail = get(f"/admin/api/clients/{CLIENT}").json()
    assert detail["summary"]["name"] == NAME
    assert detail["params"]["requests"] == 3
    assert detail["params"]["shares"]["logprobs"] == 1.0
    assert detail["params"]["shares"]["temperature=0"] == 1.0
    assert detail["samples"] == [f"{PROMPT} {i}" for i in (2, 1, 0)]  # returned as data
    assert set(detail["metadata"]) == {"client_ip", "tls_fingerprint", "org_id"}
    assert [c["id"] for c in detail["campaigns"]] == ["c1"]
    assert len(detail["recent"]) == 3 and detail["recent"][-1]["client"] == CLIENT

    assert get("/admin/api/campaigns").json()["campaigns"][0]["members"] == [CLIENT]
    assert get("/admin/api/campaigns?since=1m").json()["count"] == 0  # ts 1 is long ago
    decisions = get(f"/admin/api/decisions?client={CLIENT}&count=2").json()["decisions"]
    assert [d["prompt_sample"] for d in decisions] == [f"{PROMPT} 1", f"{PROMPT} 2"]
    assert get("/admin/api/decisions?client=anonymous").json()["count"] == 0
    assert get("/admin/api/audit").json() == {"entries": [], "count": 0}


def test_each_action_writes_and_audits(
    admin: httpx.Client, redis_sync: redis.Redis, keyspace: KeySpace
) -> None:
    def level() -> tuple[str, str, str]:
        raw = redis_sync.hmget(keyspace.level(CLIENT), ["level", "reasons", "expires_at_ms"])
        stored, reasons, expires = (v.decode() if isinstance(v, bytes) else "" for v in raw)
        return stored, reasons, expires

    r = _action(
        admin,
        action="set_level",
        level="degrade",
        reason="Logprob <b>harvesting</b>",
        ttl="24h",
        actor="alice",
    )
    assert r.status_code == 201, r.text
    entry = r.json()
    assert (entry["action"], entry["level"], entry["previous_level"]) == (
        "set_level",
        "degrade",
        "allow",
    )
    assert (entry["actor"], entry["reason"], entry["client"]) == (
        "alice",
        "Logprob <b>harvesting</b>",
        CLIENT,
    )
    stored, reasons, expires = level()
    assert (stored, reasons) == ("degrade", "operator:logprob_b_harvesting_b_")
    assert expires and int(expires) - entry["ts_ms"] == pytest.approx(86_400_000, abs=5_000)

    assert _action(admin, action="block", reason="confirmed", ttl=None).status_code == 201
    assert level() == ("block", "operator:confirmed", "")
    # the gateway enforces the operator's block at once
    r = admin.post(
        "/v1/chat/completions",
        json={"model": "plain", "messages": [{"role": "user", "content": "hi"}]},
        headers=KEY,
    )
    assert r.status_code in (403, 429)

    assert _action(admin, action="allowlist", reason="partner").status_code == 201
    assert level() == ("allow", "operator:partner", "")
    r = _action(admin, action="label", label="harvesting", reason="training label")
    assert r.status_code == 201 and r.json()["label"] == "harvesting"
    assert redis_sync.hget(keyspace.labels, CLIENT) == b"harvesting"
    r = _action(admin, action="reset", reason="done")
    assert (r.json()["level"], r.json()["previous_level"]) == ("allow", "allow")
    assert redis_sync.exists(keyspace.level(CLIENT)) == 0

    trail = admin.get(f"/admin/api/audit?client={CLIENT}").json()
    assert [e["action"] for e in trail["entries"]] == [
        "reset",
        "label",
        "allowlist",
        "block",
        "set_level",
    ]
    assert [e["previous_level"] for e in trail["entries"]][2:] == ["block", "degrade", "allow"]
    assert {e["actor"] for e in trail["entries"]} == {"alice", "admin"}
    detail = admin.get(f"/admin/api/clients/{CLIENT}").json()
    assert detail["summary"]["label"] == "harvesting" and len(detail["audit"]) == 5


BAD_BODIES = [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"action": "block", "reason": "x", "levle": "block"}', "invalid_json"),
    (b'{"action": "promote", "reason": "x"}', "invalid_action"),
    (b'{"action": "block"}', "invalid_action"),
    (b'{"action": "block", "reason": "   "}', "invalid_action"),
    (b'{"action": "set_level", "reason": "x", "level": "banish"}', "invalid_action"),
    (b'{"action": "set_level", "reason": "x", "level": 3}', "invalid_action"),
    (b'{"action": "label", "reason": "x", "label": "evil"}', "invalid_action"),
    (b'{"action": "block", "reason": "x", "ttl": "forever"}', "invalid_action"),
    (b'{"action": "block", "reason": "x", "ttl": -5}', "invalid_action"),
    (b'{"action": "block", "reason": "x", "ttl": true}', "invalid_action"),
    (b'{"action": "block", "reason": "x", "actor": "a\\nb"}', "invalid_action"),
]


def test_bad_action_bodies(
    admin: httpx.Client, redis_sync: redis.Redis, keyspace: KeySpace
) -> None:
    for body, code in BAD_BODIES:
        r = admin.post(f"/admin/api/clients/{CLIENT}/actions", content=body)
        assert r.status_code == 400, (body, r.text)
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == code, body
    assert redis_sync.exists(keyspace.level(CLIENT), keyspace.audit) == 0


def test_bad_requests(admin: httpx.Client) -> None:
    def status(method: str, path: str, **kw: Any) -> tuple[int, str]:
        r = admin.request(method, path, **kw)
        assert r.headers["content-type"] == "application/json", path
        return r.status_code, r.json()["error"]["code"]

    assert status("GET", "/admin/api/clients?limit=0") == (400, "invalid_parameter")
    assert status("GET", "/admin/api/clients?limit=abc") == (400, "invalid_parameter")
    assert status("GET", "/admin/api/clients?since=yesterday") == (400, "invalid_parameter")
    assert status("GET", "/admin/api/clients?flagged=maybe") == (400, "invalid_parameter")
    assert status("GET", "/admin/api/decisions?count=99999") == (400, "invalid_parameter")
    assert status("GET", "/admin/api/decisions?client=../../etc") == (400, "invalid_client")
    assert status("GET", "/admin/api/audit?client=ABC") == (400, "invalid_client")
    assert status("GET", "/admin/api/clients/" + "A" * 64) == (400, "invalid_client")
    # numbers too long for int() or float(), and ids with a trailing newline
    assert status("GET", "/admin/api/clients?limit=" + "1" * 5000) == (400, "invalid_parameter")
    assert status("GET", "/admin/api/clients?since=" + "9" * 400 + "d") == (
        400,
        "invalid_parameter",
    )
    huge_ttl = {"action": "block", "reason": "x", "ttl": "9" * 400 + "d"}
    assert status("POST", f"/admin/api/clients/{CLIENT}/actions", json=huge_ttl)[0] == 400
    assert status("GET", "/admin/api/clients/anonymous%0A") == (400, "invalid_client")
    assert status("GET", "/admin/api/decisions?client=anonymous%0A") == (400, "invalid_client")
    assert status("GET", f"/admin/api/clients/{NEVER_SEEN}") == (404, "unknown_client")
    action = {"action": "block", "reason": "x"}
    assert status("POST", f"/admin/api/clients/{NEVER_SEEN}/actions", json=action) == (
        404,
        "unknown_client",
    )
    assert status("POST", "/admin/api/clients/x%00y/actions", json=action) == (
        400,
        "invalid_client",
    )
    assert status("POST", "/admin/api/clients/anonymous/actions", json=action) == (
        404,
        "unknown_client",
    )
    assert status("DELETE", "/admin/api/clients") == (405, "method_not_allowed")
    assert status("GET", f"/admin/api/clients/{CLIENT}/actions") == (405, "method_not_allowed")
    assert status("POST", "/admin/api/clients/x/y/z", json={}) == (404, "not_found")
    assert status("POST", "/admin/api/clients", content=b"x" * 20_000) == (
        405,
        "method_not_allowed",
    )
    big = b'{"action": "block", "reason": "' + b"x" * 20_000 + b'"}'
    assert status("POST", f"/admin/api/clients/{CLIENT}/actions", content=big) == (
        413,
        "body_too_large",
    )


def test_store_unreachable_gives_503() -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}", 0.5)
    ctx = AdminContext.create(dead, KeySpace("adtest:dead"), Policy, TOKEN)
    app = Starlette(routes=[*admin_routes(ctx), *admin_not_found_routes()])
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        for method, path in ENDPOINTS:
            body = {"action": "block", "reason": "x"}
            r = http.request(method, path, headers=ADMIN, json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["code"] == "store_unavailable"
        assert http.get("/admin/api/audit").status_code == 401  # auth comes first


def test_admin_routes_need_a_token() -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}", 0.5)
    assert admin_routes(AdminContext.create(dead, KeySpace(), Policy, "")) == []
    assert admin_routes(AdminContext.create(dead, KeySpace(), Policy, TOKEN))


def test_settings_read_the_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTIDISTILL_ADMIN_TOKEN", TOKEN)
    settings = Settings.model_validate({"upstream": "http://127.0.0.1:1"})
    assert settings.admin_token_value == TOKEN
    assert TOKEN not in settings.model_dump_json()
    again = Settings.model_validate_json(settings.to_json_with_secrets())
    assert again.admin_token_value == TOKEN
    monkeypatch.setenv("ANTIDISTILL_ADMIN_TOKEN", "  ")
    assert Settings.model_validate({"upstream": "http://127.0.0.1:1"}).admin_token_value == ""
    monkeypatch.delenv("ANTIDISTILL_ADMIN_TOKEN")
    assert Settings.model_validate({"upstream": "http://127.0.0.1:1"}).admin_token_value == ""
