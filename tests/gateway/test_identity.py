from __future__ import annotations

from gateway.identity import Client, Rejection, client_id_for, extract_key, identify
from gateway.policy import Policy
from gateway.policy_file import parse_policy

SECRET = b"s3cret"


def test_key_from_bearer_or_x_api_key() -> None:
    assert extract_key({"authorization": "Bearer abc"}) == "abc"
    assert extract_key({"authorization": "bearer  abc "}) == "abc"
    assert extract_key({"x-api-key": "xyz"}) == "xyz"
    assert extract_key({"authorization": "Basic Zm9v"}) is None
    assert extract_key({"authorization": "Bearer "}) is None
    assert extract_key({}) is None


def test_client_id_is_keyed_hmac_not_the_key() -> None:
    cid = client_id_for("sk-live-1", SECRET)
    assert len(cid) == 64 and "sk-live-1" not in cid
    assert cid == client_id_for("sk-live-1", SECRET)
    assert cid != client_id_for("sk-live-1", b"other")
    assert cid != client_id_for("sk-live-2", SECRET)


def test_unknown_and_missing_keys_follow_policy() -> None:
    strict = parse_policy("identity: {unknown_keys: reject, missing_key: reject}")
    assert isinstance(identify({"authorization": "Bearer k"}, strict, SECRET), Rejection)
    assert isinstance(identify({}, strict, SECRET), Rejection)
    lenient = parse_policy("identity: {unknown_keys: default_tier, missing_key: default_tier}")
    client = identify({}, lenient, SECRET)
    assert isinstance(client, Client) and client.id == "anonymous"


def test_override_tier_limits_and_allowlist() -> None:
    cid = client_id_for("partner-key", SECRET)
    policy = parse_policy(
        "tiers:\n  default: {}\n  partner:\n"
        "    limits: {requests_per_minute: 600, tokens_per_minute: 9}\n"
        f"clients:\n  '{cid}':\n    tier: partner\n    allowlist: true\n"
        "    limits: {tokens_per_minute: 50}\n"
    )
    client = identify({"authorization": "Bearer partner-key"}, policy, SECRET)
    assert isinstance(client, Client)
    assert client.tier == "partner" and client.known and client.allowlisted
    assert client.limits.requests_per_minute == 600
    assert client.limits.tokens_per_minute == 50


def test_metadata_only_from_trusted_headers() -> None:
    headers = {
        "authorization": "Bearer k",
        "x-real-ip": "10.0.0.9",
        "x-ja4": "t13d",
        "x-org": "acme",
    }
    untrusted = identify(headers, Policy(), SECRET)
    assert (
        isinstance(untrusted, Client)
        and untrusted.client_ip is None
        and untrusted.tls_fingerprint is None
    )
    trusted = identify(
        headers,
        parse_policy("identity: {trusted_headers: {client_ip: X-Real-IP, tls_fingerprint: x-ja4}}"),
        SECRET,
    )
    assert isinstance(trusted, Client)
    assert (
        trusted.client_ip == "10.0.0.9"
        and trusted.tls_fingerprint == "t13d"
        and trusted.org_id is None
    )
