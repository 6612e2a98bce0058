"""Client identity: API key → client id, plus trusted edge metadata.

The client id is HMAC-SHA256(server secret, key) in hex. Raw keys never leave this module:
nothing stores or logs them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.policy import Limits, Policy

ANONYMOUS = "anonymous"


def client_id_for(key: str, secret: bytes) -> str:
    """The stable, non-reversible id of an API key."""
    return hmac.new(secret, key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def extract_key(headers: Mapping[str, str]) -> str | None:
    """The API key from ``Authorization: Bearer …`` or ``x-api-key``, if any."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    if key and key.strip():
        return key.strip()
    return None


@dataclass(frozen=True, slots=True)
class Client:
    """Who is asking, and which limits apply to them."""

    id: str
    tier: str
    known: bool
    allowlisted: bool
    limits: Limits
    client_ip: str | None = None
    tls_fingerprint: str | None = None
    org_id: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request gets 401."""

    code: str
    message: str


def _trusted(headers: Mapping[str, str], name: str | None) -> str | None:
    if name is None:
        return None
    value = headers.get(name.lower())
    return value[:256] if value else None


def identify(headers: Mapping[str, str], policy: Policy, secret: bytes) -> Client | Rejection:
    """Resolve the client of a request under ``policy`` (headers keyed in lower case)."""
    key = extract_key(headers)
    if key is None:
        if policy.identity.missing_key == "reject":
            return Rejection("missing_api_key", "No API key: send 'Authorization: Bearer <key>'.")
        client_id, override = ANONYMOUS, None
    else:
        client_id = client_id_for(key, secret)
        override = policy.clients.get(client_id)
        if override is None and policy.identity.unknown_keys == "reject":
            return Rejection("invalid_api_key", "Unknown API key.")
    tier_name = (override.tier if override else None) or policy.identity.default_tier
    limits = policy.tiers[tier_name].limits
    if override is not None:
        limits = limits.merged(override.limits)
    trusted = policy.identity.trusted_headers
    return Client(
        id=client_id,
        tier=tier_name,
        known=override is not None,
        allowlisted=bool(override and override.allowlist),
        limits=limits,
        client_ip=_trusted(headers, trusted.client_ip),
        tls_fingerprint=_trusted(headers, trusted.tls_fingerprint),
        org_id=_trusted(headers, trusted.org_id),
    )
