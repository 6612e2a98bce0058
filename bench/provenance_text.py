"""The text watermark's false-positive rate on unmarked text and its power on marked text.

    python -m bench.provenance_text            # full run (about a minute on 2 cores)
    python -m bench.provenance_text --quick    # a smaller run

``antidistill provenance verify-text`` is run (as its library call, ``analyse``) on:

- unmarked text, each document against many random client keys: the toy LM's own chat
  replies (``sim.toy_lm``, prompts from the ``chitchat-dataset`` package), and human
  messages from ``chitchat-dataset``; documents of about 100, 300 and 3,000 words (a tenth
  as many of the long ones, each against four times as many keys). The
  false-positive rate is the share of (document, key) pairs with p < 0.01.
- the same documents watermarked with one random client key each and tested with that key
  (power), and with another client's key (a false accusation of the wrong client).
- stolen models: for each of ``--students`` clients (keys), a word-bigram student trained
  on that client's watermarked toy-LM replies (``--student-words`` words), sampled in
  300-word documents and tested with the client's key; as the control, a student trained on
  the unmarked replies, tested with the same keys.

Writes ``bench/results/provenance_text.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import platform
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gateway.provenance.synonyms import default_table
from gateway.provenance.text import analyse, client_text_key, mark_text
from sim.toy_lm import EOS, ToyLM, load_toy_lm, split_words

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "provenance_text.json"
ALPHA = 0.01


@dataclass
class Row:
    text: str
    words: int
    documents: int
    tests: int
    flagged: int
    rate: float
    rate_ci95: tuple[float, float]
    median_z: float
    median_p: float


def wilson(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson interval of a rate k / n."""
    if n == 0:
        return (0.0, 1.0)
    z = 1.96
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 5), round(min(1.0, centre + half), 5))


def random_key(rng: np.random.Generator) -> bytes:
    """A client's watermark key under a random gateway secret and client id."""
    return client_text_key(rng.bytes(32), rng.bytes(32).hex())


def chitchat_messages() -> list[str]:
    import chitchat_dataset

    path = Path(chitchat_dataset.__file__).with_name("dataset.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        " ".join(u["text"] for u in message)
        for conversation in data.values()
        for message in conversation["messages"]
    ]


def documents(lines: Iterator[str], words: int, count: int) -> list[str]:
    """``count`` documents of at least ``words`` words, lines taken in order."""
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        current.append(line)
        size += len(line.split())
        if size >= words:
            docs.append("\n".join(current))
            current, size = [], 0
            if len(docs) == count:
                break
    return docs


def toy_replies(lm: ToyLM, prompts: Sequence[str], rng: np.random.Generator) -> Iterator[str]:
    """Endless toy-LM chat replies to random prompts (temperature 1)."""
    while True:
        prompt = prompts[int(rng.integers(len(prompts)))]
        context = [*lm.tokenize(prompt), lm.eos_id]
        tokens = lm.generate_ids(context, max_tokens=60, seed=int(rng.integers(2**31)))
        if tokens:
            yield lm.detokenize([t.token_id for t in tokens])


def human_lines(messages: Sequence[str], rng: np.random.Generator) -> Iterator[str]:
    order = rng.permutation(len(messages))
    for i in order:
        text = messages[int(i)].strip()
        if text:
            yield text


def row(text: str, words: int, docs: int, results: list[tuple[float, float]]) -> Row:
    flagged = sum(p < ALPHA for _, p in results)
    zs = [z for z, _ in results]
    ps = [p for _, p in results]
    return Row(
        text=text,
        words=words,
        documents=docs,
        tests=len(results),
        flagged=flagged,
        rate=round(flagged / len(results), 5) if results else 0.0,
        rate_ci95=wilson(flagged, len(results)),
        median_z=round(float(np.median(zs)), 3),
        median_p=float(f"{float(np.median(ps)):.3g}"),
    )


def test(doc: str, key: bytes) -> tuple[float, float]:
    result = analyse([doc], key)
    return result.z, result.p_value


class BigramStudent:
    """A word-bigram model (per line) fitted to text: a cheap stolen model of the teacher."""

    def __init__(self, lines: Sequence[str]) -> None:
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for line in lines:
            words = ["", *split_words(line), EOS]
            for a, b in itertools.pairwise(words):
                counts[a][b] += 1
        self._next = {
            a: (list(c), np.array(list(c.values()), dtype=np.float64) / sum(c.values()))
            for a, c in counts.items()
        }

    def line(self, rng: np.random.Generator, max_words: int = 60) -> str:
        words: list[str] = []
        previous = ""
        while len(words) < max_words:
            choices, probs = self._next[previous]
            word = choices[int(rng.choice(len(choices), p=probs))]
            if word == EOS:
                break
            words.append(word)
            previous = word
        text = ""
        for word in words:
            glue = "" if not text or word in ".,!?;:)%'" else " "
            text += glue + word
        return text

    def lines(self, rng: np.random.Generator) -> Iterator[str]:
        while True:
            line = self.line(rng)
            if line:
                yield line


