"""Response stage: reasoning withholding.

On openai-chat and openai-completions routes, per ``ex.controls.reasoning``: ``drop``
removes ``reasoning_content`` / ``reasoning`` / ``reasoning_details`` from messages and
deltas and ``<think>…</think>`` blocks from content and text; ``truncate`` keeps the first
``reasoning_max_chars`` characters of each reasoning, then an ellipsis; ``keep`` does
nothing. Token logprobs follow their text: an entry is sent only if its token's text is
(so ``logprobs.content[].token`` cannot spell out the reasoning), and legacy
``text_offset`` values are moved to match the new text.

Streams are filtered chunk by chunk with one :class:`~gateway.protect.think.ThinkFilter`
per choice in ``ex.state``; only the tail of a chunk that could be the start of a tag
(``<thi``) is held back, and it goes out with the next chunk of that choice (at the
latest with the one carrying ``finish_reason``). A chunk left without text keeps its place
in the stream with empty content.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from gateway.exchange import Exchange
from gateway.policy import RouteKind
from gateway.protect.think import CLOSE, ELLIPSIS, OPEN, Filtered, ThinkFilter, align, classify

_KINDS = (RouteKind.OPENAI_CHAT, RouteKind.OPENAI_COMPLETIONS)
_FIELDS = ("reasoning_content", "reasoning")
_STRUCTURED = ("reasoning_details",)  # cannot be cut safely: removed in both modes
_LEGACY = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


@dataclass(slots=True)
class _Held:
    """A logprob entry and how much of its token's text has gone out already."""

    entry: Any
    sent: int = 0
    shift: int = 0  # legacy text_offset correction, fixed when its head went out


@dataclass(slots=True)
class _Choice:
    """Streaming state of one choice."""

    think: ThinkFilter
    held: list[_Held] = field(default_factory=list)  # entries waiting for their text
    shift: int = 0  # characters removed minus inserted so far (for legacy text_offset)
    used: dict[str, int] = field(default_factory=dict)  # reasoning field characters sent
    cut: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _State:
    choices: dict[int, _Choice] = field(default_factory=dict)
    recorded: bool = False


class ReasoningFilter:
    name = "reasoning"

    def __init__(self, secret: bytes = b"") -> None:
        self._secret = secret

    def on_json(self, ex: Exchange, body: dict[str, Any]) -> bool:
        return self._filter(ex, body, stream=False)

    def on_event(self, ex: Exchange, event: dict[str, Any]) -> bool:
        return self._filter(ex, event, stream=True)

    def _filter(self, ex: Exchange, doc: dict[str, Any], stream: bool) -> bool:
        controls = ex.controls
        if controls is None or controls.reasoning in (None, "keep"):
            return False
        if ex.route.kind not in _KINDS or not isinstance(doc.get("choices"), list):
            return False
        limit = None if controls.reasoning == "drop" else (controls.reasoning_max_chars or 0)
        state = ex.state.get(self.name)
        if state is None:
            state = ex.state[self.name] = _State()
        shadow = ex.policy.shadow
        work = copy.deepcopy(doc) if shadow else doc
        changed = withheld = False
        for position, choice in enumerate(work["choices"]):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", position)
            index = index if type(index) is int else position
            if stream:
                st = state.choices.get(index)
                if st is None:
                    st = state.choices[index] = _Choice(ThinkFilter(limit))
            else:
                st = _Choice(ThinkFilter(limit))
            c, w = _choice(
                choice, st, limit, final=not stream or choice.get("finish_reason") is not None
            )
            changed, withheld = changed or c, withheld or w
        if withheld and not state.recorded:
            state.recorded = True
            name = "reasoning_dropped" if limit is None else "reasoning_truncated"
            ex.modifications.append(f"shadow:{name}" if shadow else name)
        return changed and not shadow


def _choice(
    choice: dict[str, Any], st: _Choice, limit: int | None, final: bool
) -> tuple[bool, bool]:
    """Filter one choice (a whole one, or one chunk of a streamed one) in place:
    (changed, reasoning withheld)."""
    holder = choice.get("message")
    if not isinstance(holder, dict):
        holder = choice.get("delta")
    legacy = not isinstance(holder, dict)
    if not isinstance(holder, dict):
        holder, key = choice, "text"
    else:
        key = "content"
    changed, withheld, field_text = (False, False, "") if legacy else _fields(holder, st, limit)
    entries = _entries(choice.get("logprobs"), legacy)
    text = holder.get(key)
    approved: list[Any] = []
    if field_text and entries and not (isinstance(text, str) and text):
        # The logprobs of a chunk whose only text is a reasoning field.
        approved = _reasoning_entries(entries, field_text, limit, legacy)
        if len(approved) < len(entries):
            _put_entries(choice, approved, legacy)
            changed = withheld = True
        entries = None
    if not isinstance(text, str):
        if not (final and (st.think.pending or st.held)):
            return changed, withheld
        text = ""
    outside = not st.think.inside
    filtered = st.think.feed(text, final)
    withheld = withheld or filtered.withheld
    if filtered.text != text:
        holder[key] = filtered.text
        changed = True
    consumed = filtered.held_from - len(filtered.text)
    if entries is None and not st.held:
        st.shift += consumed
        return changed, withheld
    view = filtered
    if field_text and outside and OPEN not in filtered.source and CLOSE not in filtered.source:
        # Reasoning in its own field, logprobs over all tokens (vLLM's reasoning parser):
        # place the entries on the text as the model wrote it.
        view = ThinkFilter(limit).feed(OPEN + field_text + CLOSE + filtered.source, final=True)
    had_held = bool(st.held)
    waiting = [*st.held, *(_Held(e) for e in entries or [])]
    out, moved = _place(st, view, waiting, legacy)
    st.shift += consumed
    if had_held or moved or len(out) != len(waiting):
        _put_entries(choice, out + approved, legacy)
        changed = True
    return changed, withheld


