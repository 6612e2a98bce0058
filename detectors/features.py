"""Per-request features: pure functions from a request body to :class:`RequestFeatures`.

Runs in the gateway's record step for every request, so it is kept to tens of
microseconds: text is capped, shingles are hashed with CRC32 and the SimHash is summed
with numpy.
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
_NUMBER = re.compile(r"^\d[\d.,']*$")
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


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: spreads every input bit over all 64 output bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def simhash(tokens: Sequence[str], shingle: int = 3) -> int:
    """64-bit SimHash of the token shingles (0 for no tokens).

    Each word is hashed once (CRC32); shingle hashes are combined and mixed in numpy, so
    the cost is one C call per word plus a few vector operations.
    """
    if not tokens:
        return 0
    words = np.fromiter(
        (zlib.crc32(t.encode()) for t in tokens), dtype=np.uint64, count=len(tokens)
    )
    n = max(1, len(words) - shingle + 1)
    combined = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(min(shingle, len(words))):
            combined = combined * np.uint64(0x100000001B3) + words[k : k + n]
        hashes = _mix(combined).astype(">u8")
    bits = np.unpackbits(hashes.view(np.uint8).reshape(-1, 8), axis=1)
    votes = bits.sum(axis=0, dtype=np.int64) * 2 - n
    return int(np.packbits(votes > 0).view(">u8")[0])


def _template_tokens(words: Sequence[str]) -> list[str]:
    """Words with slot-like values (numbers, long or rare-looking words) masked."""
    return [_MASK if _NUMBER.match(w) or len(w) > 12 else w for w in words]


def prompt_text(kind: str, body: dict[str, Any] | None) -> tuple[str, int, int, int]:
    """(prompt text, messages, user turns, system chars) of a chat or completions body."""
    if body is None:
        return "", 0, 0, 0
    messages = body.get("messages")
    if isinstance(messages, list):
        texts, users, system = [], 0, 0
        for m in messages:
            if not isinstance(m, dict):
                continue
            text = _text_of(m.get("content"))
            if m.get("role") == "system":
                system += len(text)
            else:
                texts.append(text)
                users += m.get("role") == "user"
        return "\n".join(texts), len(messages), users, system
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, list):
        prompt = " ".join(p for p in prompt if isinstance(p, str))
    return (prompt, 1, 1, 0) if isinstance(prompt, str) else ("", 0, 0, 0)


def request_features(kind: str, body: dict[str, Any] | None) -> RequestFeatures:
    """The features of one request body (any shape; bad shapes give empty features)."""
    text, messages, users, system = prompt_text(kind, body)
    lowered = text[: _MAX_WORDS * 12].lower()
    words = _WORD.findall(lowered)[:_MAX_WORDS]
    return RequestFeatures(
        prompt_chars=len(text),
        prompt_words=len(words),
        messages=messages,
        user_turns=users,
        system_chars=system,
        reasoning_marker=_REASONING.search(lowered[:2000]) is not None,
        sketch=simhash(words),
        template=simhash(_template_tokens(words)),
    )


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
