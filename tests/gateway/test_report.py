"""``antidistill report`` against real traffic through a real gateway, on a real Redis.

The gateway writes the decision events, summaries and prompt samples; the detector's keys
(score, history, explanation, flagged set, level, campaigns, audit) are written as the
detector worker writes them (``/work/notes/storage.md``), so the report is tested on the
stored contract without waiting for a model to flag anyone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import yaml
from typer.testing import CliRunner

from gateway.admin import audit
from gateway.admin.audit import AuditEntry
from gateway.cli import app
from gateway.identity import client_id_for
from gateway.keys import KeySpace
from gateway.ratelimit.limiter import Limiter
from tests.gateway.conftest import GatewayFactory, wait_for_events

runner = CliRunner()
SECRET = b"test-secret"
ATTACK_PROMPT = (
    "<script>alert('pwned')</script> Solve step by step and show all reasoning: task {i}"
)
EVIL_NAME = '<img src=x onerror="alert(1)">harvester'


@dataclass(frozen=True)
class Seeded:
    attacker: str
    partner: str  # a second attacker account, linked to the first
    benign: str
    campaign: str
    args: list[str]  # --redis and --policy (samples kept)
    args_no_samples: list[str]  # same store, a policy that keeps no samples


def _chat(url: str, key: str, prompt: str, **params: Any) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], **params}
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text


async def _write_detector_state(redis_url: str, keys: KeySpace, seeded: Seeded) -> None:
    """What the detector worker stores after it flagged the two attackers."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        now = int(time.time() * 1000)
        scored = {seeded.attacker: 0.9431, seeded.partner: 0.7712, seeded.benign: 0.0412}
        levels = {seeded.attacker: "throttle", seeded.partner: "degrade", seeded.benign: "allow"}
        explain = [
            ["logprob_share", 2.1042, 1.0, 0.0],
            ["reasoning_share", 1.3311, 1.0, 0.05],
            ["template_reuse", 0.8123, 0.92, 0.11],
        ]
        for client, score in scored.items():
            level = levels[client]
            flagged = level != "allow"
            await redis.hset(
                keys.detector(client),
                mapping={
                    "score": f"{score:.4f}",
                    "level": level,
                    "reasons": f"detector:{score:.2f},logprob_share_high" if flagged else "",
                    "ts": str(now),
                    "window": "40",
                    "seen": "40",
                    "flagged_after": "24" if flagged else "0",
                    "shadow": "0",
                    "explain": orjson.dumps(explain if flagged else []).decode(),
                    "campaign": seeded.campaign if flagged else "",
                },
            )
            for i in range(12):  # rising for attackers, flat for the benign client
                value = score * (i + 1) / 12 if flagged else score
                shown = level if flagged and value >= 0.5 else "allow"
                await redis.rpush(
                    keys.score_history(client),
                    f"{now - (12 - i) * 60_000} {value:.4f} {shown}",
                )
            if flagged:
                await redis.zadd(keys.flagged, {client: score})
                await Limiter(redis).set_level(
                    keys.level(client), level, [f"detector:{score:.2f}", "logprob_share_high"], 3600
                )
                await audit.append(
                    redis,
                    keys,
                    AuditEntry(
                        id="",
                        ts_ms=now - 60_000,
                        actor="detector",
                        action="detector_level",
                        client=client,
                        reason=f"detector:{score:.2f},logprob_share_high",
                        level=level,
                        previous_level="watch",
                    ),
                )
        await redis.hset(keys.labels, seeded.attacker, "harvesting")
        await redis.hset(
            keys.campaigns,
            seeded.campaign,
            orjson.dumps(
                {
                    "id": seeded.campaign,
                    "members": [seeded.attacker, seeded.partner],
                    "links": ["template", "timing"],
                    "score": 0.9431,
                    "reasons": [f"campaign:{seeded.campaign}", "campaign_link:template"],
                    "ts": now,
                }
            ),
        )
    finally:
        await redis.aclose()


