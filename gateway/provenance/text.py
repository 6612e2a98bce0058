"""The keyed lexical watermark on generated text, and the test that finds it again.

In the spirit of CATER (He et al. 2022, conditional lexical watermarks): every word of a
synonym group is replaced by the member that a keyed hash of (client, previous word, group)
picks. To anyone without the key the choices look like ordinary word choice; a model
trained on one client's marked answers learns the same context-conditioned preferences, and
:func:`analyse` tests a suspect's outputs for them.

Reading rules, the same when marking and when testing (one scanner does both):

- A word is a maximal run of ``\\w`` characters. Only pure ASCII-letter words of a group
  are eligible, in lower case, UPPER case, or Title case at the start of a sentence or
  line (a Title-case word elsewhere may be a name: "Great Britain").
- The context is the previous word on the same line, as sent (lower-cased); "" at the
  start of a line. So the test does not depend on how a file splits outputs into lines.
- Not eligible: words inside backtick code, words touching ``/ \\ < @ # $ & = . ~ -``
  before or ``/ \\ > ( @ = - [ {`` after (paths, URLs, markup, code, compounds).
- After "a" only consonant-initial members are candidates, after "an" only vowel-initial
  ones ("a large", never "a enormous"); a word that does not fit its article is left alone.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.provenance.stats import log_poisson_binomial_sf
from gateway.provenance.synonyms import Group, SynonymTable, default_table

_TOKENS = re.compile(r"\w+|\W")
_IS_WORD = re.compile(r"\w").match
_NO_MARK_BEFORE = frozenset("/\\<@#$&=.~-")
_NO_MARK_AFTER = frozenset("/\\>(@=-[{")
_SENTENCE_OPENERS = frozenset(["", ".", "!", "?", ":", '"', "(", "*", "#", ">", "-", "\u201c"])
_ARTICLES = ("a", "an")
_MAX_WORD = 64


def client_text_key(provenance_key: bytes, client_id: str) -> bytes:
    """The watermark key of one client."""
    return hmac.new(provenance_key, b"text\x00" + client_id.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One eligible word: its context, its group, the candidates there, the word used."""

    context: str
    group: Group
    candidates: tuple[str, ...]
    word: str


def keyed_choice(key: bytes, context: str, group: Group, candidates: tuple[str, ...]) -> str:
    """The member the client's key picks for ``group`` after the word ``context``."""
    digest = hmac.new(key, f"{group.name}\x00{context}".encode(), hashlib.sha256).digest()
    return candidates[int.from_bytes(digest[:8], "big") % len(candidates)]


def _recase(template: str, word: str) -> str:
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[0].isupper():
        return word.capitalize()
    return word


class _Scanner:
    """Reads text in pieces of any size and sends eligible words to :meth:`_decide`.

    A word that could still grow into a group word (its letters so far begin one) is held
    back until the character after it arrives, so ``feed(a) + feed(b) + finish()`` equals
    ``feed(a + b) + finish()`` for every split.
    """

    def __init__(self, table: SynonymTable) -> None:
        self._table = table
        self._word = ""
        self._held = False
        self._before = ""
        self._opens_sentence = True
        self._context = ""
        self._last = ""
        self._last_visible = ""
        self._in_code = False

    def feed(self, text: str) -> str:
        """The text to send on for ``text``; a trailing partial word may be held back."""
        out: list[str] = []
        for token in _TOKENS.findall(text):
            if _IS_WORD(token):
                self._read_word(token, out)
                continue
            if self._word:
                out.append(self._end_word(token))
            self._read_other(token)
            out.append(token)
        return "".join(out)

    def finish(self) -> str:
        """Whatever is still held back, at the end of the text."""
        return self._end_word("") if self._word else ""

    def _decide(self, occurrence: Occurrence) -> str:
        raise NotImplementedError

    def _read_word(self, piece: str, out: list[str]) -> None:
        if not self._word:
            self._before = self._last
            self._opens_sentence = self._last_visible in _SENTENCE_OPENERS
            self._held = True
        if self._held:
            self._word += piece
            if not self._table.is_prefix(self._word.lower()):
                out.append(self._word)
                self._held = False
                self._word = self._word[:_MAX_WORD]
        else:
            out.append(piece)
            if len(self._word) < _MAX_WORD:
                self._word = (self._word + piece)[:_MAX_WORD]

    def _end_word(self, after: str) -> str:
        word, held = self._word, self._held
        sent = self._mark(word, after) if held else word
        self._context = sent.lower()
        self._last = self._last_visible = sent[-1]
        self._word, self._held = "", False
        return sent if held else ""

    def _read_other(self, char: str) -> None:
        if char == "`" and self._last != "`":
            self._in_code = not self._in_code
        if char == "\n":
            self._context = self._last_visible = ""
        elif not char.isspace():
            self._last_visible = char
        self._last = char

    def _mark(self, word: str, after: str) -> str:
        occurrence = self._occurrence(word, after)
        if occurrence is None:
            return word
        return _recase(word, self._decide(occurrence))

    def _occurrence(self, word: str, after: str) -> Occurrence | None:
        if self._in_code or self._before in _NO_MARK_BEFORE or after in _NO_MARK_AFTER:
            return None
        lower = word.lower()
        group = self._table.group_of(lower)
        if group is None:
            return None
        title = word[0].isupper() and word[1:].islower() and self._opens_sentence
        if not (word.islower() or word.isupper() or title):
            return None
        candidates = group.members
        if self._context in _ARTICLES:
            candidates = group.after_article(self._context)
            if lower not in candidates:
                return None
        if len(candidates) < 2:
            return None
        return Occurrence(self._context, group, candidates, lower)


