"""What the detector sees: the contract between the gateway, the simulator and the models.

The gateway computes :class:`RequestFeatures` for every request (a pure function of the
request body, ``detectors.features.request_features``) and stores them in the decision
event; the simulator produces the same events for its synthetic clients; the detector reads
events back as :class:`RequestRecord` and turns a client's recent records into one window
feature vector (``detectors.windows.window_features``) that a model scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.store.events import DecisionEvent


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """Per-request features: cheap (microseconds), pure, and never the prompt itself.

    ``sketch`` is a 64-bit SimHash of the prompt's word shingles (near-duplicate detection
    by Hamming distance, and a 64-dimensional ±1 embedding for distribution distances);
    ``template`` is the same over the prompt with numbers, quoted spans and rare words
    masked, so prompts filled from one template share it.
    """

    prompt_chars: int = 0
    prompt_words: int = 0
    messages: int = 0
    user_turns: int = 0
    system_chars: int = 0
    reasoning_marker: bool = False
    sketch: int = 0
    template: int = 0

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "pc": self.prompt_chars,
                "pw": self.prompt_words,
                "m": self.messages,
                "u": self.user_turns,
                "sc": self.system_chars,
                "r": int(self.reasoning_marker),
                "s": f"{self.sketch:016x}",
                "t": f"{self.template:016x}",
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str) -> RequestFeatures:
        if not text:
            return cls()
        raw: dict[str, Any] = orjson.loads(text)
        return cls(
            prompt_chars=int(raw.get("pc", 0)),
            prompt_words=int(raw.get("pw", 0)),
            messages=int(raw.get("m", 0)),
            user_turns=int(raw.get("u", 0)),
            system_chars=int(raw.get("sc", 0)),
            reasoning_marker=bool(raw.get("r", 0)),
            sketch=int(raw.get("s", "0"), 16),
            template=int(raw.get("t", "0"), 16),
        )


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the detector reads it from the decision log (or the simulator)."""

    ts_ms: int
    client: str
    route: str
    status: int
    decision: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    features: RequestFeatures = RequestFeatures()
    client_ip: str = ""
    tls_fingerprint: str = ""
    org_id: str = ""

    @classmethod
    def from_event(cls, event: DecisionEvent) -> RequestRecord:
        return cls(
            ts_ms=event.ts,
            client=event.client,
            route=event.route,
            status=event.status,
            decision=event.decision,
            prompt_tokens=event.prompt_tokens or 0,
            completion_tokens=event.completion_tokens,
            params=dict(event.params),
            features=RequestFeatures.from_json(event.features),
            client_ip=event.client_ip,
            tls_fingerprint=event.tls_fingerprint,
            org_id=event.org_id,
        )
