"""Hidden-size recovery (Carlini et al. 2024, "Stealing Part of a Production Language Model")
against the toy LM, through the gateway.

    python -m bench.extraction.logits [--quick] [--write-benchmarks]

The attack: the final layer of an LM is linear from an H-dimensional state, so logit
vectors over many prompts span an (affine) H-dimensional subspace. The attacker recovers
full logit vectors with the logit-bias trick — bias a set of tokens plus a reference token
by +100 so that they fill the top-k, and read ``logit_t - logit_ref = logprob_t -
logprob_ref`` — for N > H prompts, centres the N x V matrix and reads H off the largest
gap in its singular values. Prompts are batched in legacy completions requests (a list of
prompts shares one ``logit_bias``), so a full sweep costs ``ceil(V / (k-1))`` groups.

Scenarios (each a tier of one policy, attacker at level ``allow``):

- ``controls off``: top 20 logprobs, logit_bias with logprobs allowed, 8 decimals, no noise;
- ``default policy``: the shipped controls (logit_bias with logprobs refused, top 5,
  3 decimals, at most 300 distinct biased tokens per hour);
- ``default, bias allowed`` (ablation): the shipped controls except that logit_bias with
  logprobs is allowed — what top-5, rounding and the distinct-token cap do on their own.

Rate limits are lifted for the attacker in every scenario (the default 60 requests/min
would also slow the sweep down, but this measures the controls).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.extraction import report
from bench.extraction.harness import GatewayStack, bench_tier, post_all, tier_clients
from sim.toy_lm import ToyLM, load_toy_lm
from sim.toy_upstream import create_app as create_toy_upstream

NAME = "logits"
MODULE = "bench.extraction.logits"
COMPLETIONS = "/v1/completions"
BIAS = 100.0
OFF_CONTROLS = {
    "top_logprobs_max": 20,
    "logprobs": "allow",
    "logit_bias": "allow",
    "logit_bias_with_logprobs": "allow",
    "logit_bias_distinct_tokens": 0,
    "logprob_decimals": 8,
    "logprob_noise": 0.0,
    "temperature_floor": 0.0,
    "n_max": 128,
}
SCENARIOS: dict[str, dict[str, Any] | None] = {
    "controls off": {"allow": OFF_CONTROLS},
    "default policy": None,
    "default, bias allowed": {"allow": {"logit_bias_with_logprobs": "allow"}},
}


@dataclass
class Attempt:
    """What one run of the attack got and concluded."""

    scenario: str
    prompts: int
    targets: int
    requests: int = 0
    refused: int = 0
    refusal: str = ""
    logprobs_per_query: int = 0
    vectors: int = 0
    coordinates: int = 0
    rank_estimate: int | None = None
    gap: float | None = None
    true_hidden: int = 0
    recovered: bool = False
    fallback_coordinates: int | None = None
    seconds: float = 0.0
    singular_values: list[float] = field(default_factory=list)


def attack_prompts(lm: ToyLM, count: int, rng: np.random.Generator) -> list[str]:
    """Random three-word prompts (alphabetic vocabulary words, so they tokenize back)."""
    words = [w for w in lm.vocab if re.fullmatch(r"[a-z]+", w)]
    return [" ".join(rng.choice(words, size=3)) for _ in range(count)]


def _top_logprobs(choice: dict[str, Any]) -> dict[str, float]:
    """The first generated token's top-logprobs (legacy format: piece -> logprob)."""
    logprobs = choice.get("logprobs") or {}
    tops = logprobs.get("top_logprobs") or []
    first = tops[0] if tops else None
    return {str(k).strip(): float(v) for k, v in (first or {}).items()}


def _error_code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code") or body["error"].get("message", ""))[:80]
    return str(body)[:80]