def run(args: argparse.Namespace) -> dict[str, object]:
    rng = np.random.default_rng(args.seed)
    lm = load_toy_lm()
    messages = chitchat_messages()
    prompts = messages[:5000]
    sources: dict[str, Callable[[], Iterator[str]]] = {
        "toy LM replies": lambda: toy_replies(lm, prompts, rng),
        "chitchat human messages": lambda: human_lines(messages, rng),
    }
    fpr: list[Row] = []
    power: list[Row] = []
    wrong_client: list[Row] = []
    for name, source in sources.items():
        for words in args.words:
            long = words >= 1000  # fewer long documents, more keys for each
            count = max(10, args.docs // 10) if long else args.docs
            n_keys = args.keys * 4 if long else args.keys
            docs = documents(source(), words, count)
            unmarked = [test(d, random_key(rng)) for d in docs for _ in range(n_keys)]
            fpr.append(row(name, words, len(docs), unmarked))
            keys = [random_key(rng) for _ in docs]
            marked = [mark_text(d, k) for d, k in zip(docs, keys, strict=True)]
            power.append(
                row(name, words, len(docs), [test(m, k) for m, k in zip(marked, keys, strict=True)])
            )
            wrong_client.append(
                row(name, words, len(docs), [test(m, random_key(rng)) for m in marked])
            )
            print(f"  {name}, {words} words: done", flush=True)

    teacher_lines = documents(toy_replies(lm, prompts, rng), args.student_words, 1)[0].splitlines()
    control = BigramStudent(teacher_lines)
    marked_results: list[tuple[float, float]] = []
    control_results: list[tuple[float, float]] = []
    per_student = max(1, args.docs // args.students)
    for _ in range(args.students):
        key = random_key(rng)
        student = BigramStudent([mark_text(t, key) for t in teacher_lines])
        marked_results += [test(d, key) for d in documents(student.lines(rng), 300, per_student)]
        control_results += [test(d, key) for d in documents(control.lines(rng), 300, per_student)]
    total = per_student * args.students
    stolen = [
        row("bigram student of one client's marked replies", 300, total, marked_results),
        row("bigram student of unmarked replies (control)", 300, total, control_results),
    ]
    return {"fpr": fpr, "power": power, "wrong_client": wrong_client, "stolen": stolen}


def table(title: str, rows: Sequence[Row], what: str) -> str:
    lines = [
        f"{title}",
        f"| text | words/doc | docs | tests | {what} (p < {ALPHA}) | 95 % CI "
        "| median z | median p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r.rate_ci95
        lines.append(
            f"| {r.text} | {r.words} | {r.documents} | {r.tests:,} | {100 * r.rate:.2f} % "
            f"| {100 * lo:.2f} to {100 * hi:.2f} % | {r.median_z:.2f} | {r.median_p:.3g} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer documents and keys")
    parser.add_argument("--docs", type=int, default=200, help="documents per text and size")
    parser.add_argument("--keys", type=int, default=25, help="random keys per unmarked doc")
    parser.add_argument("--words", type=int, nargs="+", default=[100, 300, 3000])
    parser.add_argument("--student-words", type=int, default=50_000)
    parser.add_argument("--students", type=int, default=10, help="clients (keys) of students")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.keys, args.student_words, args.students = 40, 10, 10_000, 4
    started = time.perf_counter()
    results = run(args)
    elapsed = time.perf_counter() - started
    sections = [
        table("False positives on unmarked text (random client keys)", results["fpr"], "flagged"),
        table("Power on watermarked text (the client's key)", results["power"], "detected"),
        table(
            "Watermarked text tested with another client's key", results["wrong_client"], "flagged"
        ),
        table(
            "Stolen model: samples of a student trained on the client's answers",
            results["stolen"],
            "detected",
        ),
    ]
    print()
    print("\n\n".join(sections))
    doc = {
        "command": "python -m bench.provenance_text" + (" --quick" if args.quick else ""),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "seconds": round(elapsed, 1),
        "alpha": ALPHA,
        "synonym_table": {
            "version": default_table().version,
            "groups": len(default_table().groups),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        **{name: [asdict(r) for r in rows] for name, rows in results.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"\nwrote {shown} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
