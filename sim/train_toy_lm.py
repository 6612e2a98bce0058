"""Trains the toy LM with a hand-written numpy Adam loop; ``python -m sim.train_toy_lm``.

Text comes from the ``chitchat-dataset`` package (the optional ``sim`` extra). Each
conversation becomes one token stream ``message <eos> message <eos> ...``, so after an
``<eos>`` the model has learned to start a reply. Training is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sim.toy_lm import DEFAULT_WEIGHTS, EOS, UNK, FloatArray, ToyLM, split_words

Conversation = Sequence[str]


@dataclass(frozen=True)
class TrainConfig:
    """Model shape and optimiser settings."""

    vocab_size: int = 2000
    context_size: int = 3
    embed_dim: int = 32
    hidden_size: int = 64
    batch_size: int = 512
    epochs: int = 2
    learning_rate: float = 4e-3
    max_examples: int | None = None
    holdout_fraction: float = 0.02
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    """The trained model and how well it fits held-out text."""

    model: ToyLM
    train_loss: float
    holdout_loss: float
    examples: int
    seconds: float


def build_vocab(conversations: Iterable[Conversation], size: int) -> list[str]:
    """``<unk>``, ``<eos>`` and the ``size - 2`` most frequent tokens (ties by text)."""
    counts: Counter[str] = Counter()
    for conversation in conversations:
        for message in conversation:
            counts.update(split_words(message))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [UNK, EOS] + [word for word, _ in ranked[: size - 2]]


def make_examples(
    conversations: Iterable[Conversation], vocab: Sequence[str], context_size: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """(contexts, targets): every next-token prediction in the conversations' streams."""
    ids = {word: i for i, word in enumerate(vocab)}
    unk, eos = ids[UNK], ids[EOS]
    stream: list[int] = []
    starts: list[int] = []
    for conversation in conversations:
        starts.append(len(stream))
        for message in conversation:
            stream.extend(ids.get(word, unk) for word in split_words(message))
            stream.append(eos)
    tokens = np.asarray(stream, dtype=np.int32)
    # position of each token inside its conversation, for <eos> left padding
    offsets = np.arange(len(tokens)) - np.repeat(
        np.asarray(starts), np.diff(np.asarray([*starts, len(tokens)]))
    )
    contexts = np.full((len(tokens), context_size), eos, dtype=np.int32)
    for back in range(1, context_size + 1):
        valid = offsets >= back
        column = context_size - back
        contexts[valid, column] = tokens[np.flatnonzero(valid) - back]
    return contexts, tokens


