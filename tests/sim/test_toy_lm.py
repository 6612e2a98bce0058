from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sim.toy_lm import DEFAULT_WEIGHTS, EOS, UNK, ToyLM, load_toy_lm, split_words
from sim.train_toy_lm import TrainConfig, build_vocab, make_examples, train


@pytest.fixture(scope="module")
def lm() -> ToyLM:
    return load_toy_lm()


def _logsumexp(x: np.ndarray) -> float:
    top = float(np.max(x))
    return top + float(np.log(np.sum(np.exp(x - top))))


def test_shipped_weights_are_small_plain_arrays_and_load_fast() -> None:
    assert DEFAULT_WEIGHTS.stat().st_size < 3_000_000
    with zipfile.ZipFile(DEFAULT_WEIGHTS) as archive:
        assert {n.removesuffix(".npy") for n in archive.namelist()} == {
            "vocab",
            "embeddings",
            "w_hidden",
            "b_hidden",
            "w_out",
            "b_out",
        }
    started = time.perf_counter()
    model = load_toy_lm()
    assert time.perf_counter() - started < 2.0  # ~0.02 s unloaded; generous for busy CI
    assert 1000 <= model.vocab_size <= 2000
    assert 48 <= model.hidden_size <= 64
    assert model.context_size in (2, 3)
    assert model.token_str(model.unk_id) == UNK
    assert model.token_str(model.eos_id) == EOS


def test_tokenizer_round_trip(lm: ToyLM) -> None:
    assert split_words("Hello, I'm FINE!") == ["hello", ",", "i'm", "fine", "!"]
    ids = lm.tokenize("Hello, how are you?")
    assert lm.unk_id not in ids
    assert lm.detokenize(ids) == "hello, how are you?"
    assert lm.tokenize("qwxzzyv") == [lm.unk_id]
    hello = lm.token_id("hello")
    assert hello is not None
    assert lm.token_id(" hello ") == hello
    assert lm.token_str(hello) == "hello"
    assert lm.token_id("not-a-token-at-all") is None


@pytest.mark.parametrize("context", [[], [5], [10, 20, 30], [1, 1, 1, 7, 8, 9]])
def test_logprobs_are_a_distribution(lm: ToyLM, context: list[int]) -> None:
    logprobs = lm.next_token_logprobs(context)
    assert logprobs.shape == (lm.vocab_size,)
    assert abs(_logsumexp(logprobs)) < 1e-9
    assert np.all(logprobs <= 0)
    biased = lm.next_token_logprobs(context, logit_bias={3: 5.0, 4: -100.0})
    assert abs(_logsumexp(biased)) < 1e-9


def test_context_ids_outside_vocab_are_refused(lm: ToyLM) -> None:
    with pytest.raises(ValueError):
        lm.next_token_logprobs([lm.vocab_size])
    with pytest.raises(ValueError):
        lm.generate("hi", 3, logit_bias={-1: 1.0})


def test_greedy_generation_is_deterministic_and_seeded_sampling_repeats(lm: ToyLM) -> None:
    first = lm.generate("i really like to", 20, temperature=0.0)
    again = lm.generate("i really like to", 20, temperature=0.0, seed=99)
    assert first == again
    assert first
    context = lm.tokenize("i really like to")
    for step in first[:5]:
        assert step.token_id == int(np.argmax(lm.next_token_logprobs(context)))
        assert step.logprob == pytest.approx(lm.next_token_logprobs(context)[step.token_id])
        context.append(step.token_id)
    a = lm.generate("tell me about your day", 30, temperature=1.0, seed=7)
    b = lm.generate("tell me about your day", 30, temperature=1.0, seed=7)
    c = lm.generate("tell me about your day", 30, temperature=1.0, seed=8)
    assert a == b
    assert [t.token_id for t in a] != [t.token_id for t in c]


def test_top_logprobs_are_sorted_and_include_the_argmax(lm: ToyLM) -> None:
    (step,) = lm.generate("i like", 1, temperature=0.0, top_logprobs=5)
    assert len(step.top_logprobs) == 5
    values = [t.logprob for t in step.top_logprobs]
    assert values == sorted(values, reverse=True)
    assert step.top_logprobs[0].token_id == step.token_id
    assert step.top_logprobs[0].token == step.token