class LogitBiasAttack:
    """Recovers (relative) logit vectors over ``prompts`` through an OpenAI completions API."""

    def __init__(
        self,
        url: str,
        key: str,
        vocab: Sequence[str],
        prompts: Sequence[str],
        *,
        batch: int = 64,
        concurrency: int = 4,
    ) -> None:
        self.url, self.key, self.vocab = url + COMPLETIONS, key, list(vocab)
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        self.prompts = list(prompts)
        self.batch, self.concurrency = batch, concurrency
        self.requests = self.refused = 0
        self.refusal = ""

    def _send(self, bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
        answers = post_all(self.url, self.key, bodies, self.concurrency)
        self.requests += len(bodies)
        for status, body in answers:
            if status >= 400:
                self.refused += 1
                self.refusal = self.refusal or f"{status} {_error_code(body)}"
        return answers

    def _bodies(self, k: int, bias: dict[int, float] | None) -> list[dict[str, Any]]:
        bodies = []
        for start in range(0, len(self.prompts), self.batch):
            body: dict[str, Any] = {
                "model": "toy-lm",
                "prompt": self.prompts[start : start + self.batch],
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": k,
            }
            if bias:
                body["logit_bias"] = {str(t): b for t, b in bias.items()}
            bodies.append(body)
        return bodies

    def _rows(self, answers: list[tuple[int, Any]]) -> list[dict[str, float] | None]:
        """Per prompt, the returned top-logprobs (None where the request failed)."""
        rows: list[dict[str, float] | None] = []
        for i, (status, body) in enumerate(answers):
            start = i * self.batch
            size = len(self.prompts[start : start + self.batch])
            choices = body.get("choices") if status == 200 and isinstance(body, dict) else None
            if not isinstance(choices, list) or len(choices) != size:
                rows += [None] * size
                continue
            rows += [_top_logprobs(c) for c in sorted(choices, key=lambda c: c.get("index", 0))]
        return rows

    def probe(self, want: int = 20) -> int:
        """How many top logprobs the API returns per token when asked for ``want``."""
        answers = self._send(self._bodies(want, None)[:1])
        rows = [r for r in self._rows(answers) if r is not None]
        return max((len(r) for r in rows), default=0)

    def sweep(self, targets: Sequence[int], ref: int, k: int) -> npt.NDArray[np.float64]:
        """``logit[t] - logit[ref]`` for every prompt and target (NaN where not recovered).

        Stops at the first group of tokens the API refuses outright (after a success, it
        is a cap being hit; before one, the trick is refused altogether).
        """
        matrix = np.full((len(self.prompts), len(targets)), np.nan)
        per_query = k - 1
        ref_name = self.vocab[ref]
        for g in range(0, len(targets), per_query):
            group = list(targets[g : g + per_query])
            bias = {t: BIAS for t in (*group, ref)}
            answers = self._send(self._bodies(k, bias))
            if all(status >= 400 for status, _ in answers):
                break
            for p, row in enumerate(self._rows(answers)):
                if row is None or ref_name not in row:
                    continue
                for j, t in enumerate(group):
                    value = row.get(self.vocab[t])
                    if value is not None:
                        matrix[p, g + j] = value - row[ref_name]
        return matrix

    def topk_only(self, k: int) -> int:
        """Without logit_bias: how many tokens show up in every prompt's top-k."""
        rows = self._rows(self._send(self._bodies(k, None)))
        seen = [set(r) for r in rows if r is not None]
        return len(set.intersection(*seen)) if seen else 0


def rank_from_gap(matrix: npt.NDArray[np.float64]) -> tuple[int | None, float | None, list[float]]:
    """Rank of the column-centred matrix read off the largest singular-value ratio."""
    if matrix.shape[0] < 3 or matrix.shape[1] < 2:
        return None, None, []
    centred = matrix - matrix.mean(axis=0, keepdims=True)
    s = np.linalg.svd(centred, compute_uv=False)
    s = s[: min(centred.shape) - 1]  # centring removes one dimension
    floor = max(float(s[0]) * 1e-15, 1e-300)
    ratios = np.maximum(s[:-1], floor) / np.maximum(s[1:], floor)
    if len(ratios) == 0:
        return None, None, [float(v) for v in s]
    i = int(np.argmax(ratios))
    return i + 1, float(ratios[i]), [float(v) for v in s]


def run_attack(
    stack: GatewayStack,
    lm: ToyLM,
    scenario: str,
    key: str,
    prompts: list[str],
    targets: list[int],
    ref: int,
) -> Attempt:
    started = time.perf_counter()
    attempt = Attempt(scenario, len(prompts), len(targets), true_hidden=lm.hidden_size)
    attack = LogitBiasAttack(stack.url, key, lm.vocab, prompts)
    k = attack.probe()
    attempt.logprobs_per_query = k
    if k >= 2:
        matrix = attack.sweep(targets, ref, k)
        complete = matrix[:, ~np.isnan(matrix).any(axis=0)]
        attempt.vectors = int((~np.isnan(matrix)).any(axis=1).sum()) if complete.size else 0
        attempt.coordinates = int(complete.shape[1])
        rank, gap, values = rank_from_gap(complete)
        attempt.rank_estimate, attempt.gap = rank, gap
        attempt.singular_values = [round(v, 6) for v in values[: lm.hidden_size + 8]]
        attempt.recovered = rank == lm.hidden_size and gap is not None and gap > 10
    if not attempt.recovered and k >= 1:
        attempt.fallback_coordinates = attack.topk_only(k)
    attempt.requests, attempt.refused, attempt.refusal = (
        attack.requests,
        attack.refused,
        attack.refusal,
    )
    attempt.seconds = round(time.perf_counter() - started, 2)
    return attempt


def run(quick: bool, seed: int) -> list[Attempt]:
    lm = load_toy_lm()
    rng = np.random.default_rng(seed)
    n_prompts = lm.hidden_size + 16 if quick else 2 * lm.hidden_size
    prompts = attack_prompts(lm, n_prompts, rng)
    ref = lm.token_id("the")
    assert ref is not None
    candidates = [i for i in range(lm.vocab_size) if i not in (ref, lm.eos_id)]
    # Quick: a random subset of the vocabulary (any m > H coordinates show the rank).
    targets = sorted(rng.choice(candidates, size=160, replace=False)) if quick else candidates
    keys = {name: f"attacker-{i}" for i, name in enumerate(SCENARIOS)}
    tiers = {"default": bench_tier()}
    tier_of: dict[str, str] = {}
    for i, (name, controls) in enumerate(SCENARIOS.items()):
        if controls is not None:
            tiers[f"s{i}"] = bench_tier(controls)
            tier_of[keys[name]] = f"s{i}"
    policy = {
        "routes": [{"path": COMPLETIONS, "kind": "openai-completions"}],
        "tiers": tiers,
        "clients": tier_clients(tier_of),
    }
    with GatewayStack(create_toy_upstream(lm=lm), policy) as stack:
        return [
            run_attack(stack, lm, name, keys[name], prompts, [int(t) for t in targets], ref)
            for name in SCENARIOS
        ]


def render(attempts: list[Attempt]) -> str:
    headers = [
        "scenario",
        "requests",
        "refused",
        "logprobs/query",
        "vectors x coords",
        "est. hidden size",
        "true",
        "gap",
        "recovered",
    ]
    rows = [
        [
            a.scenario,
            a.requests,
            f"{a.refused} ({a.refusal})" if a.refused else 0,
            a.logprobs_per_query,
            f"{a.vectors} x {a.coordinates}",
            a.rank_estimate,
            a.true_hidden,
            None if a.gap is None else (f"{a.gap:.1e}" if a.gap >= 1e3 else f"{a.gap:.2f}"),
            a.recovered,
        ]
        for a in attempts
    ]
    return report.table(headers, rows)


NOTE = """
"gap" is the largest ratio of consecutive singular values of the centred matrix of
recovered logit differences; its position is the estimated hidden size (centring removes
the output bias, so the rank is H, not H + 1). With the controls off, one sweep of the
vocabulary recovers the toy LM's hidden size exactly. The default policy refuses
`logit_bias` together with logprobs, so no vector can be assembled; without the bias only
the top 5 tokens of each prompt are visible, and the tokens seen in every prompt's top 5
("fallback") are far fewer than H. The ablation row shows why the refusal is the control
that matters: top-5 and 3-decimal rounding alone leave the attack working (4 new tokens per
query, rounding error far below the spectrum's gap); the per-client cap on distinct biased
tokens bounds how many coordinates an attacker gets in an hour, but any cap above H still
lets the hidden size through.
"""


FALLBACK_NOTE = "Fallback coordinates (top-k only, no bias)"


def main(argv: Sequence[str] | None = None) -> list[Attempt]:
    args = report.parse_args(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    with report.one_thread():
        attempts = run(args.quick, args.seed)
    elapsed = time.perf_counter() - started
    text = render(attempts)
    print(text)
    for a in attempts:
        if a.fallback_coordinates is not None:
            print(f"{a.scenario}: fallback without logit_bias: {a.fallback_coordinates} coords")
    fallback_text = "; ".join(
        f"{a.scenario}: {a.fallback_coordinates}"
        for a in attempts
        if a.fallback_coordinates is not None
    )
    report.publish(
        args,
        argv,
        module=MODULE,
        name=NAME,
        title="Logit stealing: hidden size (Carlini et al. 2024)",
        text=text,
        note=NOTE
        + (f"\nFallback coordinates (top-k only): {fallback_text}." if fallback_text else ""),
        elapsed_s=elapsed,
        results={"attempts": [asdict(a) for a in attempts]},
    )
    return attempts


if __name__ == "__main__":
    main()