def _place(
    st: _Choice, view: Filtered, waiting: list[_Held], legacy: bool
) -> tuple[list[Any], bool]:
    """The logprob entries whose text went out unchanged in ``view`` (legacy offsets moved
    to the new text), holding back in ``st`` those whose text is held; (entries, moved)."""
    st.held = []
    tokens = []
    for h in waiting:
        token = _token(h.entry, legacy)
        tokens.append(token[h.sent :] if token is not None else None)
    spans = align(view.source, tokens)
    out: list[Any] = []
    moved = False
    for h, span, verdict in zip(waiting, spans, classify(view, spans), strict=False):
        start = span[0]
        if h.sent and start != 0:
            continue  # the token's text would not be contiguous
        if verdict == "held":
            if start < view.held_from:  # the token's head goes out now, its tail is held
                (head,) = classify(view, [(start, view.held_from)])
                if head == "dropped":
                    continue
                assert isinstance(head, int)
                if not h.sent:
                    h.shift = st.shift + start - head
                h.sent += view.held_from - start
            st.held.append(h)
        elif verdict != "dropped":
            assert isinstance(verdict, int)
            if h.sent and verdict != 0:
                continue
            shift = h.shift if h.sent else st.shift + start - verdict
            if legacy and shift and type(h.entry[3]) is int:
                h.entry[3] -= shift
                moved = True
            out.append(h.entry)
    rest = waiting[len(spans) :]
    if rest and not view.withheld and view.held_from == len(view.source):
        out += [h.entry for h in rest]  # cannot be placed, but nothing was withheld
    return out, moved


def _fields(holder: dict[str, Any], st: _Choice, limit: int | None) -> tuple[bool, bool, str]:
    """Drop or cut the reasoning fields of a message or delta: (changed, withheld, the
    reasoning text that arrived)."""
    changed = withheld = False
    arrived = ""
    for name in _FIELDS + _STRUCTURED:
        value = holder.get(name)
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, str) and not arrived:
            arrived = value
        if limit is None or not isinstance(value, str) or name in _STRUCTURED:
            del holder[name]
            changed = withheld = True
            continue
        used = st.used.get(name, 0)
        kept = value[: max(0, limit - used)]
        st.used[name] = used + len(kept)
        if len(kept) < len(value):
            withheld = True
            if name not in st.cut:
                st.cut.add(name)
                kept += ELLIPSIS
            holder[name] = kept
            changed = True
    return changed, withheld, arrived


def _reasoning_entries(entries: list[Any], text: str, limit: int | None, legacy: bool) -> list[Any]:
    """The logprobs to keep of a chunk whose only text is a reasoning field: none, or
    (truncating) those of the characters that were sent."""
    keep = 0 if limit is None else limit
    spans = align(text, [_token(e, legacy) for e in entries])
    return [e for e, (_, end) in zip(entries, spans, strict=False) if end <= keep]


# -- logprob entries in both formats ---------------------------------------------------------


def _entries(logprobs: Any, legacy: bool) -> list[Any] | None:
    """Chat entries (dicts), or legacy ones as ``[token, logprob, top, offset]`` rows."""
    if not isinstance(logprobs, dict):
        return None
    if not legacy:
        content = logprobs.get("content")
        return list(content) if isinstance(content, list) else None
    tokens = logprobs.get("tokens")
    if not isinstance(tokens, list):
        return None
    columns = [logprobs.get(k) for k in _LEGACY]
    return [
        [col[j] if isinstance(col, list) and j < len(col) else None for col in columns]
        for j in range(len(tokens))
    ]


def _put_entries(choice: dict[str, Any], out: list[Any], legacy: bool) -> None:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        if not out:
            return
        logprobs = choice["logprobs"] = dict.fromkeys(_LEGACY) if legacy else {"content": None}
    if not legacy:
        logprobs["content"] = out
        return
    for k, name in enumerate(_LEGACY):
        if name in logprobs:
            logprobs[name] = [row[k] for row in out]


def _token(entry: Any, legacy: bool) -> str | None:
    token = entry[0] if legacy else entry.get("token") if isinstance(entry, dict) else None
    return token if isinstance(token, str) else None
