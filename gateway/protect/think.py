"""Withholding ``<think>…</think>`` reasoning from text that may arrive in pieces.

:class:`ThinkFilter` is a small state machine over one choice's text: outside or inside
a block, plus the shortest tail that could still be the start of the next tag (``<thi``
when outside, ``</th`` when inside), which it holds back until the next piece decides it.
Nothing else is held, so visible text flows as soon as it arrives and reasoning never
leaves. With ``limit=None`` blocks are removed with their tags; with a limit each block
keeps its tags and its first ``limit`` characters, then :data:`ELLIPSIS`.

Every :meth:`ThinkFilter.feed` also says which characters of its input were passed on
unchanged, so token logprobs can follow their text (:func:`align`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OPEN = "<think>"
CLOSE = "</think>"
ELLIPSIS = "…"


@dataclass(slots=True)
class Filtered:
    """The result of one feed over ``source`` (held-back text from before, then the new
    text): ``text`` is what to send; ``kept`` lists the runs of ``source`` sent unchanged as
    ``(start, end, offset in text)``; ``source[held_from:]`` is held for the next feed;
    ``withheld`` says whether anything was removed or inserted."""

    source: str
    text: str
    kept: list[tuple[int, int, int]]
    held_from: int
    withheld: bool


class ThinkFilter:
    __slots__ = ("_cut", "_used", "inside", "limit", "pending")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.inside = False
        self.pending = ""
        self._used = 0
        self._cut = False

    def feed(self, text: str, final: bool = False) -> Filtered:
        """Filter the next piece; ``final`` flushes the held tail (the text has ended)."""
        source = self.pending + text
        self.pending = ""
        out: list[str] = []
        kept: list[tuple[int, int, int]] = []
        size = 0
        withheld = False

        def keep(start: int, end: int) -> None:
            nonlocal size
            if start >= end:
                return
            if kept and kept[-1][1] == start and kept[-1][2] + start - kept[-1][0] == size:
                kept[-1] = (kept[-1][0], end, kept[-1][2])
            else:
                kept.append((start, end, size))
            out.append(source[start:end])
            size += end - start

        i, n = 0, len(source)
        held_from = n
        while i < n:
            tag = CLOSE if self.inside else OPEN
            j = source.find(tag, i)
            end = n if j < 0 else j
            if j < 0 and not final:
                end -= _partial_tag(source, tag, i)
            if not self.inside:
                keep(i, end)
            elif end > i:
                room = 0 if self.limit is None else max(0, self.limit - self._used)
                taken = min(room, end - i)
                keep(i, i + taken)
                self._used += taken
                if taken < end - i:
                    withheld = True
                    if self.limit is not None and not self._cut:
                        self._cut = True
                        out.append(ELLIPSIS)
                        size += len(ELLIPSIS)
            if j < 0:
                held_from = end
                self.pending = source[end:]
                break
            if self.limit is None:
                withheld = True
            else:
                keep(j, j + len(tag))
            self.inside = not self.inside
            self._used, self._cut = 0, False
            i = j + len(tag)
        return Filtered(source, "".join(out), kept, held_from, withheld)


def _partial_tag(text: str, tag: str, start: int) -> int:
    """Length of the longest tail of ``text[start:]`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text) - start), 0, -1):
        if text.startswith(tag[:k], len(text) - k):
            return k
    return 0


def align(source: str, tokens: Sequence[str | None]) -> list[tuple[int, int]]:
    """Where each token's text lies in ``source``, in order. Tags that no token spells
    (servers that add them around the model's tokens), with the whitespace after them,
    are skipped. Shorter than ``tokens`` when the rest cannot be placed (or a token is
    None: not text)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for token in tokens:
        if token is None:
            return spans
        after_tag = False
        while not source.startswith(token, pos):
            if source.startswith(OPEN, pos):
                pos += len(OPEN)
            elif source.startswith(CLOSE, pos):
                pos += len(CLOSE)
            elif after_tag and pos < len(source) and source[pos].isspace():
                pos += 1
                continue
            else:
                return spans
            after_tag = True
        spans.append((pos, pos + len(token)))
        pos += len(token)
    return spans


def classify(filtered: Filtered, spans: Sequence[tuple[int, int]]) -> list[str | int]:
    """For each span: its offset in ``filtered.text`` when its text was passed on
    unchanged, ``"held"`` when it reaches into the held tail, else ``"dropped"``."""
    result: list[str | int] = []
    runs = filtered.kept
    r = 0
    for start, end in spans:
        held = filtered.held_from < len(filtered.source)
        if end > filtered.held_from or (held and start >= filtered.held_from):
            result.append("held")
            continue
        while r < len(runs) and runs[r][1] < end:
            r += 1
        if r < len(runs) and runs[r][0] <= start and end <= runs[r][1]:
            result.append(runs[r][2] + start - runs[r][0])
        else:
            result.append("dropped")
    return result
