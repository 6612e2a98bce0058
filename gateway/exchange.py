"""The per-request record that the stages fill in and the decision log writes out."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.controls import ControlSet
from gateway.identity import Client
from gateway.policy import Policy, Route
from gateway.ratelimit.limiter import Admission, Charge


@dataclass(slots=True)
class Exchange:
    """One request on its way through the gateway.

    Request stages read and change it in order; any of them may answer early. ``controls``
    (set by the admit stage once the client's level is known) are the anti-distillation
    controls in force; ``state`` is scratch space that a stage keeps across the events of
    one stream, keyed by the stage's name. The body
    that is forwarded is ``body`` when ``body_modified`` is set, else ``raw_body`` as
    received. Everything here except ``raw_body`` and ``body`` ends up in the decision
    event, so stages record what they did in ``reasons`` and ``modifications``.
    """

    id: str
    route: Route
    policy: Policy
    method: str
    headers: dict[str, str]
    raw_body: bytes
    receive_body: Callable[[int], Awaitable[bytes]] | None = None
    started: float = field(default_factory=time.perf_counter)
    received_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    body: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)  # as the client sent them
    body_modified: bool = False
    client: Client | None = None
    admission: Admission | None = None
    level: str = "allow"
    controls: ControlSet | None = None
    state: dict[str, Any] = field(default_factory=dict)
    charges: tuple[Charge, ...] = ()
    lease_id: str = ""
    inflight_key: str | None = None
    prompt_tokens_est: int = 0
    output_tokens_reserved: int = 0
    decision: str = "pending"
    reasons: list[str] = field(default_factory=list)
    modifications: list[str] = field(default_factory=list)
    response_headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    upstream_status: int | None = None
    upstream_latency_ms: float | None = None
    stream: bool = False
    stream_cut: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    usage_reported: bool = False
    settle_tokens: bool = False

    @property
    def reserved_tokens(self) -> int:
        return self.prompt_tokens_est + self.output_tokens_reserved

    def param(self, name: str) -> Any:
        """A top-level request parameter, or None."""
        return self.body.get(name) if self.body is not None else None
