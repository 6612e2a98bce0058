"""Per-client window features: one fixed-length vector for a client's recent requests.

A window is a client's time-ordered :class:`RequestRecord` s, bounded by the caller (the
worker keeps the last ``MAX_WINDOW`` requests of at most 24 hours). The vector mixes
behaviour (rate, timing regularity, diurnal coverage, parameters, 429 pressure) and content
(template reuse, near duplicates, sketch spread, and a benign-calibrated MMD of the prompt
sketches) so that no single cheap evasion hides a harvesting client.

Pairwise terms (near duplicates, spread, MMD) use only the last ``PAIRWISE_CAP`` sketches of
the window so that computing one vector stays well under a millisecond.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detectors.schema import RequestRecord

MAX_WINDOW = 500
WINDOW_MS = 24 * 3600 * 1000
PAIRWISE_CAP = 200
NEAR_DUP_BITS = 6
HIGH_MAX_TOKENS = 2048
MMD_GAMMA = 1.0 / 8.0  # k(x, y) = exp(-gamma * hamming(x, y)) on 64-bit sketches (Laplacian)

FEATURE_NAMES: tuple[str, ...] = (
    "log_rate_per_min",
    "iat_cv",
    "burstiness",
    "iat_log_std",
    "hour_entropy",
    "template_reuse",
    "top_template_share",
    "near_dup_rate",
    "exact_dup_rate",
    "sketch_spread",
    "bit_balance",
    "mmd_benign_sketch",
    "mmd_benign_template",
    "reasoning_share",
    "logprobs_share",
    "top_logprobs_mean",
    "logit_bias_share",
    "log_out_in_ratio",
    "log_completion_mean",
    "log_completion_per_min",
    "log_prompt_words_mean",
    "prompt_words_cv",
    "single_turn_share",
    "log_turns_mean",
    "status_429_share",
    "error_share",
    "denied_share",
    "temp0_share",
    "high_max_tokens_share",
    "n_multi_share",
    "seed_share",
    "stream_share",
    "system_prompt_share",
    "system_constant_share",
    "log_distinct_ips",
)

_U64 = np.uint64
_KERNEL = np.exp(-MMD_GAMMA * np.arange(65, dtype=np.float64))


def _pairwise_hamming(
    a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]
) -> npt.NDArray[np.uint8]:
    out: npt.NDArray[np.uint8] = np.bitwise_count(a[:, None] ^ b[None, :])
    return out


@dataclass(frozen=True, slots=True)
class BenignReference:
    """A sample of benign prompt sketches and templates (stored in the model artifact).

    ``*_self`` caches the mean kernel value within the reference, the constant term of the
    (biased) MMD² estimate.
    """

    sketches: npt.NDArray[np.uint64]
    templates: npt.NDArray[np.uint64]
    sketch_self: float
    template_self: float

    @classmethod
    def from_arrays(
        cls, sketches: npt.NDArray[np.uint64], templates: npt.NDArray[np.uint64]
    ) -> BenignReference:
        s = np.asarray(sketches, dtype=_U64)
        t = np.asarray(templates, dtype=_U64)
        return cls(
            sketches=s,
            templates=t,
            sketch_self=float(_KERNEL[_pairwise_hamming(s, s)].mean()) if s.size else 0.0,
            template_self=float(_KERNEL[_pairwise_hamming(t, t)].mean()) if t.size else 0.0,
        )

    @classmethod
    def from_records(
        cls, records: Sequence[RequestRecord], size: int = 256, seed: int = 0
    ) -> BenignReference:
        """A uniform sample of ``size`` benign requests' sketches."""
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(records), size=min(size, len(records)), replace=False)
        s = np.array([records[i].features.sketch for i in pick], dtype=_U64)
        t = np.array([records[i].features.template for i in pick], dtype=_U64)
        return cls.from_arrays(s, t)


