"""``antidistill sim``: list, export, and a short live run through a real gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from typer.testing import CliRunner

from gateway.cli import app
from gateway.keys import KeySpace
from sim.toy_upstream import create_app as create_toy_upstream
from tests.gateway import conftest as gateway_fixtures
from tests.servers import serve_app

gateway = gateway_fixtures.gateway
redis_sync = gateway_fixtures.redis_sync
runner = CliRunner()


@pytest.fixture(scope="module")
def toy_upstream() -> Iterator[str]:
    with serve_app(create_toy_upstream()) as url:
        yield url


def test_list_names_every_scenario() -> None:
    result = runner.invoke(app, ["sim", "list"])
    assert result.exit_code == 0, result.output
    assert "hydra" in result.output and "eval_harness" in result.output


def test_export_writes_labelled_events(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    args = ["sim", "export", "--out", str(out), "--scenario", "hydra", "--clients", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    first = orjson.loads(out.read_bytes().splitlines()[0])
    assert first["label"]["family"] == "hydra" and first["features"]


def test_run_refuses_non_loopback_targets() -> None:
    args = ["sim", "run", "--target", "http://example.com", "--scenario", "chat_user"]
    result = runner.invoke(app, args)
    assert result.exit_code != 0


def test_live_run_produces_decision_events(
    gateway: gateway_fixtures.GatewayFactory,
    toy_upstream: str,
    redis_sync: redis.Redis,
    keyspace: KeySpace,
) -> None:
    trusted = {"client_ip": "x-real-ip", "tls_fingerprint": "x-ja4", "org_id": "x-org-id"}
    policy = {"identity": {"trusted_headers": trusted}}
    with gateway(toy_upstream, policy=policy) as url:
        args = ["sim", "run", "--target", url, "--scenario", "hydra", "--clients", "3",
                "--speed", "3000", "--duration", "4", "--concurrency", "8"]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "sim-hydra-1 -> hydra -> attack" in result.output
        events = gateway_fixtures.wait_for_events(redis_sync, keyspace, 5)
    assert len(events) >= 5
    assert {e["route"] for e in events} <= {"/v1/chat/completions", "/v1/completions"}
    assert all(e["client_ip"] and e["tls_fingerprint"] and e["org_id"] for e in events)
    assert len({e["client"] for e in events}) == 3
