"""Response stage: logprob protection (rounding, keyed bounded noise, truncation).

On openai-chat and openai-completions routes, per ``ex.controls``: alternatives beyond
``top_logprobs_max`` are cut, every logprob gets keyed noise of at most ``logprob_noise``
nats that keeps the top entry on top (see :mod:`gateway.protect.logprobs`), and values
are rounded to ``logprob_decimals``; ``logprobs: drop`` removes them altogether. Chat
(``logprobs.content``/``refusal``), legacy completions (parallel ``tokens`` /
``token_logprobs`` / ``top_logprobs`` arrays) and vLLM's ``prompt_logprobs`` are handled,
whole or one streamed chunk at a time: each chunk is protected on its own, with the noise
context carried per choice in ``ex.state``, so a streamed answer gets the same numbers as
the same answer unstreamed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.exchange import Exchange
from gateway.policy import RouteKind
from gateway.protect.logprobs import (
    advance,
    context_root,
    is_logprob,
    keep_highest,
    noise_key,
    protect_position,
)

_KINDS = (RouteKind.OPENAI_CHAT, RouteKind.OPENAI_COMPLETIONS)
# Request fields that change the distribution the logprobs describe, and only those: a
# field outside this list cannot be varied to buy a fresh noise draw. (Temperature, top_p
# and penalties are left out: servers report raw logprobs, before sampling transforms.)
_CONDITIONING = (
    "model",
    "messages",
    "prompt",
    "suffix",
    "echo",
    "logit_bias",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
)


@dataclass(slots=True)
class _Params:
    decimals: int
    noise: float
    keep: int
    drop: bool


@dataclass(slots=True)
class _State:
    """Per request: noise contexts by choice, and what has been recorded."""

    contexts: dict[int, bytes] = field(default_factory=dict)
    recorded: set[str] = field(default_factory=set)
    truncated: bool = False


class LogprobGuard:
    name = "logprobs"

    def __init__(self, secret: bytes = b"") -> None:
        self._key = noise_key(secret)

    def on_json(self, ex: Exchange, body: dict[str, Any]) -> bool:
        return self._guard(ex, body)

    def on_event(self, ex: Exchange, event: dict[str, Any]) -> bool:
        return self._guard(ex, event)

    # -- one document ---------------------------------------------------------------------

    def _guard(self, ex: Exchange, doc: dict[str, Any]) -> bool:
        controls = ex.controls
        if controls is None or ex.route.kind not in _KINDS:
            return False
        choices = doc.get("choices")
        if not isinstance(choices, list):
            choices = []
        if doc.get("prompt_logprobs") is None and not any(
            isinstance(c, dict) and (c.get("logprobs") or c.get("prompt_logprobs")) for c in choices
        ):
            return False  # most chunks: nothing to protect
        params = _Params(
            decimals=controls.logprob_decimals if controls.logprob_decimals is not None else 8,
            noise=controls.logprob_noise or 0.0,
            keep=controls.top_logprobs_max if controls.top_logprobs_max is not None else 20,
            drop=controls.logprobs == "drop",
        )
        state = ex.state.get(self.name)
        if state is None:
            state = ex.state[self.name] = _State()
        shadow = ex.policy.shadow
        work = copy.deepcopy(doc) if shadow else doc
        done: list[str] = []
        for position, choice in enumerate(work.get("choices") or ()):
            if isinstance(choice, dict):
                done += self._choice(ex, state, params, choice, position)
        if work.get("prompt_logprobs") is not None:
            done += self._prompt_logprobs(ex, state, params, work, 0)
        for name in done:
            if name not in state.recorded:
                state.recorded.add(name)
                ex.modifications.append(f"shadow:{name}" if shadow else name)
        return bool(done) and not shadow

    def _choice(
        self, ex: Exchange, state: _State, params: _Params, choice: dict[str, Any], position: int
    ) -> list[str]:
        index = choice.get("index", position)
        index = index if type(index) is int else position
        done: list[str] = []
        if choice.get("prompt_logprobs") is not None:
            done += self._prompt_logprobs(ex, state, params, choice, index)
        logprobs = choice.get("logprobs")
        if not isinstance(logprobs, dict):
            return done
        if params.drop:
            choice["logprobs"] = None
            return [*done, "logprobs_dropped"]
        context = self._context(ex, state, params, index)
        if "tokens" in logprobs:
            context, touched = self._legacy(state, params, logprobs, context)
        else:
            touched = False
            for name in ("content", "refusal"):
                entries = logprobs.get(name)
                if isinstance(entries, list):
                    context, seen = self._chat(state, params, entries, context)
                    touched = touched or seen
        if params.noise > 0:
            state.contexts[index] = context
        if touched:
            done.append(f"logprobs_rounded:{params.decimals}")
            if params.noise > 0:
                done.append(f"logprobs_noised:{params.noise:g}")
            if state.truncated:
                done.append(f"top_logprobs_truncated:{params.keep}")
        return done

    def _context(self, ex: Exchange, state: _State, params: _Params, index: int) -> bytes:
        if params.noise <= 0:
            return b""
        found = state.contexts.get(index)
        if found is None:
            found = context_root(self._key, params.noise, _conditioning(ex, index))
        return found

    # -- formats --------------------------------------------------------------------------

    def _chat(
        self, state: _State, params: _Params, entries: list[Any], context: bytes
    ) -> tuple[bytes, bool]:
        """Chat entries ``{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}``."""
        touched = False
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            token = entry.get("token")
            slots: list[dict[str, Any]] = []
            tops = entry.get("top_logprobs")
            if isinstance(tops, list):
                if len(tops) > params.keep:
                    values = [t.get("logprob") if isinstance(t, dict) else None for t in tops]
                    tops[:] = [tops[i] for i in keep_highest(values, params.keep)]
                    state.truncated = True
                slots += [
                    t
                    for t in tops
                    if isinstance(t, dict)
                    and isinstance(t.get("token"), str)
                    and is_logprob(t.get("logprob"))
                ]
            if isinstance(token, str) and is_logprob(entry.get("logprob")):
                slots.append(entry)  # last: among equal values the listed order decides
            if slots:
                touched = True
                new = protect_position(
                    [s["token"] for s in slots],
                    [s["logprob"] for s in slots],
                    decimals=params.decimals,
                    noise=params.noise,
                    key=self._key,
                    context=context,
                )
                for slot, value in zip(slots, new, strict=True):
                    slot["logprob"] = value
            if params.noise > 0 and isinstance(token, str):
                context = advance(context, token)
        return context, touched

    def _legacy(
        self, state: _State, params: _Params, logprobs: dict[str, Any], context: bytes
    ) -> tuple[bytes, bool]:
        """Legacy ``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}``."""
        tokens, values, tops = (
            logprobs.get(k) for k in ("tokens", "token_logprobs", "top_logprobs")
        )
        if not isinstance(tokens, list):
            return context, False
        values = values if isinstance(values, list) else []
        tops = tops if isinstance(tops, list) else []
        touched = False
        for j, token in enumerate(tokens):
            names: list[str] = []
            olds: list[float] = []
            top = tops[j] if j < len(tops) else None
            if isinstance(top, dict):
                if len(top) > params.keep:
                    items = list(top.items())
                    kept = keep_highest([v for _, v in items], params.keep)
                    top = tops[j] = {items[i][0]: items[i][1] for i in kept}
                    state.truncated = True
                listed = [(k, v) for k, v in top.items() if is_logprob(v)]
                names += [k for k, _ in listed]
                olds += [v for _, v in listed]
            listed_count = len(names)
            if j < len(values) and isinstance(token, str) and is_logprob(values[j]):
                names.append(token)  # last: among equal values the listed order decides
                olds.append(values[j])
            if olds:
                touched = True
                new = protect_position(
                    names,
                    olds,
                    decimals=params.decimals,
                    noise=params.noise,
                    key=self._key,
                    context=context,
                )
                if len(names) > listed_count:
                    values[j] = new[-1]
                if isinstance(top, dict):
                    for name, value in zip(names[:listed_count], new[:listed_count], strict=True):
                        top[name] = value
            if params.noise > 0 and isinstance(token, str):
                context = advance(context, token)
        return context, touched

    def _prompt_logprobs(
        self, ex: Exchange, state: _State, params: _Params, holder: dict[str, Any], index: int
    ) -> list[str]:
        """vLLM's ``prompt_logprobs``: per prompt position ``{token_id: {logprob, rank, …}}``
        or null. Rounded and noised (keyed by position); the request side caps their count."""
        if params.drop:
            holder["prompt_logprobs"] = None
            return ["logprobs_dropped"]
        positions = holder["prompt_logprobs"]
        if not isinstance(positions, list):
            return []
        root = b""
        if params.noise > 0:
            root = advance(context_root(self._key, params.noise, _conditioning(ex, index)), "\0")
        touched = False
        for j, position in enumerate(positions):
            if not isinstance(position, dict):
                continue
            slots = [
                (str(k), v)
                for k, v in position.items()
                if isinstance(v, dict) and is_logprob(v.get("logprob"))
            ]
            if not slots:
                continue
            touched = True
            new = protect_position(
                [k for k, _ in slots],
                [v["logprob"] for _, v in slots],
                decimals=params.decimals,
                noise=params.noise,
                key=self._key,
                context=advance(root, str(j)) if params.noise > 0 else b"",
            )
            for (_, slot), value in zip(slots, new, strict=True):
                slot["logprob"] = value
        if not touched:
            return []
        done = [f"logprobs_rounded:{params.decimals}"]
        return [*done, f"logprobs_noised:{params.noise:g}"] if params.noise > 0 else done


def _conditioning(ex: Exchange, index: int) -> bytes:
    """What the logprobs of choice ``index`` are conditioned on, canonically encoded."""
    body = ex.body
    if body is None:
        return ex.raw_body
    picked = {k: body[k] for k in _CONDITIONING if k in body}
    prompt = picked.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and isinstance(prompt[0], (str, list)):
        # Legacy completions with several prompts: choice i answers prompt i // n.
        n = body.get("n")
        n = n if type(n) is int and n > 0 else 1
        picked["prompt"] = prompt[min(index // n, len(prompt) - 1)]
    return orjson.dumps(_canonical(picked), option=orjson.OPT_SORT_KEYS)


def _text_parts(content: Any) -> Any:
    """A message's content as one string when it is only text, whatever shape it came in."""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return content


def _canonical(picked: dict[str, Any]) -> dict[str, Any]:
    """Spellings of the same request made equal, so they draw the same noise: a message's
    text as a string or as text parts, and a prompt as a string or a one-item list. (Case and
    whitespace are left alone: tokenizers see them, so the distribution may really differ.)"""
    out = dict(picked)
    messages = out.get("messages")
    if isinstance(messages, list):
        out["messages"] = [
            {**m, "content": _text_parts(m.get("content"))} if isinstance(m, dict) else m
            for m in messages
        ]
    prompt = out.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        out["prompt"] = prompt[0]
    return out
