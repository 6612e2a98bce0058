"""The decision event: one per request, the schema of the ``decisions`` stream."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson

_LIST_FIELDS = ("reasons", "modifications")
_JSON_FIELDS = ("params", "limits")


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    """What the gateway decided about one request, and what it knew when deciding.

    Stored in Redis as flat string fields: lists comma-joined, mappings as JSON, booleans
    as 0/1, missing values as empty strings.
    """

    ts: int
    id: str
    client: str
    route: str
    decision: str
    status: int
    tier: str = ""
    method: str = "POST"
    level: str = "allow"
    reasons: tuple[str, ...] = ()
    modifications: tuple[str, ...] = ()
    shadow: bool = False
    upstream_status: int | None = None
    latency_ms: float = 0.0
    upstream_latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    reserved_tokens: int = 0
    stream: bool = False
    stream_cut: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    client_ip: str = ""
    tls_fingerprint: str = ""
    org_id: str = ""
    features: str = ""  # detectors.schema.RequestFeatures as JSON
    prompt_sample: str = ""  # redacted latest user message (policy keep_prompt_samples)

    def to_fields(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _LIST_FIELDS:
                out[f.name] = ",".join(value)
            elif f.name in _JSON_FIELDS:
                out[f.name] = orjson.dumps(value).decode()
            elif isinstance(value, bool):
                out[f.name] = "1" if value else "0"
            elif value is None:
                out[f.name] = ""
            else:
                out[f.name] = str(value)
        return out

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> DecisionEvent:
        """Parse stored fields; unknown fields (from newer gateways) are ignored."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in fields:
                continue
            raw = fields[f.name]
            if f.name in _LIST_FIELDS:
                kwargs[f.name] = tuple(x for x in raw.split(",") if x)
            elif f.name in _JSON_FIELDS:
                kwargs[f.name] = orjson.loads(raw) if raw else {}
            elif f.type in ("bool",):
                kwargs[f.name] = raw == "1"
            elif f.type in ("int",):
                kwargs[f.name] = int(raw)
            elif f.type in ("int | None",):
                kwargs[f.name] = int(raw) if raw else None
            elif f.type in ("float",):
                kwargs[f.name] = float(raw)
            elif f.type in ("float | None",):
                kwargs[f.name] = float(raw) if raw else None
            else:
                kwargs[f.name] = raw
        return cls(**kwargs)

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> DecisionEvent:
        raw = orjson.loads(data)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        for name in _LIST_FIELDS:
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)
