"""The synonym table of the lexical watermark, loaded from ``synonyms.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_PATH = Path(__file__).with_name("synonyms.json")
VOWELS = frozenset("aeiou")


@dataclass(frozen=True, slots=True)
class Group:
    """Interchangeable words; ``name`` (the first) identifies the group in the key."""

    members: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.members[0]

    def after_article(self, article: str) -> tuple[str, ...]:
        """The members that read right after ``a`` (consonant first) or ``an`` (vowel)."""
        vowel = article == "an"
        return tuple(m for m in self.members if (m[0] in VOWELS) == vowel)


class SynonymTable:
    """Groups of synonyms; a word belongs to at most one group."""

    def __init__(self, version: int, groups: tuple[Group, ...]) -> None:
        index: dict[str, Group] = {}
        for group in groups:
            if len(group.members) < 2:
                raise ValueError(f"synonym group {group.members!r} has fewer than two words")
            for word in group.members:
                if not (word.isascii() and word.isalpha() and word.islower()):
                    raise ValueError(f"synonym {word!r} is not a lower-case ASCII word")
                if word in index:
                    raise ValueError(f"synonym {word!r} is in more than one group")
                index[word] = group
        self.version = version
        self.groups = groups
        self._index = index
        self._prefixes = frozenset(w[:i] for w in index for i in range(1, len(w) + 1))

    def group_of(self, word: str) -> Group | None:
        """The group of a lower-case word, or None."""
        return self._index.get(word)

    def is_prefix(self, text: str) -> bool:
        """Whether lower-case ``text`` begins (or is) a word of some group."""
        return text in self._prefixes


@cache
def default_table() -> SynonymTable:
    """The shipped table (read once per process)."""
    doc = json.loads(_PATH.read_text(encoding="utf-8"))
    return SynonymTable(
        version=int(doc["version"]), groups=tuple(Group(tuple(g)) for g in doc["groups"])
    )
