"""The sequence detector: a small torch model over a window's per-request feature stream.

Where the additive model (``detectors.models``) sees one aggregate vector per window, this
one sees the last ``seq_len`` requests of the window one by one: each request's own features
(:data:`STATIC_NAMES`, from its :class:`RequestRecord`) and its relation to the requests just
before it in the window (:data:`RELATION_NAMES`: inter-arrival gap, SimHash distance to
recent prompts, template and prompt repeats, IP changes). The network is a 1-D convolution
stack with attention and mean pooling (:func:`build_net`); its logit is calibrated like the
additive model's (0.5 and 0.85 are the 1 % and 0.3 % benign-client FPR points of
out-of-fold training scores).

torch is an optional extra: this module imports it only when a model is built, loaded or
run. An artifact is ``<name>.json`` (format, architecture, calibration, thresholds) plus
``<name>.npz`` (float32 weights, loaded with ``allow_pickle=False``; never ``torch.load``),
so loading one from an untrusted path cannot execute code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from detectors.models import ARTIFACT_DIR, Z_CLIP, ArtifactError
from detectors.schema import RequestRecord
from detectors.windows import HIGH_MAX_TOKENS

if TYPE_CHECKING:
    import torch

SEQUENCE_NAME = "sequence"
FORMAT = "antidistill-sequence/1"
KIND = "conv-attention"
LAGS = 8  # a request's near-duplicate distance looks this many requests back
_U64 = np.uint64

STATIC_NAMES: tuple[str, ...] = (
    "log_prompt_chars",
    "log_prompt_words",
    "log_messages",
    "log_user_turns",
    "has_system",
    "log_system_chars",
    "reasoning_marker",
    "log_prompt_tokens",
    "log_completion_tokens",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "single_turn",
    "status_429",
    "status_error",
    "denied",
    "temp0",
    "high_max_tokens",
    "n_multi",
    "seed",
    "stream",
    "completions_route",
    "hour_sin",
    "hour_cos",
)
RELATION_NAMES: tuple[str, ...] = (
    "log_gap_s",
    "ham_prev",
    "ham_min_recent",
    "template_eq_prev",
    "template_seen",
    "sketch_seen",
    "ip_changed",
)
SEQ_FEATURE_NAMES = STATIC_NAMES + RELATION_NAMES


@dataclass(frozen=True)
class NetConfig:
    """The architecture: everything needed to rebuild the network from its weights."""

    seq_len: int = 256
    hidden: int = 16
    kernel: int = 3

    def check(self) -> None:
        for name, value, lo, hi in (
            ("seq_len", self.seq_len, 8, 4096),
            ("hidden", self.hidden, 2, 512),
            ("kernel", self.kernel, 1, 31),
        ):
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ArtifactError(f"architecture: {name}={value!r} outside [{lo}, {hi}]")
        if self.kernel % 2 == 0:
            raise ArtifactError(f"architecture: kernel={self.kernel} must be odd")


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _static_row(r: RequestRecord) -> tuple[float, ...]:
    f, p, status = r.features, r.params, r.status
    top_lp = _number(p.get("top_logprobs"))
    temperature = p.get("temperature")
    max_tokens = max(_number(p.get("max_tokens")), _number(p.get("max_completion_tokens")))
    hour = (r.ts_ms % 86_400_000) / 3_600_000.0 * (2.0 * math.pi / 24.0)
    return (
        math.log1p(f.prompt_chars),
        math.log1p(f.prompt_words),
        math.log1p(f.messages),
        math.log1p(f.user_turns),
        float(f.system_chars > 0),
        math.log1p(f.system_chars),
        float(f.reasoning_marker),
        math.log1p(max(r.prompt_tokens, 0)),
        math.log1p(max(r.completion_tokens, 0)),
        float(bool(p.get("logprobs")) or top_lp > 0),
        min(top_lp / 20.0, 1.0),
        float(_number(p.get("logit_bias_tokens")) > 0),
        float(f.user_turns <= 1 and f.messages <= 2),
        float(status == 429),
        float(status >= 400 and status != 429),
        float(r.decision != "admitted"),
        float(temperature == 0 and not isinstance(temperature, bool)),
        float(max_tokens >= HIGH_MAX_TOKENS),
        float(_number(p.get("n")) > 1),
        float(bool(p.get("seed"))),
        float(bool(p.get("stream"))),
        float(r.route.endswith("/completions") and "chat" not in r.route),
        math.sin(hour),
        math.cos(hour),
    )


@dataclass(frozen=True)
class StreamArrays:
    """A client's records as arrays, computed once: any window is a slice ``[start, stop)``."""

    static: npt.NDArray[np.float32]  # (n, len(STATIC_NAMES))
    ts: npt.NDArray[np.float64]
    sketch: npt.NDArray[np.uint64]
    template: npt.NDArray[np.uint64]
    ip: npt.NDArray[np.int64]

    @classmethod
    def of(cls, records: Sequence[RequestRecord]) -> StreamArrays:
        n = len(records)
        static = np.array([_static_row(r) for r in records], dtype=np.float32)
        ips: dict[str, int] = {}
        return cls(
            static=static.reshape(n, len(STATIC_NAMES)),
            ts=np.fromiter((r.ts_ms for r in records), dtype=np.float64, count=n),
            sketch=np.fromiter((r.features.sketch for r in records), dtype=_U64, count=n),
            template=np.fromiter((r.features.template for r in records), dtype=_U64, count=n),
            ip=np.fromiter(
                (ips.setdefault(r.client_ip, len(ips)) for r in records), dtype=np.int64, count=n
            ),
        )

    def __len__(self) -> int:
        return int(self.ts.size)