@pytest.fixture
def seeded(
    gateway: GatewayFactory,
    scripted_upstream: tuple[str, Any],
    redis_sync: Any,
    redis_url: str,
    keyspace: KeySpace,
    tmp_path: Path,
) -> Seeded:
    attacker = client_id_for("attacker-key", SECRET)
    partner = client_id_for("partner-key", SECRET)
    benign = client_id_for("benign-key", SECRET)
    policy: dict[str, Any] = {
        "store": {"key_prefix": keyspace.prefix, "retention": {"keep_prompt_samples": True}},
        "detector": {"enabled": False},
        "clients": {attacker: {"name": EVIL_NAME}, benign: {"name": "friendly-app"}},
    }
    with gateway(scripted_upstream[0], policy=policy) as url:
        for i in range(8):
            _chat(url, "attacker-key", ATTACK_PROMPT.format(i=i), logprobs=True, top_logprobs=5)
        for i in range(4):
            _chat(url, "partner-key", f"Solve step by step: task {i}", temperature=0)
        for i in range(3):
            _chat(url, "benign-key", f"what should I cook tonight, idea {i}?", temperature=0.7)
        wait_for_events(redis_sync, keyspace, 15)
    seeded = Seeded(attacker, partner, benign, "cmp-7f3a", [], [])
    asyncio.run(_write_detector_state(redis_url, keyspace, seeded))
    kept = tmp_path / "report-policy.yaml"
    kept.write_text(yaml.safe_dump(policy))
    not_kept = tmp_path / "report-policy-no-samples.yaml"
    not_kept.write_text(yaml.safe_dump({**policy, "store": {"key_prefix": keyspace.prefix}}))
    return Seeded(
        attacker,
        partner,
        benign,
        seeded.campaign,
        ["--redis", redis_url, "--policy", str(kept)],
        ["--redis", redis_url, "--policy", str(not_kept)],
    )


def test_html_report_shows_the_attackers_with_plots_and_reasons(seeded: Seeded) -> None:
    result = runner.invoke(app, ["report", "--format", "html", *seeded.args])
    assert result.exit_code == 0, result.output
    page = result.stdout
    assert page.startswith("<!doctype html>")
    assert seeded.attacker in page and seeded.partner in page
    assert seeded.benign not in page and "friendly-app" not in page
    # the attacker ranks first (highest score), each flagged client has a score plot
    assert page.index(seeded.attacker) < page.index(seeded.partner)
    assert page.count('aria-label="score over time: 12 points') == 2
    assert "logprob_share" in page and "reasoning_share" in page  # evidence rows
    assert "detector_level" in page and "watch → throttle" in page  # audit history
    assert seeded.campaign in page and "template, timing" in page  # linked accounts
    assert "harvesting" in page and "throttle" in page


