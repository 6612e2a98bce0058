from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis
import typer
from typer.testing import CliRunner

from gateway.cli import app, parse_duration
from gateway.identity import client_id_for

runner = CliRunner()


def test_parse_duration() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    assert parse_duration("never") is None
    for bad in ("", "10x", "m"):
        with pytest.raises(typer.BadParameter):
            parse_duration(bad)


def test_keys_hash_uses_the_server_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTIDISTILL_KEY_SECRET", "abc")
    result = runner.invoke(app, ["keys", "hash", "my-key", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output.strip() == client_id_for("my-key", b"abc")


def test_generated_secret_is_stable(tmp_path: Path) -> None:
    first = runner.invoke(
        app, ["keys", "hash", "k", "--data-dir", str(tmp_path)], env={"ANTIDISTILL_KEY_SECRET": ""}
    )
    second = runner.invoke(app, ["keys", "hash", "k", "--data-dir", str(tmp_path)])
    assert first.exit_code == 0 and first.output == second.output
    assert (tmp_path / "key_secret").stat().st_mode & 0o777 == 0o600


def test_policy_check_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("shadow: true\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("shadow: true\ntiers:\n  default:\n    limits: {requests_per_minute: zero}\n")
    ok = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "check", str(good)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0
    failed = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "check", str(good), str(bad)],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1
    assert f"{bad}:4: tiers.default.limits.requests_per_minute" in failed.stderr


def test_set_level_and_show(redis_url: str, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("store: {key_prefix: adtest-cli}\n")
    cid = "a" * 64
    args = ["--redis", redis_url, "--policy", str(policy)]
    result = runner.invoke(
        app,
        ["client", "set-level", cid, "throttle", "--reason", "Scraping <b>", "--ttl", "10m", *args],
    )
    assert result.exit_code == 0, result.output
    assert "throttle (operator:scraping_b_)" in result.output
    shown = runner.invoke(app, ["client", "show", cid, *args])
    assert '"level": "throttle"' in shown.output
    bad = runner.invoke(app, ["client", "set-level", cid, "nuke", "--reason", "x", *args])
    assert bad.exit_code != 0
    blank = runner.invoke(app, ["client", "set-level", cid, "block", "--reason", " ", *args])
    assert blank.exit_code == 2 and "reason" in blank.output
    # the change is in the audit trail, with the whole reason
    audit = redis.Redis.from_url(redis_url).xrevrange("adtest-cli:audit", count=1)
    fields = {k.decode(): v.decode() for k, v in audit[0][1].items()}
    assert fields["action"] == "set_level" and fields["reason"] == "Scraping <b>"
    assert fields["client"] == cid and fields["level"] == "throttle"


def test_serve_help_lists_options() -> None:
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--upstream", "--policy", "--redis", "--host", "--port", "--workers"):
        assert option in result.output


@pytest.mark.parametrize("command", [["serve", "--upstream", "http://127.0.0.1:9"], ["worker"]])
def test_a_detector_model_that_cannot_load_refuses_to_start(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detectors.models import sequence

    monkeypatch.setattr(sequence, "torch_available", lambda: False)
    policy = tmp_path / "p.yaml"
    policy.write_text("detector: {model: combined}\n")
    result = runner.invoke(app, [*command, "--policy", str(policy), "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "cannot start the detector" in result.output and "needs torch" in result.output