def test_logit_bias_plus_100_makes_a_token_the_argmax(lm: ToyLM) -> None:
    target = lm.token_id("banana") or lm.token_id("pizza")
    assert target is not None
    bias = {target: 100.0}
    assert int(np.argmax(lm.next_token_logprobs(lm.tokenize("hello"), bias))) == target
    steps = lm.generate("hello there", 3, temperature=0.0, logit_bias=bias, top_logprobs=2)
    assert [s.token_id for s in steps] == [target] * 3
    assert steps[0].logprob > -1e-3  # the biased distribution is reported
    # a -100 bias removes the unbiased argmax
    (plain,) = lm.generate("hello there", 1, temperature=0.0)
    (banned,) = lm.generate("hello there", 1, temperature=0.0, logit_bias={plain.token_id: -100})
    assert banned.token_id != plain.token_id


def test_logit_matrix_has_rank_equal_to_hidden_size(lm: ToyLM) -> None:
    """The property the Carlini et al. hidden-size recovery attack relies on."""
    hidden = lm.hidden_size
    rng = np.random.default_rng(0)
    contexts = [rng.integers(0, lm.vocab_size, lm.context_size).tolist() for _ in range(3 * hidden)]
    logits = np.stack([lm.logits(c) for c in contexts])
    singular = np.linalg.svd(logits - logits.mean(axis=0), compute_uv=False)
    rank = int(np.sum(singular > 1e-4 * singular[0]))
    assert rank == hidden
    assert singular[hidden - 1] / singular[0] > 1e-3  # a clear gap, not a numerical accident
    # logprobs add one per-row shift, so the centred rank is at most H + 1
    logprobs = np.stack([lm.next_token_logprobs(c) for c in contexts])
    singular = np.linalg.svd(logprobs - logprobs.mean(axis=0), compute_uv=False)
    assert hidden <= int(np.sum(singular > 1e-4 * singular[0])) <= hidden + 1


def test_embedding_is_unit_length_and_deterministic(lm: ToyLM) -> None:
    a = lm.embed("good morning")
    assert np.linalg.norm(a) == pytest.approx(1.0)
    assert np.array_equal(a, lm.embed("Good morning"))
    assert not np.allclose(a, lm.embed("see you tomorrow"))
    assert np.linalg.norm(lm.embed("")) == pytest.approx(1.0)


def _synthetic_conversations(count: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    words = ["hi", "hello", "how", "are", "you", "fine", "thanks", "good", "bye", "ok"]
    convs = []
    for _ in range(count):
        start = int(rng.integers(0, 5))
        message = " ".join(words[(start + k) % len(words)] for k in range(4)) + "."
        convs.append([message, "ok " + message])
    return convs


def test_training_loop_learns_deterministically_and_round_trips(tmp_path: Path) -> None:
    convs = _synthetic_conversations(300, seed=1)
    vocab = build_vocab(convs, 20)
    assert vocab[:2] == [UNK, EOS]
    contexts, targets = make_examples(convs[:1], vocab, 3)
    assert contexts.shape == (len(targets), 3)
    assert contexts[0].tolist() == [vocab.index(EOS)] * 3  # a conversation starts padded
    config = TrainConfig(vocab_size=20, embed_dim=8, hidden_size=16, batch_size=64, epochs=3)
    first = train(convs, config)
    second = train(convs, config)
    assert np.array_equal(first.model.w_out, second.model.w_out)
    assert first.holdout_loss < np.log(20) / 2  # far better than uniform
    path = tmp_path / "lm.npz"
    first.model.save(path)
    loaded = load_toy_lm(path)
    assert loaded.vocab == first.model.vocab
    np.testing.assert_array_equal(loaded.logits([3, 4]), first.model.logits([3, 4]))
    (greedy,) = loaded.generate("hi hello how", 1, temperature=0.0)
    assert greedy.token == "are"  # the only continuation in the corpus
