"""Per-request features: pure functions from a request body to :class:`RequestFeatures`.

Runs in the gateway's record step for every request, so it is kept to tens of
microseconds (about 60-90 µs for a typical prompt on a slow core; ``bench/detection``
measures it): text is capped, words are hashed with CRC32 once, and both SimHashes (raw
and templated) are computed in one numpy pass.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.schema import RequestFeatures

_WORD = re.compile(r"[a-z0-9']+")
_MAX_WORDS = 256  # the head of a long prompt is enough for a sketch
_REASONING = re.compile(
    r"step[- ]by[- ]step|show (?:your|the) (?:work|reasoning|steps)|explain (?:your|the) "
    r"reasoning|think (?:carefully|through|aloud|out loud)|chain[- ]of[- ]thought|reason(?:ing)? "
    r"(?:it )?(?:out|through)|let'?s think|walk me through|justify each step|<think>",
)
_MASK = "\u2400"  # stands in for a slot value in a template


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return ""


_PRIME = np.uint64(0x100000001B3)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)
_MASK_HASH = zlib.crc32(_MASK.encode())


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: spreads every input bit over all 64 output bits."""
    x = x ^ (x >> _S30)
    x *= _C1
    x ^= x >> _S27
    x *= _C2
    x ^= x >> _S31
    return x


def _simhash_rows(rows: list[int], width: int, shingle: int) -> list[int]:
    """SimHash of each row of ``rows`` (a flat list of ``len // width`` rows of word hashes).

    Bit votes are counted with byte-lane arithmetic: each shingle's 64 bits are unpacked to
    bytes, eight bytes are summed at once as one uint64 (no lane overflows, since a prompt has
    at most ``_MAX_WORDS`` shingles), so the whole sketch is a dozen numpy calls.
    """
    k = len(rows) // width
    arr = np.array(rows, dtype=np.uint64).reshape(k, width)
    n = max(1, width - shingle + 1)
    combined = arr[:, :n]
    for j in range(1, min(shingle, width)):
        combined = combined * _PRIME + arr[:, j : j + n]  # wraps mod 2**64 (arrays never warn)
    bits = np.unpackbits(_mix(combined).astype(">u8").view(np.uint8), axis=1)
    lanes = bits.view(np.uint64).reshape(k, n, 8).sum(axis=1, dtype=np.uint64)
    votes = lanes.view(np.uint8).reshape(k, 64) > (n >> 1)  # more than half of n shingles
    return [int(v) for v in np.packbits(votes, axis=1).view(">u8")[:, 0]]


def simhash(tokens: Sequence[str], shingle: int = 3) -> int:
    """64-bit SimHash of the token shingles (0 for no tokens; at most 256 tokens count).

    Each word is hashed once (CRC32); shingle hashes are combined and mixed in numpy.
    """
    tokens = tokens[:_MAX_WORDS]
    if not tokens:
        return 0
    return _simhash_rows([zlib.crc32(t.encode()) for t in tokens], len(tokens), shingle)[0]


def _is_slot(word: str) -> bool:
    """A slot-like value: a number or a long (rare-looking) word."""
    return len(word) > 12 or (word[0].isdigit() and word.replace("'", "").isdigit())


def _template_tokens(words: Sequence[str]) -> list[str]:
    """Words with slot-like values (numbers, long or rare-looking words) masked."""
    return [_MASK if _is_slot(w) else w for w in words]


def sketches(words: Sequence[str], shingle: int = 3) -> tuple[int, int]:
    """(sketch, template): ``simhash(words)`` and ``simhash(_template_tokens(words))`` at once."""
    words = words[:_MAX_WORDS]
    if not words:
        return 0, 0
    hashes = [zlib.crc32(w.encode()) for w in words]
    masked = [_MASK_HASH if _is_slot(w) else h for w, h in zip(words, hashes, strict=True)]
    sketch, template = _simhash_rows(hashes + masked, len(words), shingle)
    return sketch, template


def prompt_text(kind: str, body: dict[str, Any] | None) -> tuple[str, str, int, int, int]:
    """(prompt text, latest input message, messages, user turns, system chars) of a body.

    The latest input message (the last user or tool message) is the request's new content
    in a conversation, where earlier turns repeat in every request; for a completions body
    it is the prompt itself.
    """
    if body is None:
        return "", "", 0, 0, 0
    messages = body.get("messages")
    if isinstance(messages, list):
        texts, users, system, latest = [], 0, 0, ""
        for m in messages:
            if not isinstance(m, dict):
                continue
            text = _text_of(m.get("content"))
            if m.get("role") == "system":
                system += len(text)
            else:
                texts.append(text)
                users += m.get("role") == "user"
                if m.get("role") != "assistant":
                    latest = text
        return "\n".join(texts), latest, len(messages), users, system
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, list):
        prompt = " ".join(p for p in prompt if isinstance(p, str))
    return (prompt, prompt, 1, 1, 0) if isinstance(prompt, str) else ("", "", 0, 0, 0)


def request_features(kind: str, body: dict[str, Any] | None) -> RequestFeatures:
    """The features of one request body (any shape; bad shapes give empty features).

    ``sketch``, ``template``, ``prompt_words`` and the reasoning marker describe the latest
    user or tool message (the new content); ``prompt_chars`` counts the whole non-system
    prompt.
    """
    text, latest, messages, users, system = prompt_text(kind, body)
    lowered = latest[: _MAX_WORDS * 12].lower()
    words = _WORD.findall(lowered)[:_MAX_WORDS]
    sketch, template = sketches(words)
    return RequestFeatures(
        prompt_chars=len(text),
        prompt_words=len(words),
        messages=messages,
        user_turns=users,
        system_chars=system,
        reasoning_marker=_REASONING.search(lowered[:2000]) is not None,
        sketch=sketch,
        template=template,
    )


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
