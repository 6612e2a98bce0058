"""The scenario registry and ``generate``: named traffic scenarios → labelled clients."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sim.traffic import apps, attacks, lookalikes, metadata, personas, records
from sim.traffic.client import Draft, Identity, SimClient
from sim.traffic.content import KINDS
from sim.traffic.text import TextBank, load_bank

Rng = np.random.Generator


@dataclass(frozen=True, slots=True)
class Built:
    """One client before its records are built."""

    family: str
    attack: bool
    share: float
    campaign: str | None
    identity: Identity
    drafts: list[Draft]


Builder = Callable[[Rng, TextBank, int, float], list[Built]]


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    """A named scenario: what it simulates, its family, and whether it is an attack.

    ``attack`` is None for ``mixed``, whose clients are of every family, benign and attack.
    """

    name: str
    family: str
    attack: bool | None
    description: str
    default_clients: int
    build: Builder


def _pick_rpm(rng: Rng, options: tuple[int, ...]) -> int:
    return int(options[int(rng.integers(len(options)))])


def _solo(
    family: str,
    persona: personas.Persona,
    rpms: tuple[int, ...],
    attack: bool,
    mobile: bool = False,
) -> Builder:
    def build(rng: Rng, bank: TextBank, n: int, duration: float) -> list[Built]:
        out = []
        for _ in range(n):
            who = metadata.individual(rng, _pick_rpm(rng, rpms), mobile=mobile)
            out.append(
                Built(
                    family, attack, 1.0 if attack else 0.0, None, who, persona(rng, bank, duration)
                )
            )
        return out

    return build


def _team(
    family: str, persona: personas.Persona, rpms: tuple[int, ...], max_size: int, ci: float
) -> Builder:
    """Clients in teams sharing an org and a /24 (with probability ``ci`` one TLS stack)."""

    def build(rng: Rng, bank: TextBank, n: int, duration: float) -> list[Built]:
        out: list[Built] = []
        while len(out) < n:
            size = min(n - len(out), int(rng.integers(1, max_size + 1)))
            for who in metadata.team(rng, size, _pick_rpm(rng, rpms), rng.random() < ci):
                out.append(Built(family, False, 0.0, None, who, persona(rng, bank, duration)))
        return out

    return build


def _hydra(rng: Rng, bank: TextBank, n: int, duration: float) -> list[Built]:
    campaign = f"campaign-{rng.bytes(6).hex()}"
    ids = metadata.network(rng, n, 60)
    streams = attacks.hydra(rng, bank, duration, n)
    return [
        Built("hydra", True, 1.0, campaign, who, drafts)
        for who, drafts in zip(ids, streams, strict=True)
    ]


def _blended(shares: tuple[float, ...]) -> Builder:
    def build(rng: Rng, bank: TextBank, n: int, duration: float) -> list[Built]:
        out = []
        for i in range(n):
            share = shares[i % len(shares)]
            base, drafts = attacks.blended(rng, bank, duration, share)
            rpm = 1200 if base == "app_backend" else 60
            who = metadata.individual(rng, rpm, mobile=base == "chat_user")
            out.append(Built("blended", True, share, None, who, drafts))
        return out

    return build


_BENIGN = (
    (
        "chat_user",
        personas.chat_user,
        (60,),
        True,
        "people in a chat UI: multi-turn, think time, diurnal",
        60,
    ),
    (
        "app_backend",
        apps.app_backend,
        (600, 1200, 3000),
        False,
        "a product backend: many end users, one system prompt, high volume",
        40,
    ),
    (
        "agent",
        personas.agent,
        (60, 600),
        False,
        "agent frameworks: tool loops, long repeated system prompt, tool results",
        45,
    ),
    (
        "eval_harness",
        lookalikes.eval_harness,
        (60, 120, 600),
        False,
        "benchmark runs: templated, temperature 0, logprobs; team keys share infra (look-alike)",
        45,
    ),
    (
        "batch_labelling",
        lookalikes.batch_labelling,
        (60, 600, 3000),
        False,
        "labelling jobs: one template over many texts, tiny outputs (legitimate look-alike)",
        50,
    ),
)
_DESCRIPTIONS = {
    "self_instruct": "self-instruct harvesting: seed tasks, instruction variations, long outputs",
    "reasoning_elicitation": "'think step by step' over generated math and logic task sets",
    "logprob_sweep": "top_logprobs=20 over short prefixes, 1-token answers",
    "logit_bias_sweep": "logit_bias over sliding token ranges with top_logprobs (Carlini et al.)",
    "random_word": "random-word sequences (Krishna et al. 2020 RANDOM queries)",
    "wiki_sentence": "encyclopedia-style sentences (Krishna et al. 2020 WIKI queries)",
    "coverage_sweep": "systematic topic x task grid, in order",
}
_SCRIPTED_DEFAULTS = {
    "self_instruct": 12,
    "reasoning_elicitation": 12,
    "logprob_sweep": 8,
    "logit_bias_sweep": 8,
    "random_word": 8,
    "wiki_sentence": 8,
    "coverage_sweep": 10,
}


def _benign_builder(
    name: str, persona: personas.Persona, rpms: tuple[int, ...], mobile: bool
) -> Builder:
    if name == "eval_harness":  # research teams: several keys, one office, often one CI stack
        return _team(name, persona, rpms, 4, 0.5)
    return _solo(name, persona, rpms, False, mobile)


def _registry() -> dict[str, ScenarioSpec]:
    specs = [
        ScenarioSpec(name, name, False, desc, count, _benign_builder(name, fn, rpms, mobile))
        for name, fn, rpms, mobile, desc, count in _BENIGN
    ]
    specs.insert(
        2,
        ScenarioSpec(
            "coding_assistant",
            "coding_assistant",
            False,
            "developers in an IDE: code in and out, iterating; teams share an org and office /24",
            60,
            _team("coding_assistant", personas.coding_assistant, (60,), 6, 0.0),
        ),
    )
    for kind in KINDS:
        specs.append(
            ScenarioSpec(
                kind,
                kind,
                True,
                _DESCRIPTIONS[kind],
                _SCRIPTED_DEFAULTS[kind],
                _solo(kind, attacks.scripted(kind), (60, 600, 3000), True),
            )
        )
    specs.append(
        ScenarioSpec(
            "adaptive",
            "adaptive",
            True,
            "disguised harvesting: paraphrased templates, fake multi-turn, human-like timing",
            16,
            _solo("adaptive", attacks.adaptive, (60,), True, mobile=True),
        )
    )
    specs.append(
        ScenarioSpec(
            "hydra",
            "hydra",
            True,
            "one network of light accounts (clients = accounts) sharing templates, waves, IPs, JA4",
            30,
            _hydra,
        )
    )
    specs.append(
        ScenarioSpec(
            "blended",
            "blended",
            True,
            "harvesting inside benign keys at 5/10/25/50 % of their requests",
            24,
            _blended((0.05, 0.10, 0.25, 0.50)),
        )
    )
    for pct in (5, 10, 25, 50):
        specs.append(
            ScenarioSpec(
                f"blended_{pct}",
                "blended",
                True,
                f"harvesting inside benign keys at {pct} % of their requests",
                6,
                _blended((pct / 100,)),
            )
        )
    registry = {s.name: s for s in specs}
    registry["mixed"] = ScenarioSpec(
        "mixed", "mixed", None,
        "one client of each benign persona and attack family in turn (hydra: 3 accounts)",
        24, _mixed(registry),
    )  # fmt: skip
    return registry


def _mixed(specs: dict[str, ScenarioSpec]) -> Builder:
    benign = [n for n, s in specs.items() if s.attack is False]
    attack = [n for n, s in specs.items() if s.attack and not n.startswith("blended_")]
    order = [n for pair in zip(benign * 3, attack, strict=False) for n in pair]

    def build(rng: Rng, bank: TextBank, n: int, duration: float) -> list[Built]:
        out: list[Built] = []
        for i in range(n):
            if len(out) >= n:
                break
            name = order[i % len(order)]
            count = min(3, n - len(out)) if name == "hydra" else 1
            out += specs[name].build(rng, bank, count, duration)
        return out

    return build


SCENARIOS: dict[str, ScenarioSpec] = _registry()


def _finish(rng: Rng, b: Built, keep_bodies: bool) -> SimClient:
    client = metadata.client_id(rng)
    recs, sent = records.build(rng, client, b.drafts, b.identity)
    return SimClient(
        client=client,
        family=b.family,
        attack=b.attack,
        attacker_share=b.share,
        campaign=b.campaign,
        records=tuple(recs),
        bodies=tuple(d.body for d in sent) if keep_bodies else None,
        request_attack=tuple(d.attack for d in sent),
    )


def generate(
    scenario: str,
    *,
    seed: int,
    clients: int | None = None,
    duration_s: float = 86_400,
    keep_bodies: bool = False,
) -> list[SimClient]:
    """The clients of one scenario (``SCENARIOS``), reproducible from ``seed``.

    ``clients`` defaults to the scenario's own count (for ``hydra``: the accounts of one
    network). A client that sent nothing within ``duration_s`` (possible in very short
    simulations) is left out, so every returned client has at least one record.
    """
    spec = SCENARIOS.get(scenario)
    if spec is None:
        raise KeyError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    n = spec.default_clients if clients is None else clients
    rng = np.random.default_rng([seed, zlib.crc32(scenario.encode())])
    built = spec.build(rng, load_bank(), n, float(duration_s))
    return [_finish(rng, b, keep_bodies) for b in built if b.drafts]