class _Adam:
    def __init__(self, params: list[FloatArray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[FloatArray], lr_scale: float) -> None:
        self.t += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        lr = self.lr * lr_scale * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (lr * m / (np.sqrt(v) + eps)).astype(np.float32)


def _forward(
    params: list[FloatArray], contexts: npt.NDArray[np.int32]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    emb, w_h, b_h, w_out, b_out = params
    x = emb[contexts].reshape(len(contexts), -1)
    h = np.tanh(x @ w_h + b_h)
    return x, h, h @ w_out.T + b_out


def _loss_and_grads(
    params: list[FloatArray], contexts: npt.NDArray[np.int32], targets: npt.NDArray[np.int32]
) -> tuple[float, list[FloatArray]]:
    emb, w_h, _, w_out, _ = params
    x, h, logits = _forward(params, contexts)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(len(targets))
    loss = float(-np.mean(np.log(probs[rows, targets] + 1e-12)))
    d_logits = probs
    d_logits[rows, targets] -= 1.0
    d_logits /= len(targets)
    d_h = (d_logits @ w_out) * (1.0 - h * h)
    d_x = (d_h @ w_h.T).reshape(contexts.shape[0], contexts.shape[1], -1)
    d_emb = np.zeros_like(emb)
    np.add.at(d_emb, contexts, d_x)
    grads = [d_emb, x.T @ d_h, d_h.sum(axis=0), d_logits.T @ h, d_logits.sum(axis=0)]
    return loss, grads


def _mean_loss(
    params: list[FloatArray], contexts: npt.NDArray[np.int32], targets: npt.NDArray[np.int32]
) -> float:
    total = 0.0
    for lo in range(0, len(targets), 4096):
        _, _, logits = _forward(params, contexts[lo : lo + 4096])
        top = logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
        total += float(np.sum(lse - logits[np.arange(len(logits)), targets[lo : lo + 4096]]))
    return total / max(len(targets), 1)


def train(
    conversations: Sequence[Conversation],
    config: TrainConfig = TrainConfig(),
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Trains a ``ToyLM`` on ``conversations``; the last ``holdout_fraction`` is held out."""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    n_holdout = int(len(conversations) * config.holdout_fraction)
    train_convs = conversations[: len(conversations) - n_holdout]
    vocab = build_vocab(train_convs, config.vocab_size)
    contexts, targets = make_examples(train_convs, vocab, config.context_size)
    hold_ctx, hold_tgt = make_examples(
        conversations[len(train_convs) :], vocab, config.context_size
    )
    hold_known = hold_tgt != vocab.index(UNK)
    hold_ctx, hold_tgt = hold_ctx[hold_known], hold_tgt[hold_known]
    # never learn to say <unk>: its logit is only pushed down, so generation avoids it
    known = targets != vocab.index(UNK)
    contexts, targets = contexts[known], targets[known]
    if config.max_examples is not None and config.max_examples < len(targets):
        keep = np.sort(rng.choice(len(targets), config.max_examples, replace=False))
        contexts, targets = contexts[keep], targets[keep]

    v, c, e, hid = len(vocab), config.context_size, config.embed_dim, config.hidden_size
    unigram = np.bincount(targets, minlength=v).astype(np.float64) + 1.0
    params: list[FloatArray] = [
        rng.normal(0.0, 0.1, (v, e)).astype(np.float32),
        rng.normal(0.0, 1.0 / np.sqrt(c * e), (c * e, hid)).astype(np.float32),
        np.zeros(hid, dtype=np.float32),
        rng.normal(0.0, 1.0 / np.sqrt(hid), (v, hid)).astype(np.float32),
        np.log(unigram / unigram.sum()).astype(np.float32),
    ]
    adam = _Adam(params, config.learning_rate)
    steps_per_epoch = max(1, len(targets) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    recent: list[float] = []
    for epoch in range(config.epochs):
        order = rng.permutation(len(targets))
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            loss, grads = _loss_and_grads(params, contexts[batch], targets[batch])
            done = (epoch * steps_per_epoch + step) / total_steps
            adam.step(grads, lr_scale=1.0 - 0.9 * done)
            recent = [*recent[-199:], loss]
            if log is not None and step % 500 == 0:
                log(f"epoch {epoch} step {step}/{steps_per_epoch} loss {np.mean(recent):.3f}")

    model = ToyLM(
        vocab=vocab,
        embeddings=params[0],
        w_hidden=params[1],
        b_hidden=params[2],
        w_out=params[3],
        b_out=params[4],
    )
    return TrainResult(
        model=model,
        train_loss=float(np.mean(recent)) if recent else float("nan"),
        holdout_loss=_mean_loss(params, hold_ctx, hold_tgt),
        examples=len(targets),
        seconds=time.perf_counter() - started,
    )


def chitchat_conversations() -> list[list[str]]:
    """Conversations from the ``chitchat-dataset`` package, one string per message."""
    import chitchat_dataset

    return [list(messages) for messages in chitchat_dataset.ConversationDataset()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    args = parser.parse_args(argv)
    config = TrainConfig(seed=args.seed, epochs=args.epochs)
    result = train(chitchat_conversations(), config, log=print)
    result.model.save(args.out)
    print(
        f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): vocab {config.vocab_size}, "
        f"H {config.hidden_size}, {result.examples} examples, {result.seconds:.1f} s, "
        f"train loss {result.train_loss:.3f}, held-out loss {result.holdout_loss:.3f} "
        f"(perplexity {np.exp(result.holdout_loss):.1f})"
    )


if __name__ == "__main__":
    main()