def _seen_before(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """Whether each value occurred earlier in the array."""
    n = values.size
    _, inverse = np.unique(values, return_inverse=True)
    first = np.full(int(inverse.max()) + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(n))
    seen: npt.NDArray[np.bool_] = first[inverse] < np.arange(n)
    return seen


def sequence_matrix(
    stream: StreamArrays, start: int, stop: int, seq_len: int
) -> npt.NDArray[np.float32]:
    """(m, len(SEQ_FEATURE_NAMES)) raw features of the last ``seq_len`` requests of
    ``stream[start:stop]``; relations look only inside those ``m`` requests, so a window
    scores the same whether it is cut from a longer stream or given on its own."""
    lo = max(start, stop - seq_len)
    m = max(stop - lo, 0)
    out = np.zeros((m, len(SEQ_FEATURE_NAMES)), dtype=np.float32)
    if m == 0:
        return out
    out[:, : len(STATIC_NAMES)] = stream.static[lo:stop]
    ts, s, t = stream.ts[lo:stop], stream.sketch[lo:stop], stream.template[lo:stop]
    ip = stream.ip[lo:stop]
    rel = out[:, len(STATIC_NAMES) :]
    rel[1:, 0] = np.log10(1.0 + np.maximum(np.diff(ts), 0.0) / 1000.0)
    ham = np.full(m, 64, dtype=np.int64)
    prev = np.full(m, 64, dtype=np.int64)
    for lag in range(1, min(LAGS, m - 1) + 1):
        d = np.bitwise_count(s[lag:] ^ s[:-lag]).astype(np.int64)
        ham[lag:] = np.minimum(ham[lag:], d)
        if lag == 1:
            prev[1:] = d
    rel[:, 1] = prev / 64.0
    rel[:, 2] = ham / 64.0
    rel[1:, 3] = t[1:] == t[:-1]
    rel[:, 4] = _seen_before(t)
    rel[:, 5] = _seen_before(s)
    rel[1:, 6] = ip[1:] != ip[:-1]
    return out


def build_net(config: NetConfig, inputs: int = len(SEQ_FEATURE_NAMES)) -> torch.nn.Module:
    """The network: per-request embedding, two residual 1-D convolutions (the second
    dilated), then attention pooling and mean pooling over the real (unpadded) requests."""
    import torch
    from torch import nn

    class ConvAttention(nn.Module):  # type: ignore[misc]  # torch is Any to mypy
        def __init__(self) -> None:
            super().__init__()
            h, k = config.hidden, config.kernel
            self.embed = nn.Linear(inputs, h)
            self.conv1 = nn.Conv1d(h, h, k, padding=k // 2)
            self.conv2 = nn.Conv1d(h, h, k, padding=2 * (k // 2), dilation=2)
            self.attend = nn.Linear(h, 1)
            self.head = nn.Sequential(nn.Linear(2 * h, h), nn.GELU(), nn.Linear(h, 1))

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            act = nn.functional.gelu
            keep = mask.unsqueeze(-1).to(x.dtype)
            h = act(self.embed(x)) * keep
            c = h.transpose(1, 2)
            c = c + act(self.conv1(c)) * keep.transpose(1, 2)
            c = c + act(self.conv2(c)) * keep.transpose(1, 2)
            h = c.transpose(1, 2)
            a = self.attend(h).squeeze(-1).masked_fill(~mask, -1e9)
            pooled = (torch.softmax(a, dim=1).unsqueeze(-1) * h).sum(dim=1)
            mean = (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
            out: torch.Tensor = self.head(torch.cat([pooled, mean], dim=1)).squeeze(-1)
            return out

    return ConvAttention()


def batch(
    mats: Sequence[npt.NDArray[np.float32]],
    mean: npt.NDArray[np.float32],
    scale: npt.NDArray[np.float32],
    seq_len: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Standardized (clipped), left-padded to ``seq_len``: (B, L, D) inputs and (B, L) mask."""
    d = len(SEQ_FEATURE_NAMES)
    X = np.zeros((len(mats), seq_len, d), dtype=np.float32)
    mask = np.zeros((len(mats), seq_len), dtype=bool)
    for i, m in enumerate(mats):
        n = min(len(m), seq_len)
        if n:
            X[i, seq_len - n :] = np.clip((m[-n:] - mean) / scale, -Z_CLIP, Z_CLIP)
            mask[i, seq_len - n :] = True
    return X, mask


@dataclass(frozen=True)
class SequenceDetector:
    """Scores a client's window in [0, 1] from its per-request stream (needs torch)."""

    version: str
    config: NetConfig
    input_mean: npt.NDArray[np.float32]
    input_scale: npt.NDArray[np.float32]
    weights: dict[str, npt.NDArray[np.float32]]
    calibration: tuple[float, float]  # score = sigmoid(a * logit + b)
    threshold_by_fpr: dict[str, float]
    combined: dict[str, Any] = field(default_factory=dict)  # with the additive model
    min_requests: int = 20
    metadata: dict[str, Any] = field(default_factory=dict)
    _net: list[torch.nn.Module] = field(default_factory=list, repr=False, compare=False)

    def net(self) -> torch.nn.Module:
        """The torch module (built once from ``weights``)."""
        if not self._net:
            import torch

            net = build_net(self.config)
            state = {
                k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in self.weights.items()
            }
            net.load_state_dict(state, strict=True)
            net.eval()
            self._net.append(net)
        return self._net[0]

    def logits(
        self, mats: Sequence[npt.NDArray[np.float32]], chunk: int = 256
    ) -> npt.NDArray[np.float64]:
        """Raw logits of windows given as :func:`sequence_matrix` outputs."""
        import torch

        out = np.zeros(len(mats), dtype=np.float64)
        net = self.net()
        with torch.inference_mode():
            for lo in range(0, len(mats), chunk):
                X, mask = batch(
                    mats[lo : lo + chunk], self.input_mean, self.input_scale, self.config.seq_len
                )
                y = net(torch.from_numpy(X), torch.from_numpy(mask))
                out[lo : lo + len(X)] = y.double().numpy()
        return out

    def score_matrices(self, mats: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float64]:
        a, b = self.calibration
        z = a * self.logits(mats) + b
        out: npt.NDArray[np.float64] = np.exp(-np.logaddexp(0.0, -z))
        return out

    def score_windows(self, windows: Sequence[Sequence[RequestRecord]]) -> npt.NDArray[np.float64]:
        """The scores of time-ordered windows, one call for all (their last ``seq_len``)."""
        mats = []
        for records in windows:
            tail = records[-self.config.seq_len :]
            mats.append(sequence_matrix(StreamArrays.of(tail), 0, len(tail), self.config.seq_len))
        return self.score_matrices(mats) if mats else np.zeros(0, dtype=np.float64)

    def score_records(self, records: Sequence[RequestRecord]) -> float | None:
        """The score of one time-ordered window; None below ``min_requests``."""
        if len(records) < self.min_requests:
            return None
        tail = records[-self.config.seq_len :]
        mat = sequence_matrix(StreamArrays.of(tail), 0, len(tail), self.config.seq_len)
        return float(self.score_matrices([mat])[0])

    def threshold(self, fpr: str = "0.001") -> float:
        return self.threshold_by_fpr[fpr]

    def combine(
        self, lr_scores: npt.NDArray[np.float64], seq_scores: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """The combined score on the policy's scale: the mean of the two calibrated scores
        (``combined["threshold_by_fpr"]`` applies to it), mapped by the same monotone logit
        map as each model, so 0.5 / 0.85 are its 1 % / 0.3 % out-of-fold benign FPR points.
        Only meaningful with the additive model named in ``combined["lr_version"]``."""
        from detectors.train import _logit, calibration

        if not self.combined:
            raise ArtifactError(f"{self.version} has no combined calibration")
        a, b = calibration(self.combined["threshold_by_fpr"])
        mean = 0.5 * (np.asarray(lr_scores, dtype=np.float64) + seq_scores)
        out: npt.NDArray[np.float64] = np.exp(-np.logaddexp(0.0, -(a * _logit(mean) + b)))
        return out

    def save(self, directory: Path, name: str = SEQUENCE_NAME) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "kind": KIND,
            "version": self.version,
            "feature_names": list(SEQ_FEATURE_NAMES),
            "config": {
                "seq_len": self.config.seq_len,
                "hidden": self.config.hidden,
                "kernel": self.config.kernel,
            },
            "calibration": list(self.calibration),
            "threshold_by_fpr": self.threshold_by_fpr,
            "combined": self.combined,
            "min_requests": self.min_requests,
            "metadata": self.metadata,
        }
        json_path, npz_path = directory / f"{name}.json", directory / f"{name}.npz"
        json_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        arrays = {"input_mean": self.input_mean, "input_scale": self.input_scale}
        arrays.update({f"net/{k}": v for k, v in sorted(self.weights.items())})
        with npz_path.open("wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        return json_path, npz_path


def _expected_shapes(config: NetConfig) -> dict[str, tuple[int, ...]]:
    net = build_net(config)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def load_sequence_detector(path: Path) -> SequenceDetector:
    """Load ``path`` (``x.json``, ``x.npz``, or a directory holding ``sequence.json``).

    Raises :class:`ArtifactError` for anything malformed (and ImportError without torch).
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"{SEQUENCE_NAME}.json"
    json_path, npz_path = path.with_suffix(".json"), path.with_suffix(".npz")
    try:
        meta = json.loads(json_path.read_text())
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {k: np.array(data[k]) for k in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot load sequence artifact {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("kind") != KIND:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactError(f"{json_path}: unknown artifact format {got!r}")
    if tuple(meta.get("feature_names", ())) != SEQ_FEATURE_NAMES:
        raise ArtifactError(f"{json_path}: trained on other request features than this code's")
    try:
        raw = meta["config"]
        config = NetConfig(int(raw["seq_len"]), int(raw["hidden"]), int(raw["kernel"]))
        a, b = (float(x) for x in meta["calibration"])
        thresholds = {str(k): float(v) for k, v in meta["threshold_by_fpr"].items()}
        version, min_requests = str(meta["version"]), int(meta["min_requests"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{json_path}: missing or malformed field: {exc}") from exc
    config.check()
    d = len(SEQ_FEATURE_NAMES)
    for k in ("input_mean", "input_scale"):
        if k not in arrays or arrays[k].shape != (d,):
            got = arrays[k].shape if k in arrays else "missing"
            raise ArtifactError(f"{npz_path}: {k} is {got}, expected ({d},)")
    expected = _expected_shapes(config)
    weights = {k[4:]: v for k, v in arrays.items() if k.startswith("net/")}
    if set(weights) != set(expected) or len(arrays) != len(expected) + 2:
        raise ArtifactError(f"{npz_path}: weights do not match the {KIND} architecture")
    for k, shape in expected.items():
        if weights[k].shape != shape or weights[k].dtype.kind != "f":
            raise ArtifactError(f"{npz_path}: {k} has shape {weights[k].shape}, expected {shape}")
    if (
        not all(np.isfinite(v).all() for v in arrays.values())
        or not (arrays["input_scale"] > 0).all()
    ):
        raise ArtifactError(f"{npz_path}: non-finite weights or non-positive scales")
    return SequenceDetector(
        version=version,
        config=config,
        input_mean=arrays["input_mean"].astype(np.float32),
        input_scale=arrays["input_scale"].astype(np.float32),
        weights={k: v.astype(np.float32) for k, v in weights.items()},
        calibration=(a, b),
        threshold_by_fpr=thresholds,
        combined=dict(meta.get("combined", {})),
        min_requests=min_requests,
        metadata=dict(meta.get("metadata", {})),
    )


def torch_available() -> bool:
    """Whether the optional torch extra is installed (imports nothing)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def load_default_sequence_detector() -> SequenceDetector:
    """The shipped sequence model (``detectors/artifacts/sequence.json`` + ``.npz``)."""
    return load_sequence_detector(ARTIFACT_DIR / f"{SEQUENCE_NAME}.json")
