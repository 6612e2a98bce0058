"""The policy model: the single source of truth for what the gateway enforces.

A policy is a YAML file validated by :class:`Policy` (``extra="forbid"``, frozen). Every
field has a safe default, so an empty file is a valid policy and ``Policy()`` is the
built-in default that ``policies/default.yaml`` spells out with comments.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gateway.controls import LEVELS, ControlLadder, ControlSet, resolve

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class PolicyReferenceError(ValueError):
    """A cross-field error that knows which field it is about (for ``file:line`` reports)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteKind(StrEnum):
    OPENAI_CHAT = "openai-chat"
    OPENAI_COMPLETIONS = "openai-completions"
    EMBEDDINGS = "embeddings"
    MODELS = "models"
    PROBABILITIES = "probabilities"


class Level(StrEnum):
    """Enforcement levels, weakest first."""

    ALLOW = "allow"
    WATCH = "watch"
    DEGRADE = "degrade"
    THROTTLE = "throttle"
    BLOCK = "block"


class Route(_Model):
    """One path the gateway forwards; any other path answers 404."""

    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9/_\-.]*$")]
    kind: RouteKind
    upstream_path: str | None = Field(
        default=None, description="Path on the upstream; defaults to the same path."
    )
    probabilities_pointer: str | None = Field(
        default=None,
        description="JSON pointer to the probability vectors (route kind 'probabilities').",
    )

    @property
    def method(self) -> str:
        return "GET" if self.kind is RouteKind.MODELS else "POST"


def _default_routes() -> tuple[Route, ...]:
    return (
        Route(path="/v1/chat/completions", kind=RouteKind.OPENAI_CHAT),
        Route(path="/v1/completions", kind=RouteKind.OPENAI_COMPLETIONS),
        Route(path="/v1/embeddings", kind=RouteKind.EMBEDDINGS),
        Route(path="/v1/models", kind=RouteKind.MODELS),
    )


class Limits(_Model):
    """Limits of one scope. ``None`` means unlimited.

    Rates are GCRA (a token bucket refilled continuously): a limit of N per minute admits a
    burst of up to N at once and then one unit every 60/N seconds.
    """

    requests_per_minute: PositiveFloat | None = None
    tokens_per_minute: PositiveFloat | None = None
    tokens_per_day: PositiveFloat | None = None
    max_concurrent: PositiveInt | None = None

    def merged(self, override: Limits) -> Limits:
        """These limits with every field that ``override`` sets replaced."""
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class Tier(_Model):
    controls: ControlLadder = Field(
        default=ControlLadder(),
        description="This tier's changes to the anti-distillation controls, by level.",
    )
    limits: Limits = Limits(
        requests_per_minute=60,
        tokens_per_minute=40_000,
        tokens_per_day=1_000_000,
        max_concurrent=8,
    )
    shared_limits: Limits = Field(
        default=Limits(), description="Limits shared by all clients of the tier together."
    )


class ClientOverride(_Model):
    """Per-client settings, keyed by client id (``antidistill keys hash KEY``)."""

    name: str | None = Field(default=None, description="A label for humans.")
    tier: str | None = None
    limits: Limits = Limits()
    allowlist: bool = Field(
        default=False, description="Never rate limited or enforced upon; still logged."
    )


class TrustedHeaders(_Model):
    """Headers set by a trusted edge proxy. Unnamed headers are never read."""

    client_ip: str | None = None
    tls_fingerprint: str | None = None
    org_id: str | None = None


class Identity(_Model):
    unknown_keys: Literal["reject", "default_tier"] = Field(
        default="default_tier",
        description="What happens to API keys that no client override names.",
    )
    missing_key: Literal["reject", "default_tier"] = Field(
        default="reject", description="What happens to requests without any API key."
    )
    default_tier: str = "default"
    trusted_headers: TrustedHeaders = TrustedHeaders()


class Tokens(_Model):
    default_max_tokens: PositiveInt = Field(
        default=256, description="Output tokens reserved when a request names no max_tokens."
    )
    chars_per_token: PositiveFloat = Field(
        default=4.0, description="Prompt-token estimate before the upstream's usage is known."
    )


class Enforcement(_Model):
    throttle_factor: Annotated[float, Field(gt=0, le=1)] = 0.1


class Retention(_Model):
    max_events: PositiveInt = Field(
        default=1_000_000, description="The decision stream is trimmed to about this length."
    )
    keep_prompt_samples: bool = Field(
        default=False,
        description="Keep the latest user message of each request (at most 300 characters, "
        "e-mails, key-like tokens, IP addresses and long numbers redacted) in its decision "
        "event, for reviewers' reports and the dashboard.",
    )


class Store(_Model):
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_:\-]+$")] = "antidistill"
    on_store_error: Literal["fail_open", "fail_closed"] = "fail_open"
    retention: Retention = Retention()


class Requests(_Model):
    max_body_bytes: PositiveInt = 1_048_576


class Upstream(_Model):
    connect_timeout_s: PositiveFloat = 5.0
    read_timeout_s: PositiveFloat = 120.0
    max_connections: PositiveInt = 256


