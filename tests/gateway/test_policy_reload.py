"""Hot reload of the policy file: by file watch and by SIGHUP; a bad file keeps the running one."""

from __future__ import annotations

import copy
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.keys import KeySpace
from tests.gateway.conftest import GatewayFactory
from tests.servers import free_port, run_cli

AUTH = {"authorization": "Bearer test-key-1"}
CHAT = {"model": "plain", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
POLL_S = 0.2


def _limit_policy(rpm: int) -> dict[str, Any]:
    return {"tiers": {"default": {"limits": {"requests_per_minute": rpm}}}}


def _replace(path: Path, text: str) -> None:
    """Write the file as editors and deploy tools should: a new file renamed over the old."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _with_rpm(path: Path, rpm: int) -> str:
    doc = yaml.safe_load(path.read_text())
    doc = copy.deepcopy(doc)
    doc["tiers"]["default"]["limits"]["requests_per_minute"] = rpm
    return yaml.safe_dump(doc)


def _limit(gw: str) -> str:
    r = httpx.post(f"{gw}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30)
    assert r.status_code in (200, 429), r.text  # served either way; 429 also names the limit
    return r.headers["x-ratelimit-limit-requests"]


def _reloads(gw: str, result: str) -> float:
    prefix = f'antidistill_policy_reloads_total{{result="{result}"}} '
    for line in httpx.get(f"{gw}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "antidistill.policy"
        and r.levelno == logging.ERROR
        and "refused" in r.getMessage()
    ]


def test_file_watch_applies_edits_and_keeps_the_policy_on_bad_ones(
    gateway: GatewayFactory,
    scripted_upstream: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="antidistill.policy")
    url, _ = scripted_upstream
    with gateway(url, _limit_policy(2), policy_poll_s=POLL_S) as gw:
        [path] = tmp_path.glob("policy-*.yaml")
        assert _limit(gw) == "2"

        _replace(path, _with_rpm(path, 100))
        _wait(lambda: _reloads(gw, "ok") == 1, "the reload")
        assert _limit(gw) == "100"
        good = path.read_text()

        # Invalid settings: refused, the running policy stays, the log says where and why.
        bad = good.replace("requests_per_minute: 100", "requests_per_minute: -5\n  colour: red")
        assert bad != good
        _replace(path, bad)
        _wait(lambda: _reloads(gw, "invalid") == 1, "the refused reload")
        assert _limit(gw) == "100"
        [refusal] = _refusals(caplog)
        problems = refusal.__dict__["problems"]
        assert any(p.startswith(f"{path}:") and "requests_per_minute" in p for p in problems)
        assert any("colour" in p for p in problems)

        # Not YAML at all: refused too.
        _replace(path, "tiers: [unclosed\n")
        _wait(lambda: _reloads(gw, "invalid") == 2, "the second refused reload")
        assert "invalid YAML" in str(_refusals(caplog)[-1].__dict__["problems"])
        assert _limit(gw) == "100"

        # The file gone (a deploy between steps): refused, then back and applied.
        path.unlink()
        _wait(lambda: _reloads(gw, "invalid") == 3, "the refused reload of a missing file")
        assert _limit(gw) == "100"
        _replace(path, good.replace("requests_per_minute: 100", "requests_per_minute: 7"))
        _wait(lambda: _reloads(gw, "ok") == 2, "the reload of the fixed file")
        assert _limit(gw) == "7"
    assert _reloads_logged(caplog) == 2


def _reloads_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        r.name == "antidistill.policy" and r.getMessage() == "policy reloaded"
        for r in caplog.records
    )


def test_change_within_one_timestamp_tick_is_noticed(
    gateway: GatewayFactory, scripted_upstream: Any, tmp_path: Path
) -> None:
    """A file rewritten with the same modification time (coarse timestamps, two saves in
    one tick, or a tool that preserves times) still gets reloaded."""
    url, _ = scripted_upstream
    with gateway(url, _limit_policy(2), policy_poll_s=POLL_S) as gw:
        [path] = tmp_path.glob("policy-*.yaml")
        before = path.stat().st_mtime_ns
        path.write_text(_with_rpm(path, 1000))  # different size, same times below
        os.utime(path, ns=(before, before))
        _wait(lambda: _reloads(gw, "ok") == 1, "the reload")
        assert _limit(gw) == "1000"


def test_sighup_reloads_the_policy(
    redis_url: str, scripted_upstream: Any, keyspace: KeySpace, tmp_path: Path
) -> None:
    url, _ = scripted_upstream
    path = tmp_path / "policy.yaml"
    doc = {**_limit_policy(2), "store": {"key_prefix": keyspace.prefix}}
    path.write_text(yaml.safe_dump(doc))
    port = free_port()
    gw = f"http://127.0.0.1:{port}"
    args = [
        "serve",
        "--upstream",
        url,
        "--policy",
        str(path),
        "--redis",
        redis_url,
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    env = {"ANTIDISTILL_POLICY_POLL_S": "0", "ANTIDISTILL_KEY_SECRET": "test-secret"}
    with run_cli(args, f"{gw}/healthz", cwd=tmp_path, env=env) as proc:
        assert _limit(gw) == "2"
        _replace(path, _with_rpm(path, 50))
        assert _limit(gw) == "2"  # no watcher: nothing changes until the signal
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _reloads(gw, "ok") == 1, "the reload on SIGHUP")
        assert _limit(gw) == "50"
        path.write_text("version: 2\n")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _reloads(gw, "invalid") == 1, "the refused reload on SIGHUP")
        assert _limit(gw) == "50"
        assert proc.poll() is None
