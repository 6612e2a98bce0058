"""Operator actions on a client, each written to the audit trail.

=============  ==================================================================
``set_level``  enforce ``level`` (allow … block) for ``ttl_s`` (None: no expiry)
``allowlist``  an operator ``allow`` without expiry: the detector never raises it
               (rate limits still apply; a full allowlist is the policy's
               ``clients.<id>.allowlist``)
``block``      enforce ``block`` for ``ttl_s`` (None: no expiry)
``reset``      remove the level: the client is back to ``allow`` and the detector
               may act on it again
``label``      label the client ``harvesting`` or ``benign`` (``<prefix>:labels``,
               read by ``antidistill train --from-labels``)
=============  ==================================================================

Levels set here carry the reason code ``operator:<reason>``, so the detector never lowers
them (:mod:`detectors.ladder`). Every action needs a non-empty reason. The stored code is
the reason sanitized (lower case, ``[a-z0-9_:-]``, at most 64 characters, as
``antidistill client set-level`` makes it); the audit entry keeps the reason as written.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.admin import audit
from gateway.admin.audit import AuditEntry
from gateway.keys import KeySpace
from gateway.ratelimit.levels import LEVELS
from gateway.ratelimit.limiter import Limiter

KINDS = ("set_level", "allowlist", "block", "reset", "label")
LABELS = ("harvesting", "benign")
MAX_REASON = 500
MAX_ACTOR = 64
DEFAULT_ACTOR = "admin"
OPERATOR = "operator:"
_CODE = re.compile(r"[^a-z0-9_:\-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The level each kind enforces (None: the action does not set a level).
_FIXED_LEVEL = {"allowlist": "allow", "block": "block", "reset": None, "label": None}
_TAKES_TTL = ("set_level", "block")


class ActionError(ValueError):
    """An action that cannot be taken as asked (the message says why, for the operator)."""


@dataclass(frozen=True, slots=True)
class Action:
    kind: str
    reason: str
    level: str | None = None  # set_level only
    label: str | None = None  # label only
    ttl_s: float | None = None  # set_level / block; None: no expiry

    def validated(self) -> Action:
        """This action, checked (raises :class:`ActionError`) and with the reason stripped.

        ``level`` is filled in for ``allowlist`` (``allow``) and ``block`` (``block``); a
        level that contradicts the kind, a label on anything but ``label``, or a TTL on
        anything but ``set_level`` / ``block`` is an error rather than silently ignored.
        """
        if self.kind not in KINDS:
            raise ActionError(f"unknown action {self.kind[:40]!r}; expected one of {KINDS}")
        reason = self.reason.strip() if isinstance(self.reason, str) else ""
        if not reason:
            raise ActionError("a reason is required")
        if len(reason) > MAX_REASON:
            raise ActionError(f"the reason is longer than {MAX_REASON} characters")
        level = self.level
        if self.kind == "set_level":
            if level not in LEVELS:
                raise ActionError(f"unknown level {str(level)[:40]!r}; expected one of {LEVELS}")
        else:
            fixed = _FIXED_LEVEL[self.kind]
            if level is not None and level != fixed:
                raise ActionError(f"{self.kind} takes no level {str(level)[:40]!r}")
            level = fixed
        if self.kind == "label":
            if self.label not in LABELS:
                raise ActionError(
                    f"unknown label {str(self.label)[:40]!r}; expected one of {LABELS}"
                )
        elif self.label is not None:
            raise ActionError(f"{self.kind} takes no label")
        if self.ttl_s is not None:
            if self.kind not in _TAKES_TTL:
                raise ActionError(f"{self.kind} takes no ttl")
            if not (math.isfinite(self.ttl_s) and self.ttl_s > 0):
                raise ActionError("the ttl must be a positive duration")
        return dataclasses.replace(self, reason=reason, level=level)


def reason_code(reason: str) -> str:
    """``operator:<reason>`` as stored with the level (comma-free, at most 64 characters
    after the prefix)."""
    return OPERATOR + (_CODE.sub("_", reason.strip().lower())[:64] or "operator")


def clean_actor(actor: str | None) -> str:
    """The operator's name as recorded: stripped, ``admin`` if empty; raises
    :class:`ActionError` if it is too long or holds control characters."""
    name = (actor or "").strip()
    if not name:
        return DEFAULT_ACTOR
    if len(name) > MAX_ACTOR or _CONTROL.search(name):
        raise ActionError(f"the actor must be at most {MAX_ACTOR} printable characters")
    return name


async def perform(
    redis: aioredis.Redis, keys: KeySpace, client: str, action: Action, actor: str
) -> AuditEntry:
    """Take ``action`` on ``client`` and record it in the audit trail; returns the entry.

    Raises :class:`ActionError` for an invalid action or actor (nothing is written then).
    ``previous_level`` in the entry is the enforced level just before the action.
    """
    action = action.validated()
    actor = clean_actor(actor)
    limiter = Limiter(redis)
    level_key = keys.level(client)
    previous = await limiter.get_level(level_key)
    if action.kind == "label":
        assert action.label is not None
        await redis.hset(keys.labels, client, action.label)
        after = ""
    elif action.kind == "reset":
        async with redis.pipeline(transaction=False) as pipe:
            pipe.delete(level_key)
            pipe.hdel(keys.shadow_levels, client)
            await pipe.execute()
        after = "allow"
    else:
        assert action.level is not None
        await limiter.set_level(level_key, action.level, [reason_code(action.reason)], action.ttl_s)
        after = action.level
    entry = AuditEntry(
        id="",
        ts_ms=0,
        actor=actor,
        action=action.kind,
        client=client,
        reason=action.reason,
        level=after,
        label=action.label or "",
        previous_level=previous.level,
    )
    return await audit.append(redis, keys, entry)
