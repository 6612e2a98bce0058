"""Response stage: ProbabilityGuard (not yet implemented: passes everything through)."""

from __future__ import annotations

from typing import Any

from gateway.exchange import Exchange


class ProbabilityGuard:
    name = "probabilities"

    def __init__(self, secret: bytes = b"") -> None:
        self._secret = secret

    def on_json(self, ex: Exchange, body: dict[str, Any]) -> bool:
        return False

    def on_event(self, ex: Exchange, event: dict[str, Any]) -> bool:
        return False
