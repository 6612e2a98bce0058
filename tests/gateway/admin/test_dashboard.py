"""The operator dashboard, through a real gateway on loopback, on a real Redis.

Clients are made by real requests through the gateway; the detector's results are written
to Redis in the shape the worker writes them (see notes on the data contract), and levels
are set with the real limiter.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from gateway.admin.auth import CSRF_FIELD, SESSION_COOKIE, make_session
from gateway.admin.dashboard import CSP
from gateway.identity import client_id_for
from gateway.keys import KeySpace
from gateway.ratelimit.limiter import Limiter
from tests.gateway.conftest import GatewayFactory, wait_for_events

TOKEN = "dashboard-test-token-0123456789"
SECRET = b"test-secret"
EVIL_PROMPT = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
EVIL_NAME = "<b>Evil & Co</b>"
HARVESTER_KEY = "sk-harvester"
BENIGN_KEY = "sk-benign"
HARVESTER = client_id_for(HARVESTER_KEY, SECRET)
BENIGN = client_id_for(BENIGN_KEY, SECRET)


@dataclass(frozen=True)
class Site:
    url: str
    keys: KeySpace
    redis: redis.Redis

    def browser(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=10)

    @contextmanager
    def logged_in(self) -> Iterator[httpx.Client]:
        with self.browser() as client:
            response = client.post("/admin/login", data={"token": TOKEN})
            assert response.status_code == 303, response.text
            yield client


def chat(url: str, key: str, prompt: str) -> None:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def set_level(redis_url: str, keys: KeySpace, client: str, level: str, reasons: list[str]) -> None:
    async def run() -> None:
        conn = aioredis.Redis.from_url(redis_url)
        try:
            await Limiter(conn).set_level(keys.level(client), level, reasons, 3600)
        finally:
            await conn.aclose()

    asyncio.run(run())


def detector_result(r: redis.Redis, keys: KeySpace, client: str, now_ms: int) -> None:
    """What the detector worker writes for a client it holds at throttle."""
    explain = [["top_logprobs_mean_high", 1.25, 5.0, 0.0], ["temperature_zero", -0.5, 0.1, 0.4]]
    r.hset(
        keys.detector(client),
        mapping={
            "score": "0.9100",
            "level": "throttle",
            "reasons": "detector:0.910,top_logprobs_mean_high",
            "ts": str(now_ms),
            "window": "24",
            "seen": "24",
            "flagged_after": "21",
            "shadow": "0",
            "explain": orjson.dumps(explain).decode(),
            "campaign": "",
        },
    )
    r.rpush(
        keys.score_history(client),
        f"{now_ms - 120_000} 0.3100 allow",
        f"{now_ms - 60_000} 0.7200 degrade",
        f"{now_ms} 0.9100 throttle",
    )
    r.zadd(keys.flagged, {client: 0.91})


@pytest.fixture
def site(
    gateway: GatewayFactory,
    scripted_upstream: tuple[str, object],
    redis_url: str,
    redis_sync: redis.Redis,
    keyspace: KeySpace,
) -> Iterator[Site]:
    policy = {
        "store": {"retention": {"keep_prompt_samples": True}},
        "detector": {"enabled": False},
        "clients": {HARVESTER: {"name": EVIL_NAME}},
    }
    with gateway(scripted_upstream[0], policy=policy, admin_token=TOKEN) as url:
        chat(url, HARVESTER_KEY, EVIL_PROMPT)
        chat(url, HARVESTER_KEY, "List 50 facts about the moon.")
        chat(url, BENIGN_KEY, "hello there")
        wait_for_events(redis_sync, keyspace, 3)
        detector_result(redis_sync, keyspace, HARVESTER, int(time.time() * 1000))
        set_level(redis_url, keyspace, HARVESTER, "throttle", ["detector:0.910"])
        yield Site(url, keyspace, redis_sync)


def csrf_of(html: str) -> str:
    match = re.search(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"', html)
    assert match is not None, "no CSRF field on the page"
    return match.group(1)


def assert_safe_page(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "<script" not in response.text.lower()
    assert "<img" not in response.text.lower()


def test_pages_redirect_to_the_login_form_without_a_session(site: Site) -> None:
    with site.browser() as web:
        for path in ("/admin/clients", f"/admin/clients/{HARVESTER}", "/admin/campaigns"):
            response = web.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/admin/"
            assert response.headers["content-security-policy"] == CSP
        assert web.get("/admin").headers["location"] == "/admin/"
        login = web.get("/admin/")
        assert login.status_code == 200 and 'name="token"' in login.text
        assert_safe_page(login)
        # an action without a session is not taken
        response = web.post(
            f"/admin/clients/{HARVESTER}/actions",
            data={"kind": "label", "label": "benign", "reason": "x"},
        )
        assert response.status_code == 303 and response.headers["location"] == "/admin/"
    assert site.redis.hget(site.keys.labels, HARVESTER) is None


def test_login_refuses_a_wrong_token_and_sets_a_strict_signed_cookie(site: Site) -> None:
    with site.browser() as web:
        wrong = web.post("/admin/login", data={"token": TOKEN + "x"})
        assert wrong.status_code == 401 and "Wrong token" in wrong.text
        assert "set-cookie" not in wrong.headers
        assert web.post("/admin/login", data={"token": ""}).status_code == 401
        not_a_form = web.post("/admin/login", json={"token": TOKEN})
        assert not_a_form.status_code == 400 and "set-cookie" not in not_a_form.headers
        right = web.post("/admin/login", data={"token": TOKEN})
        assert right.status_code == 303 and right.headers["location"] == "/admin/clients"
        cookie = right.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "path", "samesite"} <= attributes
        assert "Path=/admin" in cookie and "samesite=strict" in cookie.lower()
        assert TOKEN not in cookie
        assert web.get("/admin/").headers["location"] == "/admin/clients"
        assert web.get("/admin/clients").status_code == 200


def test_forged_or_expired_sessions_are_sent_to_the_login_form(site: Site) -> None:
    expired = make_session(TOKEN, time.time() - 13 * 3600)
    other = make_session("another-token", time.time())
    for value in (expired, other, "garbage", TOKEN):
        with site.browser() as web:
            web.cookies.set(SESSION_COOKIE, value, path="/admin")
            response = web.get("/admin/clients")
            assert response.status_code == 303 and response.headers["location"] == "/admin/"


def test_flagged_clients_table_and_the_show_all_toggle(site: Site) -> None:
    with site.logged_in() as web:
        flagged = web.get("/admin/clients")
        assert flagged.status_code == 200
        assert_safe_page(flagged)
        text = flagged.text
        assert f"/admin/clients/{HARVESTER}" in text and f"/admin/clients/{BENIGN}" not in text
        assert "&lt;b&gt;Evil &amp; Co&lt;/b&gt;" in text
        assert "throttle" in text and "0.910" in text and "top_logprobs_mean_high" in text
        everyone = web.get("/admin/clients?all=1").text
        assert f"/admin/clients/{HARVESTER}" in everyone and f"/admin/clients/{BENIGN}" in everyone
        assert everyone.index(HARVESTER) < everyone.index(BENIGN)  # flagged ranked first


def test_client_page_shows_score_evidence_samples_and_metadata_escaped(site: Site) -> None:
    with site.logged_in() as web:
        page = web.get(f"/admin/clients/{HARVESTER}")
    assert page.status_code == 200
    assert_safe_page(page)
    text = page.text
    # the prompt sample is there, as text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text
    assert "List 50 facts about the moon." in text
    assert "&lt;b&gt;Evil &amp; Co&lt;/b&gt;" in text
    # score over time: three points and the policy's thresholds
    assert text.count("<circle") == 3 and "watch 0.50" in text and "block 0.97" in text
    # evidence: feature, value vs benign median, contribution
    row = re.search(r"<code>top_logprobs_mean_high</code></td>(.*?)</tr>", text, re.S)
    assert row is not None
    assert re.findall(r'class="num">([^<]*)<', row.group(1)) == ["5", "0", "1.25"]
    assert "temperature_zero" in text
    # request profile, volume, recent decisions, the level and its reason
    assert "/v1/chat/completions" in text and "admitted" in text
    assert "detector:0.910" in text
    assert 'name="kind" value="label"' in text and f'name="{CSRF_FIELD}"' in text


def test_label_form_records_the_label_and_the_audit_entry(site: Site) -> None:
    path = f"/admin/clients/{HARVESTER}"
    with site.logged_in() as web:
        csrf = csrf_of(web.get(path).text)
        form = {
            "kind": "label",
            "label": "harvesting",
            "reason": "template <i>sweep</i> & logprobs",
            "actor": "alice <admin>",
        }
        missing = web.post(f"{path}/actions", data=form)
        assert missing.status_code == 403
        forged = web.post(f"{path}/actions", data={**form, CSRF_FIELD: "0" * 64})
        assert forged.status_code == 403
        assert site.redis.hget(site.keys.labels, HARVESTER) is None
        done = web.post(f"{path}/actions", data={**form, CSRF_FIELD: csrf})
        assert done.status_code == 303 and done.headers["location"] == f"{path}?done=label"
        assert site.redis.hget(site.keys.labels, HARVESTER) == b"harvesting"
        page = web.get(done.headers["location"])
    assert "Label saved." in page.text
    audit = page.text[page.text.index('data-testid="audit"') :]
    assert "alice &lt;admin&gt;" in audit
    assert "template &lt;i&gt;sweep&lt;/i&gt; &amp; logprobs" in audit
    assert "label-harvesting" in audit


def test_level_forms_set_and_reset_the_enforced_level(site: Site) -> None:
    path = f"/admin/clients/{BENIGN}"
    with site.logged_in() as web:
        csrf = csrf_of(web.get(path).text)
        for form, level in (
            ({"kind": "set_level", "level": "degrade", "ttl": "12h"}, b"degrade"),
            ({"kind": "block", "ttl": "never"}, b"block"),
            ({"kind": "reset"}, None),
            ({"kind": "allowlist"}, b"allow"),
        ):
            response = web.post(
                f"{path}/actions", data={**form, "reason": "review", CSRF_FIELD: csrf}
            )
            assert response.status_code == 303, response.text
            assert site.redis.hget(site.keys.level(BENIGN), "level") == level
        page = web.get(path).text
    assert page.count("<td>admin</td>") == 4  # default actor, one audit row per action


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"kind": "label", "label": "harvesting", "reason": "  "}, 400, "a reason is required"),
        (
            {"kind": "label", "label": "<b>x</b>", "reason": "r"},
            400,
            "unknown label &#39;&lt;b&gt;",
        ),
        ({"kind": "<script>", "reason": "r"}, 400, "Unknown action &#39;&lt;script&gt;&#39;"),
        ({"kind": "set_level", "level": "nuke", "reason": "r"}, 400, "unknown level"),
        ({"kind": "block", "ttl": "<b>soon</b>", "reason": "r"}, 400, "ttl: &#39;&lt;b&gt;soon"),
        ({"kind": "block", "ttl": "9999d", "reason": "r"}, 400, "longer than"),
        ({"kind": "reset", "ttl": "1h", "reason": "r"}, 400, "reset takes no ttl"),
        ({"kind": "reset", "reason": "r" * 501}, 400, "longer than 500"),
        ({"kind": "reset", "reason": "r", "actor": "a\x07b"}, 400, "printable characters"),
    ],
)
def test_bad_action_input_is_a_400_page_saying_why(
    site: Site, form: dict[str, str], status: int, message: str
) -> None:
    path = f"/admin/clients/{HARVESTER}"
    with site.logged_in() as web:
        csrf = csrf_of(web.get(path).text)
        response = web.post(f"{path}/actions", data={**form, CSRF_FIELD: csrf})
    assert response.status_code == status
    assert message in response.text
    assert f'href="{path}"' in response.text  # a way back
    assert_safe_page(response)
    assert site.redis.xlen(site.keys.audit) == 0


def test_malformed_forms_are_refused(site: Site) -> None:
    path = f"/admin/clients/{HARVESTER}/actions"
    with site.logged_in() as web:
        csrf = csrf_of(web.get(f"/admin/clients/{HARVESTER}").text)
        as_json = web.post(path, json={"kind": "reset", "reason": "r", CSRF_FIELD: csrf})
        assert as_json.status_code == 400 and "Expected a form" in as_json.text
        twice = web.post(
            path,
            content=f"kind=reset&reason=a&reason=b&{CSRF_FIELD}={csrf}",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert twice.status_code == 400 and "more than once: reason" in twice.text
        binary = web.post(
            path,
            content=b"kind=reset&reason=\xff",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert binary.status_code == 400 and "could not be decoded" in binary.text
        huge = web.post(path, data={"kind": "reset", "reason": "r" * 20_000})
        assert huge.status_code == 413
        wrong_method = web.delete("/admin/clients")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET, HEAD"
        assert wrong_method.headers["content-security-policy"] == CSP
        assert web.get("/admin/login").status_code == 405
    assert site.redis.xlen(site.keys.audit) == 0


def test_unknown_and_malformed_client_ids_are_404_pages(site: Site) -> None:
    with site.logged_in() as web:
        csrf = csrf_of(web.get(f"/admin/clients/{HARVESTER}").text)
        unknown = web.get("/admin/clients/" + "ab" * 32)
        assert unknown.status_code == 404 and "never seen" in unknown.text
        evil = web.get("/admin/clients/%3Cscript%3Ealert(1)%3C%5Cscript%3E")
        assert evil.status_code == 404 and "&lt;script&gt;alert(1)" in evil.text
        assert_safe_page(evil)
        act = web.post(
            "/admin/clients/" + "ab" * 32 + "/actions",
            data={"kind": "reset", "reason": "r", CSRF_FIELD: csrf},
        )
        assert act.status_code == 404
    assert site.redis.xlen(site.keys.audit) == 0


def test_a_bearer_header_is_accepted_without_a_session_or_csrf(site: Site) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    with site.browser() as web:
        page = web.get(f"/admin/clients/{HARVESTER}", headers=auth)
        assert page.status_code == 200 and "Log out" not in page.text
        done = web.post(
            f"/admin/clients/{HARVESTER}/actions",
            data={"kind": "label", "label": "benign", "reason": "api user"},
            headers=auth,
        )
        assert done.status_code == 303
        bad = web.get("/admin/clients", headers={"authorization": "Bearer nope"})
        assert bad.status_code == 303
    assert site.redis.hget(site.keys.labels, HARVESTER) == b"benign"


def test_logout_ends_the_browser_session(site: Site) -> None:
    with site.logged_in() as web:
        csrf = csrf_of(web.get("/admin/clients").text)
        assert web.post("/admin/logout", data={"x": "1"}).status_code == 403  # no CSRF token
        out = web.post("/admin/logout", data={CSRF_FIELD: csrf})
        assert out.status_code == 303 and out.headers["location"] == "/admin/"
        assert f"{SESSION_COOKIE}=" in out.headers["set-cookie"]
        assert "Max-Age=0" in out.headers["set-cookie"] or "expires" in out.headers["set-cookie"]
        assert web.get("/admin/clients").status_code == 303


def test_campaigns_page_lists_linked_accounts(site: Site) -> None:
    campaign = {
        "id": "cmp-<1>",
        "members": [HARVESTER, BENIGN],
        "links": ["template", "ip"],
        "score": 0.88,
        "reasons": ["campaign_link:template"],
        "ts": int(time.time() * 1000),
    }
    site.redis.hset(site.keys.campaigns, "cmp-<1>", orjson.dumps(campaign))
    with site.logged_in() as web:
        page = web.get("/admin/campaigns")
        client = web.get(f"/admin/clients/{HARVESTER}").text
    assert page.status_code == 200
    assert_safe_page(page)
    assert "cmp-&lt;1&gt;" in page.text and "template, ip" in page.text
    assert f"/admin/clients/{BENIGN}" in page.text and "0.880" in page.text
    assert "cmp-&lt;1&gt;" in client and f"/admin/clients/{BENIGN}" in client


def test_store_unreachable_is_a_503_page(
    gateway: GatewayFactory, scripted_upstream: tuple[str, object]
) -> None:
    policy = {"detector": {"enabled": False}}
    with (
        gateway(
            scripted_upstream[0], policy=policy, admin_token=TOKEN, redis="redis://127.0.0.1:9"
        ) as url,
        httpx.Client(base_url=url, follow_redirects=False, timeout=10) as web,
    ):
        response = web.get("/admin/clients", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 503 and "Redis cannot be reached" in response.text
    assert response.headers["content-security-policy"] == CSP
