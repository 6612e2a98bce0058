"""Anti-distillation controls: what the policy asks of each tier at each enforcement level.

A :class:`ControlSet` names only the settings it changes; the settings in force for a
client are the tier's ``allow`` set, overlaid with every level's set up to the client's
level (``allow`` → ``watch`` → ``degrade`` → ``throttle``), so controls grow stronger
with the level unless a policy says otherwise. :func:`resolve` returns them fully filled.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(gt=0)]


class ProbabilityControls(BaseModel):
    """Response controls for routes of kind ``probabilities``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["full", "round", "top_k", "labels", "reverse_sigmoid"] | None = None
    decimals: Annotated[int, Field(ge=0, le=8)] | None = None
    top_k: PosInt | None = None
    reverse_sigmoid_beta: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Perturbation strength of the reverse sigmoid (Lee et al. 2019)."
    )
    reverse_sigmoid_gamma: Annotated[float, Field(gt=0)] | None = None
    dawn_fraction: Annotated[float, Field(ge=0, le=0.005)] | None = Field(
        default=None,
        description="Share of inputs (keyed by input and client) answered with a keyed "
        "different label, as a provenance mark (DAWN). At most 0.5 %.",
    )


class ControlSet(BaseModel):
    """Controls at one level; unset fields are inherited from the level below."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # request shaping
    top_logprobs_max: Annotated[int, Field(ge=0, le=20)] | None = None
    logprobs: Literal["allow", "drop"] | None = Field(
        default=None, description="drop: remove logprobs/top_logprobs from requests."
    )
    logit_bias: Literal["allow", "strip", "refuse"] | None = None
    logit_bias_with_logprobs: Literal["allow", "strip", "refuse"] | None = Field(
        default=None,
        description="logit_bias together with logprobs is the primitive of logit-stealing "
        "attacks (Carlini et al. 2024): refuse (400) or strip it.",
    )
    logit_bias_distinct_tokens: NonNegInt | None = Field(
        default=None,
        description="Distinct token ids a client may bias per window; more is refused (400). "
        "0 = no cap.",
    )
    logit_bias_window_s: PosInt | None = None
    n_max: PosInt | None = None
    max_tokens_max: PosInt | None = None
    seed: Literal["keep", "drop"] | None = None
    temperature_floor: Annotated[float, Field(ge=0, le=2)] | None = Field(
        default=None,
        description="Response variation: requests below this temperature are raised to it.",
    )
    # response protection
    logprob_decimals: Annotated[int, Field(ge=0, le=8)] | None = None
    logprob_noise: Annotated[float, Field(ge=0, le=5)] | None = Field(
        default=None,
        description="Bounded noise (nats) on returned logprobs; never changes which token is top.",
    )
    reasoning: Literal["keep", "truncate", "drop"] | None = Field(
        default=None,
        description="Reasoning withholding: reasoning_content / reasoning and <think> blocks.",
    )
    reasoning_max_chars: NonNegInt | None = None
    watermark_text: bool | None = Field(
        default=None, description="Keyed lexical watermark on generated text (provenance)."
    )
    probabilities: ProbabilityControls = ProbabilityControls()


class ControlLadder(BaseModel):
    """Control sets by enforcement level (``block`` never reaches the upstream)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: ControlSet = ControlSet()
    watch: ControlSet = ControlSet()
    degrade: ControlSet = ControlSet()
    throttle: ControlSet = ControlSet()


BASE = ControlSet(
    top_logprobs_max=20,
    logprobs="allow",
    logit_bias="allow",
    logit_bias_with_logprobs="allow",
    logit_bias_distinct_tokens=0,
    logit_bias_window_s=3600,
    n_max=128,
    max_tokens_max=1_000_000,
    seed="keep",
    temperature_floor=0.0,
    logprob_decimals=8,
    logprob_noise=0.0,
    reasoning="keep",
    reasoning_max_chars=0,
    watermark_text=False,
    probabilities=ProbabilityControls(
        mode="full",
        decimals=8,
        top_k=1000,
        reverse_sigmoid_beta=0.0,
        reverse_sigmoid_gamma=1.0,
        dawn_fraction=0.0,
    ),
)
"""Everything off: what a ladder level means when nothing sets a field."""


def default_ladder() -> ControlLadder:
    """The shipped defaults: no change to an honest client's top-1 answers at ``allow``;
    logit stealing refused at every level; reasoning withheld from flagged clients."""
    return ControlLadder(
        allow=ControlSet(
            top_logprobs_max=5,
            logit_bias_with_logprobs="refuse",
            logit_bias_distinct_tokens=300,
            n_max=8,
            logprob_decimals=3,
            probabilities=ProbabilityControls(mode="round", decimals=3),
        ),
        watch=ControlSet(
            logprob_decimals=2,
            logprob_noise=0.05,
            reasoning="drop",
            watermark_text=True,
            probabilities=ProbabilityControls(decimals=2, dawn_fraction=0.005),
        ),
        degrade=ControlSet(
            top_logprobs_max=1,
            logit_bias="strip",
            n_max=1,
            seed="drop",
            temperature_floor=0.7,
            logprob_decimals=1,
            logprob_noise=0.3,
            probabilities=ProbabilityControls(
                mode="reverse_sigmoid", reverse_sigmoid_beta=0.6, reverse_sigmoid_gamma=0.5
            ),
        ),
        throttle=ControlSet(
            logprobs="drop",
            logit_bias="refuse",
            temperature_floor=1.0,
            probabilities=ProbabilityControls(mode="labels"),
        ),
    )


LEVELS = ("allow", "watch", "degrade", "throttle")


def _overlay(base: ControlSet, top: ControlSet) -> ControlSet:
    """``base`` with every field that ``top`` sets (to a non-null value) replaced."""
    changes = {
        k: v
        for k, v in top.model_dump(exclude_unset=True, exclude={"probabilities"}).items()
        if v is not None
    }
    probs = base.probabilities.model_copy(
        update=top.probabilities.model_dump(exclude_unset=True, exclude_none=True)
    )
    return base.model_copy(update={**changes, "probabilities": probs})


def resolve(level: str, *overrides: ControlLadder) -> ControlSet:
    """The controls in force at ``level``, every field set.

    Level by level from ``allow`` up to ``level``, the shipped default ladder is overlaid
    with each ladder in ``overrides`` (the policy's, then the tier's). ``block`` resolves
    as ``throttle``.
    """
    top = LEVELS.index(level) if level in LEVELS else len(LEVELS) - 1
    ladders = (default_ladder(), *overrides)
    result = BASE
    for name in LEVELS[: top + 1]:
        for ladder in ladders:
            result = _overlay(result, getattr(ladder, name))
    return result
