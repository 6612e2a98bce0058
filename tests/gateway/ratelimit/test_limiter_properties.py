"""Property tests: the Lua limiter against a Python model, and the GCRA window bound.

Every example runs a generated sequence of admissions and settlements, with time passed in
explicitly, on keys of its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway.keys import KeySpace
from gateway.ratelimit.limiter import Admission, Charge, Limiter, Rate

NOW = 1_796_000_000_000
EPS_MS = 0.01  # the float slack the limiter documents

# --- a reference model -------------------------------------------------------------------


@dataclass
class ModelBucket:
    """GCRA as written in the textbook: a theoretical arrival time per limit.

    Kept in the same float arithmetic as the script's contract (absolute ms, T = period/limit,
    tau = T * burst), so decisions must agree exactly, boundaries included.
    """

    tat: float | None = None

    def relative(self, now: float) -> float:
        return self.tat - now if self.tat is not None and self.tat > now else 0.0

    def store(self, now: float, rel: float) -> None:
        self.tat = now + rel if rel > 0 else None


@dataclass
class Model:
    buckets: dict[str, ModelBucket] = field(default_factory=dict)
    leases: dict[str, float] = field(default_factory=dict)

    def admit(
        self, now: float, charges: list[Charge], factor: float
    ) -> tuple[bool, str, str | None, float]:
        """(allowed, reason, denied_by, retry_after_s) for one request."""
        decision = self._decide(now, charges, factor)
        if decision[0]:
            for charge in charges:
                bucket = self.buckets[charge.key]
                t_unit = self._t_unit(charge, factor)
                bucket.store(now, bucket.relative(now) + t_unit * charge.cost)
        return decision

    def state(self, now: float, charge: Charge, factor: float) -> tuple[float, float, float]:
        """(effective limit, remaining units, reset_s) of one limit."""
        rate = charge.rate
        burst = rate.limit if rate.burst is None else rate.burst
        rel = self.buckets[charge.key].relative(now)
        remaining = max(0.0, burst * factor - rel / self._t_unit(charge, factor))
        return rate.limit * factor, remaining, rel / 1000

    @staticmethod
    def _t_unit(charge: Charge, factor: float) -> float:
        return charge.rate.period_s * 1000.0 / (charge.rate.limit * factor)

    def _decide(
        self, now: float, charges: list[Charge], factor: float
    ) -> tuple[bool, str, str | None, float]:
        plans = []
        for charge in charges:
            bucket = self.buckets.setdefault(charge.key, ModelBucket())
            rate = charge.rate
            burst = rate.limit if rate.burst is None else rate.burst
            t_unit = self._t_unit(charge, factor)
            tau = t_unit * max(burst * factor, min(burst, charge.cost))
            plans.append((bucket, charge, burst, t_unit, tau))
        for _, charge, burst, _, _ in plans:
            if charge.cost > burst:
                return False, "cost_exceeds_burst", charge.rate.name, -1.0
        worst, denied_by = 0.0, None
        for bucket, charge, _, t_unit, tau in plans:
            late_by = bucket.relative(now) + t_unit * charge.cost - tau
            if late_by > EPS_MS and late_by > worst:
                worst, denied_by = late_by, charge.rate.name
        if denied_by is not None:
            return False, "rate_limited", denied_by, worst / 1000
        return True, "ok", None, 0.0

    def settle(self, now: float, adjustments: list[tuple[Charge, float]], factor: float) -> None:
        for charge, delta in adjustments:
            bucket = self.buckets.setdefault(charge.key, ModelBucket())
            rel = bucket.relative(now) + self._t_unit(charge, factor) * delta
            bucket.store(now, max(rel, 0.0))


# --- generated scenarios -------------------------------------------------------------------

limits = st.one_of(st.integers(1, 120).map(float), st.sampled_from([0.5, 2.5, 7.25, 1000.0]))
periods = st.sampled_from([1.0, 2.0, 3.5, 60.0])
rates = st.builds(
    Rate,
    name=st.just(""),
    limit=limits,
    period_s=periods,
    burst=st.one_of(st.none(), st.integers(1, 50).map(float), st.just(2.5)),
)


@dataclass(frozen=True)
class Step:
    dt_ms: int
    kind: str  # "admit" | "settle"
    amounts: tuple[float, ...]  # one per rate: costs (admit) or deltas (settle)


def steps(n_rates: int, settles: bool) -> st.SearchStrategy[list[Step]]:
    dt = st.one_of(st.just(0), st.integers(0, 2_000), st.integers(0, 120_000))
    costs = st.tuples(*[st.integers(0, 60).map(float)] * n_rates)
    deltas = st.tuples(*[st.integers(-60, 60).map(float)] * n_rates)
    admit = st.builds(Step, dt, st.just("admit"), costs)
    settle = st.builds(Step, dt, st.just("settle"), deltas)
    return st.lists(st.one_of(admit, admit, settle) if settles else admit, max_size=40)


@st.composite
def scenarios(draw: st.DrawFn, settles: bool = True) -> tuple[list[Rate], list[Step]]:
    drawn = draw(st.lists(rates, min_size=1, max_size=3))
    named = [Rate(f"r{i}", r.limit, r.period_s, r.burst) for i, r in enumerate(drawn)]
    return named, draw(steps(len(named), settles))


@dataclass(frozen=True)
class Outcome:
    now: int
    step: Step
    admission: Admission | None  # None for a settlement


async def run(
    redis_url: str, rates: list[Rate], script: list[Step], throttle: float = 1.0
) -> tuple[list[Outcome], list[list[Charge]]]:
    """Play `script` against the limiter; returns outcomes and the charges of each step."""
    ks = KeySpace(prefix=f"adprop:{uuid.uuid4().hex[:12]}")
    keys = [ks.limit("c", r.name) for r in rates]
    client = Redis.from_url(redis_url)
    try:
        limiter = Limiter(client)
        if throttle < 1:
            await limiter.set_level(ks.level("c"), "throttle", ["test"], None)
        now, outcomes, charged = NOW, [], []
        for step in script:
            now += step.dt_ms
            if step.kind == "admit":
                charges = [
                    Charge(r, k, c) for r, k, c in zip(rates, keys, step.amounts, strict=True)
                ]
                admission = await limiter.admit(
                    level_key=ks.level("c"), charges=charges, throttle_factor=throttle, now_ms=now
                )
                outcomes.append(Outcome(now, step, admission))
            else:
                charges = [Charge(r, k, 0) for r, k in zip(rates, keys, strict=True)]
                await limiter.settle(
                    adjustments=list(zip(charges, step.amounts, strict=True)),
                    inflight_key=None,
                    lease_id="",
                    now_ms=now,
                    throttle_factor=throttle,
                )
                outcomes.append(Outcome(now, step, None))
            charged.append(charges)
        return outcomes, charged
    finally:
        await client.aclose()


PROPERTY = settings(
    deadline=None,
    max_examples=60,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- (a) the script decides exactly as the model -------------------------------------------


@PROPERTY
@given(scenario=scenarios(), throttle=st.sampled_from([1.0, 1.0, 0.5, 0.1]))
async def test_script_agrees_with_the_reference_model(
    redis_url: str, scenario: tuple[list[Rate], list[Step]], throttle: float
) -> None:
    rates, script = scenario
    outcomes, charged = await run(redis_url, rates, script, throttle)
    model = Model()
    for outcome, charges in zip(outcomes, charged, strict=True):
        if outcome.admission is None:
            model.settle(
                outcome.now, list(zip(charges, outcome.step.amounts, strict=True)), throttle
            )
            continue
        allowed, reason, denied_by, retry_after_s = model.admit(outcome.now, charges, throttle)
        got = outcome.admission
        assert (got.allowed, got.reason, got.denied_by) == (allowed, reason, denied_by)
        assert abs(got.retry_after_s - retry_after_s) <= 1e-9 * max(1.0, retry_after_s)
        assert got.throttle_factor == throttle
        for charge, state in zip(charges, got.states, strict=True):
            limit, remaining, reset_s = model.state(outcome.now, charge, throttle)
            assert (state.name, state.limit) == (charge.rate.name, limit)
            # The script reports the TAT before storing it; one ulp at ~1.7e12 ms is 0.24 us.
            t_unit = charge.rate.period_s * 1000 / (charge.rate.limit * throttle)
            assert abs(state.remaining - remaining) <= 1e-6 + 1e-3 / t_unit
            assert abs(state.reset_s - reset_s) <= 1e-6


# --- (b) the GCRA bound holds for every window ---------------------------------------------


def check_window_bound(rates: list[Rate], outcomes: list[Outcome]) -> None:
    """For every window [t_i, t_j] that ends in an admission: admitted costs plus settled
    deltas inside it <= burst + limit * (t_j - t_i) / period.

    (Each operation moves a TAT forward by at least T * its amount, and an admission leaves
    it at most tau past now, so no sequence can beat the bound; settlements only count
    inside windows because an overrun is charged after the fact, never checked.)
    """
    for r, rate in enumerate(rates):
        burst = rate.limit if rate.burst is None else rate.burst
        t_unit = rate.period_s * 1000 / rate.limit
        amounts = []
        for o in outcomes:
            if o.admission is None:
                amounts.append(o.step.amounts[r])
            else:
                amounts.append(o.step.amounts[r] if o.admission.allowed else 0.0)
        slack = (EPS_MS + 1e-3 * len(outcomes)) / t_unit
        for j, end in enumerate(outcomes):
            if end.admission is None or not end.admission.allowed:
                continue
            used = 0.0
            for i in range(j, -1, -1):
                used += amounts[i]
                window_ms = end.now - outcomes[i].now
                bound = burst + rate.limit * window_ms / (rate.period_s * 1000)
                assert used <= bound + slack, (rate, i, j, used, bound)


@PROPERTY
@given(scenario=scenarios(settles=False))
async def test_admitted_cost_never_exceeds_the_window_bound(
    redis_url: str, scenario: tuple[list[Rate], list[Step]]
) -> None:
    rates, script = scenario
    outcomes, _ = await run(redis_url, rates, script)
    check_window_bound(rates, outcomes)


@PROPERTY
@given(scenario=scenarios(settles=True))
async def test_window_bound_holds_with_settlements(
    redis_url: str, scenario: tuple[list[Rate], list[Step]]
) -> None:
    rates, script = scenario
    outcomes, _ = await run(redis_url, rates, script)
    check_window_bound(rates, outcomes)