class TextMarker(_Scanner):
    """Marks one text (one choice of one response) for one client, piece by piece."""

    def __init__(self, key: bytes, table: SynonymTable | None = None) -> None:
        super().__init__(table or default_table())
        self._key = key

    def _decide(self, occurrence: Occurrence) -> str:
        return keyed_choice(self._key, occurrence.context, occurrence.group, occurrence.candidates)


class _Reader(_Scanner):
    def __init__(self, table: SynonymTable) -> None:
        super().__init__(table)
        self.occurrences: list[Occurrence] = []

    def _decide(self, occurrence: Occurrence) -> str:
        self.occurrences.append(occurrence)
        return occurrence.word


def mark_text(text: str, key: bytes, table: SynonymTable | None = None) -> str:
    """``text`` with the client's watermark (``key`` from :func:`client_text_key`)."""
    marker = TextMarker(key, table)
    return marker.feed(text) + marker.finish()


def occurrences(text: str, table: SynonymTable | None = None) -> list[Occurrence]:
    """The eligible words of ``text``, in order."""
    reader = _Reader(table or default_table())
    reader.feed(text)
    reader.finish()
    return reader.occurrences


@dataclass(frozen=True, slots=True)
class TextEvidence:
    """How strongly a set of texts carries one client's watermark."""

    occurrences: int
    contexts: int
    matches: int
    expected: float
    z: float
    log_p: float

    @property
    def p_value(self) -> float:
        return math.exp(self.log_p)


def analyse(
    documents: Iterable[str], key: bytes, table: SynonymTable | None = None
) -> TextEvidence:
    """Tests ``documents`` for the watermark of ``key``; one-sided, exact.

    Null hypothesis: the texts were written without knowledge of the key (an unmarked or
    independently trained model). Under it the keyed choice of each distinct
    (context, group) is uniform over that context's candidates and independent of the text
    (HMAC as a pseudo-random function), so the trials are the distinct contexts, not the
    occurrences: a text that repeats "the big" fifty times gets one trial, not fifty
    correlated ones (counting occurrences would make repetitive text look marked). A trial
    succeeds when the keyed member is among the members the texts used in that context;
    its null probability is ``len(used) / len(candidates)``. The p-value is the exact
    Poisson-binomial tail of the number of successes; ``z`` is its normal score.
    """
    table = table or default_table()
    used: dict[tuple[str, str], tuple[Occurrence, set[str]]] = {}
    count = 0
    for text in documents:
        for occurrence in occurrences(text, table):
            count += 1
            slot = (occurrence.context, occurrence.group.name)
            if slot not in used:
                used[slot] = (occurrence, set())
            used[slot][1].add(occurrence.word)
    matches = 0
    probabilities: list[float] = []
    for first, words in used.values():
        chosen = keyed_choice(key, first.context, first.group, first.candidates)
        matches += chosen in words
        probabilities.append(len(words) / len(first.candidates))
    expected = sum(probabilities)
    variance = sum(p * (1 - p) for p in probabilities)
    z = (matches - expected) / math.sqrt(variance) if variance > 0 else 0.0
    return TextEvidence(
        occurrences=count,
        contexts=len(used),
        matches=matches,
        expected=expected,
        z=z,
        log_p=log_poisson_binomial_sf(matches, probabilities),
    )
