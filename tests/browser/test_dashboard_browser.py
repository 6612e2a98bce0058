"""The operator dashboard end to end, in a real browser (headless Chromium).

A real gateway on loopback with an admin token and prompt samples kept; real requests
through it, one carrying a script-injection prompt; the client flagged through the admin
API. Then an operator logs in, opens the client, sees the prompt as inert text, labels the
client through the form and finds the audit entry on the page and the label in Redis.
"""

from __future__ import annotations

import time

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Dialog, Page, expect

from gateway.identity import client_id_for
from gateway.keys import KeySpace
from tests.browser.conftest import Artifacts
from tests.gateway.admin.test_dashboard import detector_result
from tests.gateway.conftest import GatewayFactory, wait_for_events

TOKEN = "browser-test-admin-token-5b1e"
EVIL_PROMPT = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
HARVESTER_KEY = "sk-browser-harvester"
HARVESTER = client_id_for(HARVESTER_KEY, b"test-secret")
REASON = "Template sweep with <b>top_logprobs</b> & n>1"
ACTOR = "alice@review"


def send(url: str, key: str, prompt: str, **params: object) -> None:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "m", "messages": [{"role": "user", "content": prompt}], **params},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def flag(url: str, client: str) -> None:
    """Raise the client to throttle through the admin API, as an operator's tool would."""
    response = httpx.post(
        f"{url}/admin/api/clients/{client}/actions",
        headers={"authorization": f"Bearer {TOKEN}"},
        json={
            "action": "set_level",
            "level": "throttle",
            "reason": "suspected harvesting",
            "ttl": "1h",
            "actor": "triage-bot",
        },
        timeout=10,
    )
    assert response.status_code == 201, response.text


def test_operator_reviews_and_labels_a_flagged_client(
    browser: Browser,
    gateway: GatewayFactory,
    scripted_upstream: tuple[str, object],
    redis_sync: redis.Redis,
    keyspace: KeySpace,
    artifacts: Artifacts,
) -> None:
    policy = {
        "store": {"retention": {"keep_prompt_samples": True}},
        "detector": {"enabled": False},  # the level comes from the admin API here
    }
    with gateway(scripted_upstream[0], policy=policy, admin_token=TOKEN) as url:
        send(url, HARVESTER_KEY, "Give me 20 questions about chemistry.", top_logprobs=5)
        send(url, HARVESTER_KEY, EVIL_PROMPT, max_tokens=16)
        send(url, "sk-browser-benign", "What is the capital of France?")
        wait_for_events(redis_sync, keyspace, 3)
        detector_result(redis_sync, keyspace, HARVESTER, int(time.time() * 1000))
        flag(url, HARVESTER)

        context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        dialogs: list[str] = []

        def on_dialog(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        # A CSP violation or any script error would show here.
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            review(page, url, redis_sync, keyspace, artifacts)
            cookies = context.cookies()
        finally:
            context.close()
    assert dialogs == [], f"a dialog fired: {dialogs}"
    refused = "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    assert errors == [refused], f"console errors besides the wrong token's 401: {errors}"
    (session,) = cookies
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/admin"
    assert TOKEN not in session["value"]


def review(page: Page, url: str, r: redis.Redis, keys: KeySpace, artifacts: Artifacts) -> None:
    # (a) no session: the login page; a wrong token is refused
    response = page.goto("/admin/clients")
    assert response is not None and page.url == f"{url}/admin/"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    expect(page.get_by_role("heading", name="Operator login")).to_be_visible()
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong token.")
    assert page.context.cookies() == []

    # (b) log in
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{url}/admin/clients")
    expect(page.get_by_role("heading", name="Flagged clients")).to_be_visible()

    # (c) open the flagged client
    row = page.get_by_role("row").filter(has_text="throttle")
    expect(row).to_have_count(1)
    row.get_by_role("link", name=HARVESTER[:12]).click()
    expect(page).to_have_url(f"{url}/admin/clients/{HARVESTER}")

    # (d) the injected prompt is plain text and nothing ran
    samples = page.get_by_test_id("sample")
    expect(samples.filter(has_text="window.__pwned=1")).to_have_text(EVIL_PROMPT)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("main script, main img").count() == 0

    # (e) label it harvesting through the form
    form = page.get_by_role("form", name="label")
    form.get_by_label("Label").select_option("harvesting")
    form.get_by_label("Reason (required)").fill(REASON)
    form.get_by_label("Your name").fill(ACTOR)
    form.get_by_role("button", name="Save label").click()

    # (f) after the redirect: the audit entry on the page, the label in Redis
    expect(page).to_have_url(f"{url}/admin/clients/{HARVESTER}?done=label")
    expect(page.get_by_role("status")).to_have_text("Label saved.")
    entry = page.get_by_test_id("audit").get_by_role("row").filter(has_text=ACTOR)
    expect(entry).to_have_count(1)
    expect(entry).to_contain_text("label")
    expect(entry).to_contain_text("harvesting")
    expect(entry).to_contain_text(REASON)
    assert r.hget(keys.labels, HARVESTER) == b"harvesting"
    assert page.evaluate("typeof window.__pwned") == "undefined"

    shot = artifacts.path("dashboard.png")
    page.screenshot(path=str(shot), full_page=True)
    kept = artifacts.keep(shot)
    assert kept.stat().st_size > 10_000
    print(f"screenshot: {shot} (copied to {kept})")


@pytest.mark.parametrize("path", ["/admin/clients", "/admin/campaigns"])
def test_pages_open_without_a_session_only_as_the_login_form(
    browser: Browser,
    gateway: GatewayFactory,
    scripted_upstream: tuple[str, object],
    path: str,
) -> None:
    with gateway(
        scripted_upstream[0], policy={"detector": {"enabled": False}}, admin_token=TOKEN
    ) as url:
        page = browser.new_page(base_url=url)
        try:
            page.goto(path)
            assert page.url == f"{url}/admin/"
            expect(page.get_by_label("Admin token")).to_be_visible()
        finally:
            page.close()