class DetectorThresholds(_Model):
    """Detector score (0..1) at which each enforcement level starts; non-decreasing.

    On the shipped model, a score of about 0.5 is a client-level false-positive rate of
    1 % on benign simulated traffic and about 0.85 one of 0.1 to 0.3 % (the artifact's
    ``threshold_by_fpr``): ``watch`` costs a flagged honest client little, ``block``
    needs near certainty. Set a level's threshold above 1 to never reach it.
    """

    watch: Annotated[float, Field(ge=0)] = 0.5
    degrade: Annotated[float, Field(ge=0)] = 0.7
    throttle: Annotated[float, Field(ge=0)] = 0.85
    block: Annotated[float, Field(ge=0)] = 0.97

    @model_validator(mode="after")
    def _non_decreasing(self) -> DetectorThresholds:
        values = [self.watch, self.degrade, self.throttle, self.block]
        if any(a > b for a, b in itertools.pairwise(values)):
            raise ValueError("thresholds must not decrease from watch to block")
        return self


class Detector(_Model):
    """The harvesting detector: a worker scores each client's recent requests and sets its
    enforcement level by the ladder below (``shadow: true`` only logs the would-be level)."""

    enabled: bool = Field(
        default=True,
        description="Score clients and set their levels (a running worker pauses while "
        "false; the in-process worker starts only if true when `serve` starts).",
    )
    in_process: bool = Field(
        default=True,
        description="Run the worker inside `serve` (one per process, sharing the consumer "
        "group); false: run `antidistill worker` processes instead. Read at start.",
    )
    model: Literal["additive", "combined"] = Field(
        default="additive",
        description="The shipped additive model alone, or the mean of it and the torch "
        "sequence model (needs the `torch` extra; BENCHMARKS.md compares them: on held-out "
        "families combined catches more harvesters at a higher benign FPR, and scores at "
        "about a third of the speed). Read at start.",
    )
    thresholds: DetectorThresholds = DetectorThresholds()
    hysteresis: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.1,
        description="A level is kept until the score falls below its threshold minus this.",
    )
    min_hold_s: Annotated[float, Field(ge=0)] = Field(
        default=600.0,
        description="A level the detector raised is not lowered before it has been held "
        "this long, whatever the score.",
    )
    level_ttl_s: PositiveFloat = Field(
        default=3600.0,
        description="A level the detector sets expires after this unless scoring renews it.",
    )
    min_requests: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="Requests a client needs before it is scored; null: the model's own.",
    )
    window_size: Annotated[int, Field(ge=8, le=10_000)] = Field(
        default=256, description="Most recent requests per client that are scored."
    )
    score_every_requests: PositiveInt = Field(
        default=8, description="Score a client again after this many new requests ..."
    )
    score_every_s: PositiveFloat = Field(
        default=2.0, description="... or this many seconds, whichever comes first."
    )
    campaigns: bool = Field(
        default=True,
        description="Link clients into campaigns (shared templates, timing, IP, fingerprint) "
        "and raise every linked account to the campaign's level.",
    )
    campaign_interval_s: PositiveFloat = Field(
        default=15.0, description="How often campaign linking runs over the active windows."
    )


class Policy(_Model):
    """A whole policy file."""

    version: Literal[1] = 1
    shadow: bool = Field(
        default=False, description="Log what would be enforced without enforcing it."
    )
    routes: tuple[Route, ...] = Field(default_factory=_default_routes)
    identity: Identity = Identity()
    tiers: dict[str, Tier] = Field(default_factory=lambda: {"default": Tier()})
    clients: dict[str, ClientOverride] = Field(default_factory=dict)
    global_limits: Limits = Limits()
    tokens: Tokens = Tokens()
    enforcement: Enforcement = Enforcement()
    controls: ControlLadder = Field(
        default=ControlLadder(),
        description="Changes to the shipped anti-distillation controls, by level, for all tiers.",
    )
    store: Store = Store()
    requests: Requests = Requests()
    upstream: Upstream = Upstream()
    detector: Detector = Detector()

    @field_validator("routes")
    @classmethod
    def _unique_paths(cls, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        paths = [r.path for r in routes]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ValueError(f"route paths must be unique; repeated: {', '.join(dupes)}")
        return routes

    @field_validator("clients")
    @classmethod
    def _client_ids_are_hashes(
        cls, clients: dict[str, ClientOverride]
    ) -> dict[str, ClientOverride]:
        for client_id in clients:
            if len(client_id) != 64 or any(c not in "0123456789abcdef" for c in client_id):
                raise ValueError(
                    f"client id {client_id[:80]!r} is not a key hash; "
                    "use `antidistill keys hash KEY` to get one"
                )
        return clients

    @model_validator(mode="after")
    def _tiers_exist(self) -> Policy:
        if self.identity.default_tier not in self.tiers:
            raise PolicyReferenceError(
                ("identity", "default_tier"),
                f"default_tier {self.identity.default_tier!r} is not one of the tiers",
            )
        for client_id, client in self.clients.items():
            if client.tier is not None and client.tier not in self.tiers:
                raise PolicyReferenceError(
                    ("clients", client_id, "tier"), f"tier {client.tier!r} is not one of the tiers"
                )
        return self

    _controls: dict[tuple[str, str], ControlSet] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: object, /) -> None:
        # Resolved once per policy (it is immutable), so requests only look them up.
        for tier_name, tier in self.tiers.items():
            for level in LEVELS:
                self._controls[(tier_name, level)] = resolve(level, self.controls, tier.controls)

    def controls_for(self, tier: str, level: str) -> ControlSet:
        """The controls in force for a client of ``tier`` at enforcement ``level``
        (``block`` and unknown levels: the strongest, ``throttle``)."""
        found = self._controls.get((tier, level))
        return found if found is not None else self._controls[(tier, "throttle")]

    def route_for(self, path: str) -> Route | None:
        for route in self.routes:
            if route.path == path:
                return route
        return None
