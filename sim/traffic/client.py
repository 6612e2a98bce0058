"""The simulator's output: synthetic clients with ground truth and their request records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from detectors.schema import RequestRecord

CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"


@dataclass(frozen=True, slots=True)
class SimClient:
    """One synthetic client (an API key) and everything it sent, with its label.

    ``attacker_share`` is the fraction of the key's requests that are harvesting (0 for
    benign clients, 1 for pure attackers, 0.05 to 0.5 for blended keys); ``campaign`` is shared
    by the accounts of one hydra network. ``request_attack`` says, per record, whether that
    request was harvesting (all True for pure attackers, a share of them for blended keys).
    """

    client: str
    family: str
    attack: bool
    attacker_share: float
    campaign: str | None
    records: tuple[RequestRecord, ...]
    bodies: tuple[dict[str, Any], ...] | None = None
    request_attack: tuple[bool, ...] = ()


@dataclass(frozen=True, slots=True)
class Draft:
    """One request before it becomes a record: when, what, and how long the answer was."""

    t: float  # seconds since the simulation start
    body: dict[str, Any]
    completion_tokens: int
    attack: bool = False
    route: str = CHAT_ROUTE


@dataclass(frozen=True, slots=True)
class Identity:
    """A client's edge metadata: the IPs it comes from, its TLS fingerprint, its org."""

    ips: tuple[str, ...]
    ja4: str
    org_id: str
    rpm: int  # the requests-per-minute limit of the client's tier
