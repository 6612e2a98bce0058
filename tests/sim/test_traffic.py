"""The traffic simulator: reproducible, every family present, labels and metadata consistent."""

from __future__ import annotations

import io
from collections import Counter

import orjson
import pytest

from detectors.schema import RequestRecord
from gateway.store.events import DecisionEvent
from sim.traffic import FAMILIES, SCENARIOS, SimClient, dataset, generate
from sim.traffic.export import write_jsonl
from sim.traffic.live import check_loopback, plan


@pytest.fixture(scope="module")
def mix() -> list[SimClient]:
    return dataset(seed=3, scale=0.1)


def test_same_seed_same_output_other_seed_differs() -> None:
    a = generate("self_instruct", seed=1, clients=2, duration_s=7200)
    assert a == generate("self_instruct", seed=1, clients=2, duration_s=7200)
    assert a != generate("self_instruct", seed=2, clients=2, duration_s=7200)


def test_every_family_produces_labelled_clients(mix: list[SimClient]) -> None:
    families = Counter(c.family for c in mix)
    assert set(families) == set(FAMILIES)
    for c in mix:
        assert len(c.client) == 64 and int(c.client, 16) >= 0
        assert c.records, c.family
        assert c.attack == (c.attacker_share > 0)
        assert len(c.request_attack) == len(c.records)
    assert {c.attack for c in mix} == {True, False}


def test_every_scenario_generates() -> None:
    for name, spec in SCENARIOS.items():
        clients = generate(name, seed=0, clients=2, duration_s=6 * 3600)
        assert clients, name
        if spec.attack is None:
            continue
        assert all(c.family == spec.family and c.attack == spec.attack for c in clients)


def test_mixed_has_both_labels() -> None:
    clients = generate("mixed", seed=0, clients=12, duration_s=3 * 3600)
    assert 10 <= len(clients) <= 12  # a quiet client may send nothing in three hours
    assert {c.attack for c in clients} == {True, False}
    assert len({c.family for c in clients}) >= 8


def test_records_time_ordered_with_features_and_params(mix: list[SimClient]) -> None:
    statuses: Counter[int] = Counter()
    for c in mix:
        ts = [r.ts_ms for r in c.records]
        assert ts == sorted(ts)
        for r in c.records:
            assert r.client == c.client
            assert r.features.prompt_words > 0 or r.features.messages > 0
            assert r.params.get("model") in ("toy-lm", "toy-lm-think")
            assert r.prompt_tokens > 0
            assert r.client_ip and r.tls_fingerprint and r.org_id
            statuses[r.status] += 1
    assert statuses[200] > 0.9 * sum(statuses.values())


def test_hydra_accounts_share_campaign_and_infrastructure() -> None:
    accounts = generate("hydra", seed=5, clients=25)
    assert len(accounts) == 25
    assert len({c.campaign for c in accounts}) == 1 and accounts[0].campaign
    subnets = {r.client_ip.rsplit(".", 1)[0] for c in accounts for r in c.records}
    assert len(subnets) <= 3
    ja4 = Counter(c.records[0].tls_fingerprint for c in accounts)
    assert ja4.most_common(1)[0][1] >= 15
    assert len({c.records[0].org_id for c in accounts}) == 25
    # each account stays under the default tier's 60 requests per minute
    for c in accounts:
        assert all(r.status != 429 for r in c.records)


def test_benign_clients_mostly_have_their_own_subnets() -> None:
    users = generate("chat_user", seed=5, clients=30)
    subnets = {c.records[0].client_ip.rsplit(".", 1)[0] for c in users}
    assert len(subnets) >= 28
    assert all(c.campaign is None and not c.attack for c in users)


def test_blended_keys_have_the_stated_attack_share() -> None:
    keys = generate("blended", seed=2, clients=8)
    assert sorted({c.attacker_share for c in keys}) == [0.05, 0.10, 0.25, 0.50]
    for c in keys:
        share = sum(c.request_attack) / len(c.request_attack)
        assert abs(share - c.attacker_share) <= max(0.03, 0.15 * c.attacker_share), (
            c.attacker_share,
            share,
        )


def test_keep_bodies_aligns_with_records() -> None:
    (c,) = generate("agent", seed=0, clients=1, keep_bodies=True)
    assert c.bodies is not None and len(c.bodies) == len(c.records)
    assert any(m.get("role") == "tool" for b in c.bodies for m in b["messages"])


def test_export_lines_parse_as_decision_events() -> None:
    clients = generate("logprob_sweep", seed=0, clients=1, duration_s=3600)
    buf = io.BytesIO()
    n = write_jsonl(clients, buf)
    lines = buf.getvalue().splitlines()
    assert n == len(lines) == len(clients[0].records)
    first = orjson.loads(lines[0])
    assert first["label"]["family"] == "logprob_sweep" and first["label"]["attack"] is True
    record = RequestRecord.from_event(DecisionEvent.from_json(lines[0]))
    assert record == clients[0].records[0]


def test_unknown_names_are_refused() -> None:
    with pytest.raises(KeyError):
        generate("nope", seed=0)
    with pytest.raises(KeyError):
        dataset(seed=0, families=["nope"])


def test_live_plan_sends_first_attempts_with_keys_and_headers() -> None:
    clients = generate("eval_harness", seed=1, clients=2, duration_s=4 * 3600, keep_bodies=True)
    keys, sends = plan(clients, speed=100.0)
    assert [k.key for k in keys] == ["sim-eval_harness-1", "sim-eval_harness-2"]
    firsts = sum(len({id(b) for b in c.bodies or ()}) for c in clients)
    assert len(sends) == firsts
    assert [s.at for s in sends] == sorted(s.at for s in sends) and sends[0].at == 0.0
    assert all(s.headers["authorization"].startswith("Bearer sim-") for s in sends)
    assert all(s.headers["x-real-ip"] and s.headers["x-ja4"] for s in sends)


def test_live_mode_refuses_non_loopback() -> None:
    assert check_loopback("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert check_loopback("http://localhost:1") == "http://localhost:1"
    for url in ("http://10.0.0.1:80", "http://example.com", "ftp://127.0.0.1"):
        with pytest.raises(ValueError):
            check_loopback(url)
