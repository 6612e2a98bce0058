"""Response stage: the keyed lexical watermark on generated text (provenance).

Applies to chat ``message.content`` / ``delta.content`` and completions ``text`` when the
client's controls set ``watermark_text``. When streaming, a trailing word that could still
grow into a synonym is held back until the next chunk of the same choice, and released at
the latest with the choice's ``finish_reason`` chunk, so the streamed text equals the
non-streamed one. In shadow mode the text goes out unchanged and
``shadow:text_watermarked`` is logged.
"""

from __future__ import annotations

from typing import Any

from gateway.exchange import Exchange
from gateway.policy import RouteKind
from gateway.provenance.synonyms import default_table
from gateway.provenance.text import TextMarker, client_text_key, mark_text

MODIFICATION = "text_watermarked"
LOGPROBS_WITHHELD = "logprobs_withheld_for_watermark"


class TextWatermark:
    name = "watermark"

    def __init__(self, secret: bytes = b"") -> None:
        if len(secret) < 16:
            raise ValueError("TextWatermark needs the provenance key (at least 16 bytes)")
        self._secret = secret
        self._table = default_table()

    def _key(self, ex: Exchange) -> bytes | None:
        """The client's watermark key, or None where the watermark does not apply."""
        if (
            ex.controls is None
            or not ex.controls.watermark_text
            or ex.client is None
            or ex.route.kind not in (RouteKind.OPENAI_CHAT, RouteKind.OPENAI_COMPLETIONS)
        ):
            return None
        if ex.policy.shadow:
            _note(ex, shadow=True)
            return None
        return client_text_key(self._secret, ex.client.id)

    def on_json(self, ex: Exchange, body: dict[str, Any]) -> bool:
        key = self._key(ex)
        choices = body.get("choices")
        if key is None or not isinstance(choices, list):
            return False
        changed = marked = False
        for choice in choices:
            changed = _withhold_logprobs(ex, choice) or changed
            holder, field = _text_field(choice, "message")
            if holder is None:
                continue
            text = holder[field]
            new = mark_text(text, key, self._table)
            marked = True
            if new != text:
                holder[field] = new
                changed = True
        if marked:
            _note(ex)
        return changed

    def on_event(self, ex: Exchange, event: dict[str, Any]) -> bool:
        key = self._key(ex)
        choices = event.get("choices")
        if key is None or not isinstance(choices, list):
            return False
        markers: dict[Any, TextMarker] = ex.state.setdefault(self.name, {})
        changed = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            changed = _withhold_logprobs(ex, choice) or changed
            holder, field = _text_field(choice, "delta")
            finishing = choice.get("finish_reason") is not None
            if holder is None and not finishing:
                continue
            index = choice.get("index", 0)
            marker = markers.get(index)
            if marker is None:
                marker = markers[index] = TextMarker(key, self._table)
                _note(ex)
            text = holder[field] if holder is not None else ""
            new = marker.feed(text)
            if finishing:
                new += marker.finish()
                del markers[index]
            if new == text:
                continue
            if holder is None:
                holder, field = _writable_field(choice)
                if holder is None:
                    continue
            holder[field] = new
            changed = True
        return changed


def _text_field(choice: Any, container: str) -> tuple[dict[str, Any] | None, str]:
    """The dict and key holding a choice's generated text, if it has any."""
    if not isinstance(choice, dict):
        return None, ""
    if isinstance(choice.get("text"), str):
        return choice, "text"
    inner = choice.get(container)
    if isinstance(inner, dict) and isinstance(inner.get("content"), str):
        return inner, "content"
    return None, ""


def _writable_field(choice: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Where to put text released at the end of a choice that carried none in this chunk."""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta, "content"
    if "text" in choice or "delta" not in choice:
        return choice, "text"
    return None, ""


def _withhold_logprobs(ex: Exchange, choice: Any) -> bool:
    """Drop a watermarked choice's logprobs: their tokens would spell the unmarked text."""
    if not isinstance(choice, dict) or choice.get("logprobs") is None:
        return False
    choice["logprobs"] = None
    if LOGPROBS_WITHHELD not in ex.modifications:
        ex.modifications.append(LOGPROBS_WITHHELD)
    return True


def _note(ex: Exchange, shadow: bool = False) -> None:
    name = f"shadow:{MODIFICATION}" if shadow else MODIFICATION
    if name not in ex.modifications:
        ex.modifications.append(name)