class _Tags(HTMLParser):
    """Every element and attribute of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs += [(name, value or "") for name, value in attrs]


def test_html_report_is_self_contained_and_escapes_attacker_text(seeded: Seeded) -> None:
    result = runner.invoke(app, ["report", "--format", "html", *seeded.args])
    assert result.exit_code == 0, result.output
    page = result.stdout
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page  # the prompt sample
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;harvester" in page  # the name
    parsed = _Tags()
    parsed.feed(page)
    assert "svg" in parsed.tags and "style" in parsed.tags
    assert not parsed.tags & {"script", "img", "link", "iframe", "object", "embed", "base"}
    names = {name for name, _ in parsed.attrs}
    assert not {n for n in names if n.startswith("on")}, names
    assert not names & {"src", "srcset", "action", "formaction"}
    # links stay inside the page; the only URL is the SVG namespace
    assert all(v.startswith("#") for n, v in parsed.attrs if n == "href")
    assert {v for n, v in parsed.attrs if "://" in v} <= {"http://www.w3.org/2000/svg"}
    assert "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page


def test_samples_only_when_the_policy_keeps_them(seeded: Seeded) -> None:
    result = runner.invoke(app, ["report", "--format", "html", *seeded.args_no_samples])
    assert result.exit_code == 0, result.output
    assert seeded.attacker in result.stdout
    assert "pwned" not in result.stdout
    assert "keep_prompt_samples" in result.stdout
    as_json = runner.invoke(app, ["report", "--format", "json", *seeded.args_no_samples])
    assert as_json.exit_code == 0, as_json.output
    assert "pwned" not in as_json.stdout


def test_table_report(seeded: Seeded) -> None:
    result = runner.invoke(app, ["report", *seeded.args])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "2 flagged clients" in text
    assert seeded.attacker[:12] in text and seeded.partner[:12] in text
    assert seeded.benign[:12] not in text
    first = next(line for line in text.splitlines() if seeded.attacker[:12] in line)
    assert "throttle" in first and "0.943" in first and "harvesting" in first
    assert seeded.campaign in first and "logprob_share_high" in first
    assert "1 campaign" in text and "template, timing" in text
    top = runner.invoke(app, ["report", "--limit", "1", *seeded.args])
    assert top.exit_code == 0, top.output
    assert "1 flagged client (the top ones; more with --limit)" in top.stdout
    clients_part = top.stdout.split("1 campaign")[0]
    assert seeded.attacker[:12] in clients_part and seeded.partner[:12] not in clients_part


def test_all_includes_unflagged_clients(seeded: Seeded) -> None:
    result = runner.invoke(app, ["report", "--all", *seeded.args])
    assert result.exit_code == 0, result.output
    assert seeded.benign[:12] in result.stdout
    lines = result.stdout.splitlines()
    rank = {
        c: next(i for i, line in enumerate(lines) if c[:12] in line)
        for c in (seeded.attacker, seeded.benign)
    }
    assert rank[seeded.attacker] < rank[seeded.benign]


def test_json_report(seeded: Seeded) -> None:
    result = runner.invoke(app, ["report", "--format", "json", "--since", "1h", *seeded.args])
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert {"generated_at", "since", "clients", "campaigns"} <= set(doc)
    ids = [c["summary"]["id"] for c in doc["clients"]]
    assert ids == [seeded.attacker, seeded.partner]
    attacker = doc["clients"][0]
    assert attacker["summary"]["level"] == "throttle"
    assert attacker["summary"]["label"] == "harvesting"
    assert attacker["evidence"][0]["feature"] == "logprob_share"
    assert len(attacker["history"]) == 12
    assert any("<script>alert('pwned')</script>" in s for s in attacker["samples"])
    assert attacker["params"]["requests"] == 8
    assert [c["id"] for c in doc["campaigns"]] == [seeded.campaign]


def test_out_writes_the_file(seeded: Seeded, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "report.html"
    target.parent.mkdir()
    target.write_text("old")
    result = runner.invoke(app, ["report", "--format", "html", "--out", str(target), *seeded.args])
    assert result.exit_code == 0, result.output
    assert "<html" not in result.stdout
    page = target.read_text()
    assert page.startswith("<!doctype html>") and seeded.attacker in page
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temp file left
    assert target.stat().st_mode & 0o777 == 0o600  # it may hold prompt samples
    missing = runner.invoke(
        app, ["report", "--out", str(tmp_path / "nope" / "r.html"), *seeded.args]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_nothing_flagged(redis_url: str, keyspace: KeySpace, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump({"store": {"key_prefix": keyspace.prefix}}))
    args = ["--redis", redis_url, "--policy", str(policy)]
    table = runner.invoke(app, ["report", *args])
    assert table.exit_code == 0, table.output
    assert "no flagged clients since" in table.stdout
    html = runner.invoke(app, ["report", "--format", "html", *args])
    assert html.exit_code == 0 and "No flagged clients since" in html.stdout


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--format", "xml"], "--format must be one of table, json, html"),
        (["--since", "yesterday"], "--since"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_bad_options_exit_2(option: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", *option, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
