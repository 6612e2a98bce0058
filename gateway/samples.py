"""Prompt samples for review: the latest user message, truncated and redacted.

Kept in the decision event only when the policy says so
(``store.retention.keep_prompt_samples``). Redaction removes what should not sit in a log
that reviewers read: e-mail addresses, API-key-like tokens, long digit runs (card, phone
and account numbers) and IP addresses. It is a safety net, not anonymisation: the policy
default is to keep no samples at all.
"""

from __future__ import annotations

import re
from typing import Any

from detectors.features import prompt_text

MAX_CHARS = 300

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    (re.compile(r"\b(?:sk|pk|rk|api|key|tok)[-_][A-Za-z0-9_\-]{12,}\b", re.I), "[key]"),
    # 32 or more token characters with a digit and a letter; lookaheads and a possessive
    # run instead of nested quantifiers, which backtracked cubically on long tokens.
    (
        re.compile(
            r"\b(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,}+(?![A-Za-z0-9_\-])"
        ),
        "[key]",
    ),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "[ip]"),
    (re.compile(r"(?:\+?\d[\d \-]{6,}\d)"), "[number]"),
)


def redact(text: str) -> str:
    """``text`` with e-mails, key-like tokens, IP addresses and long numbers replaced."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def prompt_sample(kind: str, body: dict[str, Any] | None, max_chars: int = MAX_CHARS) -> str:
    """The latest user (or tool) message of ``body``, redacted, at most ``max_chars`` long."""
    _text, latest, _messages, _users, _system = prompt_text(kind, body)
    if not latest:
        return ""
    # Redact before cutting, so a cut never leaves half an address unredacted; the text is
    # first bounded at a word break, so that bound cannot split an address either.
    head = latest if len(latest) <= max_chars * 4 else latest[: max_chars * 4].rsplit(None, 1)[0]
    sample = redact(head)
    return sample if len(sample) <= max_chars else sample[: max_chars - 1] + "…"
