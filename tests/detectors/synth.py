"""A tiny synthetic traffic generator for the detector's tests (not the simulator).

Produces objects with the ``sim.traffic`` client contract (client, family, attack,
attacker_share, campaign, records) so the detector can be tested without the simulator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from detectors.schema import RequestFeatures, RequestRecord

T0 = 1_780_000_000_000


@dataclass(frozen=True)
class FakeClient:
    client: str
    family: str
    attack: bool
    attacker_share: float
    campaign: str
    records: tuple[RequestRecord, ...]


def _flip(x: int, rng: random.Random, bits: int) -> int:
    for _ in range(bits):
        x ^= 1 << rng.randrange(64)
    return x


def _record(
    client: str,
    ts: int,
    rng: random.Random,
    *,
    sketch: int,
    template: int,
    params: dict[str, Any] | None = None,
    turns: int = 1,
    reasoning: bool = False,
    system: int = 0,
    completion: int = 200,
    status: int = 200,
    ip: str = "",
) -> RequestRecord:
    words = rng.randint(8, 80)
    return RequestRecord(
        ts_ms=ts,
        client=client,
        route="chat",
        status=status,
        decision="admitted" if status < 400 else "denied",
        prompt_tokens=int(words * 1.3),
        completion_tokens=completion,
        params=params or {"model": "m", "max_tokens": 512, "temperature": 0.7},
        features=RequestFeatures(
            prompt_chars=words * 6,
            prompt_words=words,
            messages=2 * turns - 1 + (system > 0),
            user_turns=turns,
            system_chars=system,
            reasoning_marker=reasoning,
            sketch=sketch,
            template=template,
        ),
        client_ip=ip,
    )


def benign_chat(name: str, rng: random.Random, n: int = 120) -> FakeClient:
    ts, recs = T0 + rng.randrange(86_400_000), []
    topic = rng.getrandbits(64)
    ip = f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
    for _ in range(n):
        ts += int(rng.expovariate(1 / 90_000)) + 5_000
        s = _flip(topic, rng, 20) if rng.random() < 0.5 else rng.getrandbits(64)
        recs.append(
            _record(
                name,
                ts,
                rng,
                sketch=s,
                template=_flip(s, rng, 2),
                turns=rng.randint(1, 6),
                completion=rng.randint(50, 400),
                ip=ip,
            )
        )
    return FakeClient(name, "chat", False, 0.0, "", tuple(recs))


def benign_eval(name: str, rng: random.Random, n: int = 200) -> FakeClient:
    ts, recs = T0 + rng.randrange(86_400_000), []
    tmpl = rng.getrandbits(64)
    for _ in range(n):
        ts += int(rng.expovariate(1 / 2_000)) + 200
        recs.append(
            _record(
                name,
                ts,
                rng,
                sketch=_flip(tmpl, rng, 12),
                template=tmpl,
                params={"model": "m", "max_tokens": 16, "temperature": 0.0, "logprobs": True},
                completion=rng.randint(1, 10),
            )
        )
    return FakeClient(name, "eval_harness", False, 0.0, "", tuple(recs))


def _attack_params(kind: str, rng: random.Random) -> dict[str, Any]:
    if kind == "logprob":
        return {
            "model": "m",
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": 20,
            "logit_bias_tokens": rng.randint(1, 300),
        }
    return {"model": "m", "max_tokens": 4096, "temperature": 0.0}


def attacker(
    name: str,
    rng: random.Random,
    kind: str = "self_instruct",
    n: int = 400,
    *,
    campaign: str = "",
    templates: tuple[int, ...] = (),
    ip: str = "",
    share: float = 1.0,
    iat_ms: int = 3_000,
) -> FakeClient:
    ts, recs = T0 + rng.randrange(86_400_000), []
    tmpls = templates or tuple(rng.getrandbits(64) for _ in range(3))
    for _ in range(n):
        if share < 1.0 and rng.random() >= share:
            ts += int(rng.expovariate(1 / 90_000)) + 5_000
            s = rng.getrandbits(64)
            recs.append(
                _record(
                    name,
                    ts,
                    rng,
                    sketch=s,
                    template=_flip(s, rng, 2),
                    turns=rng.randint(1, 5),
                    ip=ip,
                )
            )
            continue
        ts += int(iat_ms * rng.uniform(0.9, 1.1))
        t = rng.choice(tmpls)
        recs.append(
            _record(
                name,
                ts,
                rng,
                sketch=_flip(t, rng, 4),
                template=t,
                params=_attack_params(kind, rng),
                reasoning=kind == "reasoning",
                completion=1 if kind == "logprob" else rng.randint(800, 3000),
                ip=ip,
            )
        )
    family = kind if share >= 1.0 else "blend"
    return FakeClient(name, family, True, share, campaign, tuple(recs))


def hydra(prefix: str, rng: random.Random, accounts: int = 20, n: int = 60) -> list[FakeClient]:
    templates = tuple(rng.getrandbits(64) for _ in range(4))
    return [
        attacker(
            f"{prefix}-{i}",
            rng,
            "reasoning",
            n,
            campaign=prefix,
            templates=templates,
            ip=f"203.0.113.{rng.randrange(250)}",
            iat_ms=20_000,
        )
        for i in range(accounts)
    ]


def dataset(seed: int = 0, scale: float = 1.0) -> list[FakeClient]:
    rng = random.Random(seed)
    k = max(1, int(20 * scale))
    clients: list[FakeClient] = []
    clients += [benign_chat(f"chat-{i}", rng) for i in range(3 * k)]
    clients += [benign_eval(f"eval-{i}", rng) for i in range(k)]
    clients += [attacker(f"si-{i}", rng, "self_instruct") for i in range(k)]
    clients += [attacker(f"rs-{i}", rng, "reasoning") for i in range(k)]
    clients += [attacker(f"lp-{i}", rng, "logprob") for i in range(k)]
    clients += hydra("hydra-a", rng)
    return clients


def shifted(client: FakeClient, ms: int) -> FakeClient:
    return replace(client, records=tuple(replace(r, ts_ms=r.ts_ms + ms) for r in client.records))