def mmd2(
    window: npt.NDArray[np.uint64], reference: npt.NDArray[np.uint64], reference_self: float
) -> float:
    """Biased MMD² between two samples of 64-bit sketches under the Laplacian-Hamming kernel."""
    if window.size == 0 or reference.size == 0:
        return 0.0
    ww = float(_KERNEL[_pairwise_hamming(window, window)].mean())
    wr = float(_KERNEL[_pairwise_hamming(window, reference)].mean())
    return max(0.0, ww + reference_self - 2.0 * wr)


def _timing(ts: npt.NDArray[np.float64]) -> tuple[float, float, float, float, float]:
    """(log rate/min, inter-arrival CV, burstiness, std of log inter-arrival, hour entropy)."""
    n = ts.size
    span_min = max((ts[-1] - ts[0]) / 60_000.0, 1.0) if n else 1.0
    rate = math.log1p(n / span_min)
    hours = np.bincount(((ts // 3_600_000) % 24).astype(np.int64), minlength=24)
    p = hours[hours > 0] / max(n, 1)
    hour_entropy = float(-(p * np.log(p)).sum() / math.log(24)) if n else 0.0
    if n < 3:
        return rate, 0.0, 0.0, 0.0, hour_entropy
    iat = np.diff(ts)
    mu, sigma = float(iat.mean()), float(iat.std())
    cv = sigma / mu if mu > 0 else 0.0
    burst = (sigma - mu) / (sigma + mu) if sigma + mu > 0 else 0.0
    log_std = float(np.log10(iat + 1.0).std())
    return rate, min(cv, 10.0), burst, log_std, hour_entropy


_ROW = 18
_SHARE_COLS = list(range(12))
_PROMPT_TOK, _COMPLETION_TOK, _WORDS, _TURNS, _TOP_LP, _SYSTEM = 12, 13, 14, 15, 16, 17


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _record_row(r: RequestRecord) -> tuple[float, ...]:
    """One pass over a record: the per-request numbers the window features aggregate."""
    f, p, status = r.features, r.params, r.status
    top_lp = _number(p.get("top_logprobs"))
    temperature = p.get("temperature")
    max_tokens = max(_number(p.get("max_tokens")), _number(p.get("max_completion_tokens")))
    return (
        f.reasoning_marker,
        bool(p.get("logprobs")) or top_lp > 0,
        _number(p.get("logit_bias_tokens")) > 0,
        f.user_turns <= 1 and f.messages <= 2,
        status == 429,
        status >= 400 and status != 429,
        r.decision != "admitted",
        temperature == 0 and not isinstance(temperature, bool),
        max_tokens >= HIGH_MAX_TOKENS,
        _number(p.get("n")) > 1,
        bool(p.get("seed")),
        bool(p.get("stream")),
        r.prompt_tokens,
        r.completion_tokens,
        f.prompt_words,
        f.user_turns,
        top_lp,
        f.system_chars,
    )


_ROWS: dict[int, tuple[RequestRecord, tuple[float, ...]]] | None = None


@contextmanager
def cached_rows() -> Iterator[None]:
    """Within it, each record's row is computed once (keyed by the record's identity, which
    the cache keeps alive): for featurizing many overlapping windows of the same records,
    as a replay does. The live worker featurizes each window once and does not use it."""
    global _ROWS
    outer, _ROWS = _ROWS, _ROWS if _ROWS is not None else {}
    try:
        yield
    finally:
        _ROWS = outer


def _rows(records: Sequence[RequestRecord]) -> list[tuple[float, ...]]:
    cache = _ROWS
    if cache is None:
        return [_record_row(r) for r in records]
    out = []
    for r in records:
        hit = cache.get(id(r))
        if hit is None:
            hit = cache[id(r)] = (r, _record_row(r))
        out.append(hit[1])
    return out


def window_features(
    records: Sequence[RequestRecord], *, benign: BenignReference | None = None
) -> npt.NDArray[np.float64]:
    """The window feature vector (``len(FEATURE_NAMES)`` floats) of time-ordered records.

    Without ``benign`` the two MMD features are 0 (a model artifact always provides one).
    """
    n = len(records)
    out = np.zeros(len(FEATURE_NAMES), dtype=np.float64)
    if n == 0:
        return out
    ts = np.fromiter((r.ts_ms for r in records), dtype=np.float64, count=n)
    span_min = max((ts[-1] - ts[0]) / 60_000.0, 1.0)
    rate, cv, burst, log_std, hour_entropy = _timing(ts)

    feats = [r.features for r in records]
    sketches = np.fromiter((f.sketch for f in feats), dtype=_U64, count=n)
    templates = np.fromiter((f.template for f in feats), dtype=_U64, count=n)
    template_counts = Counter(templates.tolist())
    tail = sketches[-PAIRWISE_CAP:]
    m = tail.size
    ham = _pairwise_hamming(tail, tail)
    if m > 1:
        off = ~np.eye(m, dtype=bool)
        near_dup = float((np.where(off, ham, 64) <= NEAR_DUP_BITS).any(axis=1).mean())
        spread = float(ham[off].mean()) / 32.0
    else:
        near_dup, spread = 0.0, 0.0
    bits = np.unpackbits(tail.astype(">u8").view(np.uint8)).reshape(m, 64)
    bit_balance = float(np.abs(bits.mean(axis=0) * 2.0 - 1.0).mean())
    mmd_s = mmd_t = 0.0
    if benign is not None:
        mmd_s = mmd2(tail, benign.sketches, benign.sketch_self)
        mmd_t = mmd2(templates[-PAIRWISE_CAP:], benign.templates, benign.template_self)

    rows = np.array(_rows(records), dtype=np.float64).reshape(n, _ROW)
    shares = rows[:, _SHARE_COLS].mean(axis=0)
    prompt_tok, completion_tok = rows[:, _PROMPT_TOK].sum(), rows[:, _COMPLETION_TOK].sum()
    words = rows[:, _WORDS]
    words_mean = float(words.mean())
    system = rows[:, _SYSTEM]
    system_sizes = Counter(system[system > 0].tolist())
    out[:] = (
        rate,
        cv,
        burst,
        log_std,
        hour_entropy,
        1.0 - len(template_counts) / n,
        max(template_counts.values()) / n,
        near_dup,
        1.0 - len(set(sketches.tolist())) / n,
        spread,
        bit_balance,
        mmd_s,
        mmd_t,
        shares[0],  # reasoning
        shares[1],  # logprobs
        min(float(rows[:, _TOP_LP].mean()) / 20.0, 1.0),
        shares[2],  # logit bias
        math.log((completion_tok + 1.0) / (prompt_tok + 1.0)),
        math.log1p(completion_tok / n),
        math.log1p(completion_tok / span_min),
        math.log1p(words_mean),
        float(words.std()) / words_mean if words_mean > 0 else 0.0,
        shares[3],  # single turn
        math.log1p(float(rows[:, _TURNS].mean())),
        shares[4],  # 429
        shares[5],  # other errors
        shares[6],  # denied
        shares[7],  # temperature 0
        shares[8],  # high max_tokens
        shares[9],  # n > 1
        shares[10],  # seed
        shares[11],  # stream
        float((system > 0).mean()),
        max(system_sizes.values()) / n if system_sizes else 0.0,
        math.log1p(len({r.client_ip for r in records if r.client_ip})),
    )
    return out


def bounded_window(
    records: Sequence[RequestRecord], end: int | None = None
) -> Sequence[RequestRecord]:
    """The last ``MAX_WINDOW`` records up to ``end`` (exclusive) within 24 hours of the last."""
    stop = len(records) if end is None else min(end, len(records))
    start = max(0, stop - MAX_WINDOW)
    if stop == 0:
        return records[0:0]
    cutoff = records[stop - 1].ts_ms - WINDOW_MS
    while start < stop and records[start].ts_ms < cutoff:
        start += 1
    return records[start:stop]
