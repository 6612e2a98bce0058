"""A tiny word-level neural language model in pure numpy: the toy upstream's LLM.

Architecture (Bengio-style feed-forward LM): the previous ``context_size`` token ids are
embedded, concatenated, passed through one ``tanh`` hidden layer of size ``hidden_size``,
and projected to the vocabulary by a linear layer::

    h = tanh(concat(E[ctx]) @ W_hidden + b_hidden)       # (hidden_size,)
    logits = W_out @ h + b_out                           # (vocab_size,)

The final layer is linear from an H-dimensional state, so the matrix of logit vectors over
many contexts has rank about H — the property the hidden-size recovery attack (Carlini et
al. 2024) exploits. Weights are trained by ``sim.train_toy_lm`` and shipped as
``sim/data/toy_lm.npz`` (plain arrays, loadable with ``allow_pickle=False``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

UNK = "<unk>"
EOS = "<eos>"
DEFAULT_WEIGHTS = Path(__file__).parent / "data" / "toy_lm.npz"

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\sa-z0-9]")
_NO_SPACE_BEFORE = frozenset(".,!?;:)%'")
_NO_SPACE_AFTER = frozenset("($")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def split_words(text: str) -> list[str]:
    """Lower-cases ``text`` and splits it into word and single-punctuation tokens."""
    return _TOKEN_RE.findall(text.lower().replace("\u2019", "'"))


class TokenLogprob(NamedTuple):
    """One candidate token and its log-probability."""

    token: str
    logprob: float
    token_id: int


class GeneratedToken(NamedTuple):
    """One sampled token, its log-probability and the most likely alternatives."""

    token: str
    logprob: float
    top_logprobs: list[TokenLogprob]
    token_id: int


class ToyLM:
    """A trained toy language model; immutable after construction.

    Reported log-probabilities are those of ``log_softmax(logits + logit_bias)`` (before
    temperature, as vLLM and the OpenAI API report them); sampling draws from
    ``softmax((logits + logit_bias) / temperature)``, and temperature 0 is greedy.
    """

    def __init__(
        self,
        *,
        vocab: Sequence[str],
        embeddings: FloatArray,
        w_hidden: FloatArray,
        b_hidden: FloatArray,
        w_out: FloatArray,
        b_out: FloatArray,
    ) -> None:
        vocab_size, embed_dim = embeddings.shape
        hidden_size = w_hidden.shape[1]
        if len(vocab) != vocab_size or w_out.shape != (vocab_size, hidden_size):
            raise ValueError("vocabulary and weight shapes disagree")
        if w_hidden.shape[0] % embed_dim or b_hidden.shape != (hidden_size,):
            raise ValueError("hidden layer shape does not match the embeddings")
        if b_out.shape != (vocab_size,) or UNK not in vocab or EOS not in vocab:
            raise ValueError("output bias shape or special tokens are wrong")
        self._vocab = tuple(vocab)
        self._ids = {token: i for i, token in enumerate(self._vocab)}
        if len(self._ids) != vocab_size:
            raise ValueError("vocabulary has duplicate tokens")
        arrays = (embeddings, w_hidden, b_hidden, w_out, b_out)
        for array in arrays:
            array.setflags(write=False)
        self.embeddings, self.w_hidden, self.b_hidden, self.w_out, self.b_out = arrays
        self.context_size = w_hidden.shape[0] // embed_dim
        self.unk_id = self._ids[UNK]
        self.eos_id = self._ids[EOS]

    # -- vocabulary ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def hidden_size(self) -> int:
        return int(self.w_hidden.shape[1])

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._vocab

    def token_str(self, token_id: int) -> str:
        """The token's text without any leading space."""
        return self._vocab[token_id]

    def token_id(self, token: str) -> int | None:
        """The id of ``token`` (surrounding whitespace ignored), or None if not in vocab."""
        return self._ids.get(token.strip())

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``; out-of-vocabulary words map to ``<unk>``."""
        return [self._ids.get(word, self.unk_id) for word in split_words(text)]

    def piece(self, token_id: int, *, previous_id: int | None) -> str:
        """The text ``token_id`` adds after ``previous_id`` (None: at the start of text)."""
        token = self._vocab[token_id]
        if previous_id is None or token in _NO_SPACE_BEFORE or token in (UNK, EOS):
            return token
        if self._vocab[previous_id] in _NO_SPACE_AFTER:
            return token
        return " " + token

    def detokenize(self, ids: Sequence[int]) -> str:
        """Readable text for ``ids``; ``detokenize(tokenize(t))`` is ``t`` re-spaced."""
        pieces: list[str] = []
        previous: int | None = None
        for token_id in ids:
            pieces.append(self.piece(token_id, previous_id=previous))
            previous = token_id
        return "".join(pieces)

    # -- model --------------------------------------------------------------------------

    def _context(self, context_ids: Sequence[int]) -> IntArray:
        ids = list(context_ids)[-self.context_size :]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError("context holds a token id outside the vocabulary")
        padded = [self.eos_id] * (self.context_size - len(ids)) + ids
        return np.asarray(padded, dtype=np.int64)

    def hidden(self, context_ids: Sequence[int]) -> FloatArray:
        """The H-dimensional hidden state after ``context_ids`` (left-padded with <eos>)."""
        x = self.embeddings[self._context(context_ids)].reshape(-1)
        h: FloatArray = np.tanh(x @ self.w_hidden + self.b_hidden)
        return h

    def logits(self, context_ids: Sequence[int]) -> npt.NDArray[np.float64]:
        """Raw next-token logits ``W_out @ h + b_out``."""
        h = self.hidden(context_ids)
        return (self.w_out @ h + self.b_out).astype(np.float64)

    def next_token_logprobs(
        self, context_ids: Sequence[int], logit_bias: Mapping[int, float] | None = None
    ) -> npt.NDArray[np.float64]:
        """Log-softmax over the vocabulary of the (biased) next-token logits."""
        return _log_softmax(self.logits(context_ids) + self._bias(logit_bias))

    def embed(self, text: str) -> npt.NDArray[np.float64]:
        """Mean of the input embeddings of ``text``'s tokens, L2-normalised (deterministic)."""
        ids = self.tokenize(text) or [self.eos_id]
        vector = self.embeddings[ids].astype(np.float64).mean(axis=0)
        norm = float(np.linalg.norm(vector))
        unit: npt.NDArray[np.float64] = vector / norm if norm > 0 else vector
        return unit

    def _bias(self, logit_bias: Mapping[int, float] | None) -> npt.NDArray[np.float64]:
        bias = np.zeros(self.vocab_size, dtype=np.float64)
        for token_id, value in (logit_bias or {}).items():
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"logit_bias token id {token_id} is outside the vocabulary")
            bias[token_id] = value
        return bias

    def generate_ids(
        self,
        context_ids: Sequence[int],
        *,
        max_tokens: int,
        temperature: float = 1.0,
        seed: int | None = None,
        logit_bias: Mapping[int, float] | None = None,
        top_logprobs: int = 0,
    ) -> list[GeneratedToken]:
        """Samples up to ``max_tokens`` tokens after ``context_ids``; stops before ``<eos>``.

        Fewer than ``max_tokens`` tokens means the model ended its turn (``<eos>``).
        """
        if max_tokens < 0 or top_logprobs < 0:
            raise ValueError("max_tokens and top_logprobs must be non-negative")
        bias = self._bias(logit_bias)
        rng = np.random.default_rng(seed)
        context = list(context_ids)
        out: list[GeneratedToken] = []
        while len(out) < max_tokens:
            scores = self.logits(context) + bias
            logprobs = _log_softmax(scores)
            if temperature <= 0:
                chosen = int(np.argmax(scores))
            else:
                scaled = np.exp(_log_softmax(scores / temperature))
                cdf = np.cumsum(scaled)
                chosen = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
                chosen = min(chosen, self.vocab_size - 1)
            if chosen == self.eos_id:
                break
            out.append(
                GeneratedToken(
                    token=self._vocab[chosen],
                    logprob=float(logprobs[chosen]),
                    top_logprobs=self._top(logprobs, top_logprobs),
                    token_id=chosen,
                )
            )
            context.append(chosen)
        return out

    def generate(
        self,
        prompt_text: str,
        max_tokens: int,
        temperature: float = 1.0,
        seed: int | None = None,
        logit_bias: Mapping[int, float] | None = None,
        top_logprobs: int = 0,
    ) -> list[GeneratedToken]:
        """Continues ``prompt_text``; see ``generate_ids``."""
        return self.generate_ids(
            self.tokenize(prompt_text),
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            logit_bias=logit_bias,
            top_logprobs=top_logprobs,
        )

    def _top(self, logprobs: npt.NDArray[np.float64], k: int) -> list[TokenLogprob]:
        if k <= 0:
            return []
        k = min(k, self.vocab_size)
        best = np.argpartition(-logprobs, k - 1)[:k]
        best = best[np.argsort(-logprobs[best], kind="stable")]
        return [TokenLogprob(self._vocab[i], float(logprobs[i]), int(i)) for i in best]

    # -- persistence --------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Writes the weights and vocabulary as a plain ``.npz`` (no pickled objects)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            vocab=np.asarray(self._vocab, dtype=np.str_),
            embeddings=self.embeddings,
            w_hidden=self.w_hidden,
            b_hidden=self.b_hidden,
            w_out=self.w_out,
            b_out=self.b_out,
        )


def _log_softmax(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = scores - np.max(scores)
    result: npt.NDArray[np.float64] = shifted - np.log(np.sum(np.exp(shifted)))
    return result


def load_toy_lm(path: Path | None = None) -> ToyLM:
    """Loads a ``ToyLM`` from ``path`` (default: the shipped ``sim/data/toy_lm.npz``)."""
    with np.load(path or DEFAULT_WEIGHTS, allow_pickle=False) as data:

        def f32(name: str) -> FloatArray:
            return np.ascontiguousarray(data[name], dtype=np.float32)

        return ToyLM(
            vocab=[str(token) for token in data["vocab"]],
            embeddings=f32("embeddings"),
            w_hidden=f32("w_hidden"),
            b_hidden=f32("b_hidden"),
            w_out=f32("w_out"),
            b_out=f32("b_out"),
        )
