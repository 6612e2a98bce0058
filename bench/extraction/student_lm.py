"""A small numpy language-model student for soft-label distillation.

Feed-forward next-token model over the last ``context`` token ids (embeddings, one tanh
hidden layer, softmax over the vocabulary), trained with Adam on soft targets (cross
entropy against a target distribution per example). Pure numpy, so the distillation
benchmark runs without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def log_softmax(z: F64) -> F64:
    shifted = z - z.max(axis=-1, keepdims=True)
    out: F64 = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


class StudentLM:
    """``fit(contexts, targets)`` then ``log_probs(contexts)``; contexts are (N, context)
    arrays of token ids, targets (N, vocab) probability rows."""

    def __init__(
        self,
        vocab_size: int,
        *,
        context: int = 3,
        embed: int = 24,
        hidden: int = 96,
        epochs: int = 30,
        batch: int = 64,
        lr: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.vocab_size, self.context, self.embed, self.hidden = vocab_size, context, embed, hidden
        self.epochs, self.batch, self.lr, self.seed = epochs, batch, lr, seed

    def _init(self, rng: np.random.Generator) -> dict[str, F64]:
        v, c, e, h = self.vocab_size, self.context, self.embed, self.hidden
        return {
            "emb": rng.normal(0, 0.1, (v, e)),
            "w1": rng.normal(0, 1 / np.sqrt(c * e), (c * e, h)),
            "b1": np.zeros(h),
            "w2": rng.normal(0, 1 / np.sqrt(h), (h, v)),
            "b2": np.zeros(v),
        }

    def _forward(self, ctx: I64) -> tuple[F64, F64, F64]:
        p = self.params_
        x = p["emb"][ctx].reshape(len(ctx), -1)
        h = np.tanh(x @ p["w1"] + p["b1"])
        return x, h, h @ p["w2"] + p["b2"]

    def fit(self, contexts: I64, targets: F64) -> StudentLM:
        rng = np.random.default_rng(self.seed)
        self.params_ = self._init(rng)
        m = {k: np.zeros_like(v) for k, v in self.params_.items()}
        s = {k: np.zeros_like(v) for k, v in self.params_.items()}
        beta1, beta2, step = 0.9, 0.999, 0
        n = len(contexts)
        for _ in range(self.epochs):
            order = rng.permutation(n)
            for start in range(0, n, self.batch):
                idx = order[start : start + self.batch]
                ctx, q = contexts[idx], targets[idx]
                x, h, z = self._forward(ctx)
                g = (np.exp(log_softmax(z)) - q) / len(idx)
                p = self.params_
                grads = {"w2": h.T @ g, "b2": g.sum(axis=0)}
                dpre = (g @ p["w2"].T) * (1 - h**2)
                grads["w1"] = x.T @ dpre
                grads["b1"] = dpre.sum(axis=0)
                dx = (dpre @ p["w1"].T).reshape(len(idx), self.context, self.embed)
                demb = np.zeros_like(p["emb"])
                np.add.at(demb, ctx, dx)
                grads["emb"] = demb
                step += 1
                for k, grad in grads.items():
                    m[k] = beta1 * m[k] + (1 - beta1) * grad
                    s[k] = beta2 * s[k] + (1 - beta2) * grad**2
                    m_hat = m[k] / (1 - beta1**step)
                    s_hat = s[k] / (1 - beta2**step)
                    p[k] -= self.lr * m_hat / (np.sqrt(s_hat) + 1e-8)
        return self

    def log_probs(self, contexts: I64) -> F64:
        return log_softmax(self._forward(contexts)[2])


def contexts_of(token_lists: Sequence[Sequence[int]], context: int, pad: int) -> I64:
    """The last ``context`` ids of each list, left-padded with ``pad``."""
    out = np.full((len(token_lists), context), pad, dtype=np.int64)
    for i, ids in enumerate(token_lists):
        tail = list(ids)[-context:]
        if tail:
            out[i, context - len(tail) :] = tail
    return out
