"""The read model of operator review: what the admin API, the dashboard and the report show.

Everything is read from Redis (the gateway's and the detector's keys, see
:class:`gateway.keys.KeySpace`); nothing here writes. Returned values are frozen dataclasses,
ready for JSON (:func:`to_jsonable`) and for templates. Attacker-controlled text (prompt
samples, client metadata, names) is returned as is: escaping is the renderer's job.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
import redis.asyncio as aioredis

from gateway.admin import audit
from gateway.admin.actions import LABELS
from gateway.admin.audit import AuditEntry
from gateway.admin.profile import ParamProfile as ParamProfile  # part of this model
from gateway.admin.profile import json_number, metadata, param_profile, samples
from gateway.keys import KeySpace
from gateway.policy import Policy
from gateway.ratelimit.levels import LEVELS, Level, decode_level
from gateway.store.events import DecisionEvent

FLAGGED_LEVELS = ("watch", "degrade", "throttle", "block")
BATCH = 500  # clients per pipelined round trip
MAX_CLIENTS = 50_000  # most recently seen clients a listing considers
EVENT_BATCH = 500  # entries per read: ~15 ms of parsing on the event loop
EVENT_SCAN_LIMIT = 50_000  # latest stream entries searched for a client's events
AUDIT_PER_CLIENT = 50
RECENT = 50  # events kept in ClientDetail.recent
SAMPLES = 10
TOP_METADATA = 10
LEVEL_FIELDS = ("level", "reasons", "expires_at_ms")  # read in this order (and by the Lua below)
DETECTOR_FIELDS = ("score", "reasons", "campaign")


@dataclass(frozen=True, slots=True)
class Evidence:
    """One reason code of the detector's score, against the benign baseline.

    ``contribution`` is the feature's share of the model's logit; ``value`` the client's
    window feature value, ``benign`` the benign median of the same feature.
    """

    feature: str
    contribution: float
    value: float
    benign: float


@dataclass(frozen=True, slots=True)
class ScorePoint:
    ts_ms: int
    score: float
    level: str


@dataclass(frozen=True, slots=True)
class Campaign:
    """Accounts the detector linked, what links them (``links``: evidence kinds such as
    ``template``, ``timing``, ``ip``, ``fingerprint``), and the campaign's pooled score."""

    id: str
    members: tuple[str, ...]
    links: tuple[str, ...]
    score: float
    reasons: tuple[str, ...]
    ts_ms: int


@dataclass(frozen=True, slots=True)
class ClientSummary:
    """One client, as listed: identity, level, latest score and volume."""

    id: str
    name: str  # ClientOverride.name from the policy, or ""
    tier: str
    level: str  # enforced level now ("allow" if none or expired)
    level_reasons: tuple[str, ...]
    level_expires_at_ms: int | None
    score: float | None  # latest detector score; None if never scored
    reasons: tuple[str, ...]  # the detector's latest reason codes
    shadow_level: str | None  # the would-be level in shadow mode, if any
    requests: int
    tokens: int
    decisions: dict[str, int]  # decision → count (allow, reject, …)
    first_ts_ms: int | None
    last_ts_ms: int | None
    label: str | None  # operator label: "harvesting" / "benign"
    campaign: str | None  # id of the campaign the client is linked into, if any

    _json_extra: ClassVar[tuple[str, ...]] = ("flagged",)

    @property
    def flagged(self) -> bool:
        """At ``watch`` or above, enforced or in shadow."""
        return self.level in FLAGGED_LEVELS or (self.shadow_level or "allow") in FLAGGED_LEVELS


@dataclass(frozen=True, slots=True)
class ClientDetail:
    """Everything a reviewer needs about one client."""

    summary: ClientSummary
    history: tuple[ScorePoint, ...]  # oldest first
    evidence: tuple[Evidence, ...]  # strongest first
    params: ParamProfile
    samples: tuple[str, ...]  # redacted prompt samples (only if the policy keeps them)
    campaigns: tuple[Campaign, ...]
    audit: tuple[AuditEntry, ...]  # newest first
    metadata: dict[str, tuple[str, ...]]  # client_ip / tls_fingerprint / org_id → seen values
    recent: tuple[DecisionEvent, ...] = field(default=())  # latest events, newest last


class Review:
    """Reads the review model from Redis under the current policy (``policy()``).

    Listings take one round trip per batch of ``BATCH`` clients, whatever the number of
    keys per client. A client's events are looked for among the latest ``scan_limit``
    entries of the decision stream (there is no per-client index; reading the stream back
    costs ~25 µs an entry, so 50,000 entries take about a second on a small machine).
    ``redis`` is a client without ``decode_responses`` (as
    :func:`gateway.store.connect.connect` makes it); text clients work too.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySpace,
        policy: Callable[[], Policy],
        *,
        scan_limit: int = EVENT_SCAN_LIMIT,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._policy = policy
        self._scan_limit = scan_limit
        self._read_clients = redis.register_script(_READ_CLIENTS_LUA)

    async def clients(
        self, *, flagged: bool = False, since_ms: int | None = None, limit: int = 500
    ) -> list[ClientSummary]:
        """Clients seen at or after ``since_ms`` (``<prefix>:clients``), flagged ones only if
        asked, ranked: flagged first, then by score (highest first), then by last seen.

        At most ``MAX_CLIENTS`` of the most recently seen clients are considered (plus, when
        ``flagged``, every client in ``<prefix>:flagged``).
        """
        if limit <= 0:
            return []
        keys = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zrevrangebyscore(
                keys.clients,
                "+inf",
                "-inf" if since_ms is None else since_ms,
                start=0,
                num=MAX_CLIENTS,
                withscores=True,
            )
            pipe.hgetall(keys.campaigns)
            if flagged:
                pipe.zrange(keys.flagged, 0, -1)
            replies = await pipe.execute()
        now_ms = _server_ms(replies[0])
        seen: dict[str, int] = {_text(c): int(s) for c, s in replies[1]}
        by_member = _campaign_of(_campaigns(replies[2]))
        ids = list(seen)
        if flagged:
            ids.extend(c for c in (_text(m) for m in replies[3]) if c not in seen)
        found: list[ClientSummary] = []
        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            for summary in await self._summaries(batch, seen, by_member, now_ms):
                if since_ms is not None and (summary.last_ts_ms or 0) < since_ms:
                    continue
                if flagged and not summary.flagged:
                    continue
                found.append(summary)
        found.sort(key=_rank)
        return found[:limit]

    async def client(
        self, client_id: str, *, events: int = 2_000, since_ms: int | None = None
    ) -> ClientDetail | None:
        """One client's detail from its latest ``events`` decision events; None if the
        gateway has never seen it."""
        keys = self._keys
        policy = self._policy()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zscore(keys.clients, client_id)
            pipe.hgetall(keys.summary(client_id))
            pipe.hmget(keys.level(client_id), list(LEVEL_FIELDS))
            pipe.hgetall(keys.detector(client_id))
            pipe.hget(keys.labels, client_id)
            pipe.hget(keys.shadow_levels, client_id)
            pipe.lrange(keys.score_history(client_id), 0, -1)
            pipe.hgetall(keys.campaigns)
            replies = await pipe.execute()
        now_ms = _server_ms(replies[0])
        last_seen, summary_raw, level_raw, detector_raw = replies[1:5]
        label, shadow, history_raw, campaigns_raw = replies[5:9]
        if last_seen is None and not summary_raw:
            return None
        detector = _text_map(detector_raw)
        campaigns = _campaigns(campaigns_raw)
        summary = _summary(
            client_id,
            policy,
            now_ms=now_ms,
            last_seen=None if last_seen is None else int(last_seen),
            summary=summary_raw,
            level=level_raw,
            detector=[detector.get(name) for name in DETECTOR_FIELDS],
            label=label,
            shadow=shadow,
            by_member=_campaign_of(campaigns),
        )
        recent = self._as_kept(await self._events(client_id, events, since_ms))
        entries = await audit.read(self._redis, keys, client=client_id, count=AUDIT_PER_CLIENT)
        return ClientDetail(
            summary=summary,
            history=_history(history_raw),
            evidence=_evidence(detector.get("explain", "")),
            params=param_profile(recent),
            samples=samples(recent, SAMPLES),
            campaigns=tuple(c for c in campaigns if client_id in c.members),
            audit=tuple(entries),
            metadata=metadata(recent, TOP_METADATA),
            recent=tuple(recent[-RECENT:]),
        )

    async def campaigns(self, *, since_ms: int | None = None) -> list[Campaign]:
        """Linked campaigns, highest score first."""
        raw = await self._redis.hgetall(self._keys.campaigns)
        return [c for c in _campaigns(raw) if since_ms is None or c.ts_ms >= since_ms]

    async def decisions(
        self, *, client: str | None = None, count: int = 100
    ) -> list[DecisionEvent]:
        """The latest ``count`` decision events (of one client, if given), newest last."""
        return self._as_kept(await self._events(client, count, None))

    def _as_kept(self, events: list[DecisionEvent]) -> list[DecisionEvent]:
        """``events`` with their prompt samples only if the policy in force keeps samples:
        turning ``keep_prompt_samples`` off hides those stored while it was on, too."""
        if self._policy().store.retention.keep_prompt_samples:
            return events
        return [dataclasses.replace(e, prompt_sample="") if e.prompt_sample else e for e in events]

    async def seen(self, client_id: str) -> bool:
        """Whether the gateway has logged a request of ``client_id``."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self._keys.clients, client_id)
            pipe.exists(self._keys.summary(client_id))
            last_seen, summary = await pipe.execute()
        return last_seen is not None or bool(summary)

    async def known(self, client_id: str) -> bool:
        """Seen by the gateway, or named in the policy's ``clients``."""
        return client_id in self._policy().clients or await self.seen(client_id)

    async def _summaries(
        self,
        ids: list[str],
        seen: dict[str, int],
        by_member: dict[str, str],
        now_ms: float,
    ) -> list[ClientSummary]:
        """Summaries of ``ids`` in one round trip."""
        keys = self._keys
        policy = self._policy()
        client_keys = [k for c in ids for k in (keys.summary(c), keys.level(c), keys.detector(c))]
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._read_clients(keys=client_keys, args=[], client=pipe)
            pipe.hmget(keys.labels, ids)
            pipe.hmget(keys.shadow_levels, ids)
            rows, labels, shadows = await pipe.execute()
        out = []
        for i, client_id in enumerate(ids):
            flat, level, detector = rows[3 * i : 3 * i + 3]
            summary = dict(zip(flat[::2], flat[1::2], strict=True))
            out.append(
                _summary(
                    client_id,
                    policy,
                    now_ms=now_ms,
                    last_seen=seen.get(client_id),
                    summary=summary,
                    level=level,
                    detector=detector,
                    label=labels[i],
                    shadow=shadows[i],
                    by_member=by_member,
                )
            )
        return out

    async def _events(
        self, client: str | None, count: int, since_ms: int | None
    ) -> list[DecisionEvent]:
        """The latest ``count`` events (of ``client``; at or after ``since_ms``), newest
        last. Rows of other clients are skipped before they are parsed."""
        found: list[DecisionEvent] = []
        high: bytes | str = "+"
        low = "-" if since_ms is None else f"{max(since_ms, 0)}-0"
        scanned = 0
        while len(found) < count and scanned < self._scan_limit:
            rows: Any = await self._redis.xrevrange(
                self._keys.decisions,
                max=high,
                min=low,
                count=min(EVENT_BATCH, self._scan_limit - scanned),
            )
            if not rows:
                break
            for _entry_id, fields in rows:
                scanned += 1
                if client is not None and _field(fields, "client") != client:
                    continue
                event = _event(fields)
                if event is None or (since_ms is not None and event.ts < since_ms):
                    continue
                found.append(event)
                if len(found) >= count:
                    break
            high = "(" + _text(rows[-1][0])
        found.reverse()
        return found


def to_jsonable(value: Any) -> Any:
    """Dataclasses (nested), tuples and dicts as plain JSON-ready values.

    A dataclass becomes a dict of its fields, plus the properties its class names in
    ``_json_extra`` (``ClientSummary.flagged``). Non-finite floats become None; bytes are
    decoded as UTF-8. Raises TypeError for anything else that JSON cannot hold.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name in getattr(type(value), "_json_extra", ()):
            out[name] = to_jsonable(getattr(value, name))
        return out
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON-ready")


# -- reading stored values -------------------------------------------------------------

# A listing's reads of a batch of clients in one command: per client (KEYS in threes:
# summary, level, detector) the summary as a flat field list, then the level's and the
# detector's fields. Per-command overhead, not Redis, is what a pipeline of 3 commands per
# client spends its time on; this runs in ~5 µs per client on the server.
_READ_CLIENTS_LUA = """
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
  out[#out + 1] = redis.call('HMGET', KEYS[i + 1], 'level', 'reasons', 'expires_at_ms')
  out[#out + 1] = redis.call('HMGET', KEYS[i + 2], 'score', 'reasons', 'campaign')
end
return out
"""


def _summary(
    client_id: str,
    policy: Policy,
    *,
    now_ms: float,
    last_seen: int | None,
    summary: dict[Any, Any],
    level: list[Any],
    detector: list[Any],
    label: Any,
    shadow: Any,
    by_member: dict[str, str],
) -> ClientSummary:
    fields = _text_map(summary)
    raw_level, raw_reasons, raw_expires = (_text(v) if v is not None else None for v in level)
    try:
        enforced = decode_level(raw_level, raw_reasons or "", raw_expires or "", now_ms)
    except ValueError:
        enforced = Level.allow()
    raw_score, raw_detector_reasons, raw_campaign = (_text(v or b"") for v in detector)
    override = policy.clients.get(client_id)
    label_text = _text(label) if label else None
    return ClientSummary(
        id=client_id,
        name=(override.name or "") if override is not None else "",
        tier=fields.get("tier") or (override.tier if override is not None else None) or "",
        level=enforced.level,
        level_reasons=enforced.reasons,
        level_expires_at_ms=enforced.expires_at_ms,
        score=_float(raw_score),
        reasons=tuple(r for r in raw_detector_reasons.split(",") if r),
        shadow_level=_shadow_level(shadow) if policy.shadow else None,
        requests=_int(fields.get("requests")) or 0,
        tokens=_int(fields.get("tokens")) or 0,
        decisions={
            k.removeprefix("decision:"): _int(v) or 0
            for k, v in fields.items()
            if k.startswith("decision:")
        },
        first_ts_ms=_int(fields.get("first_ts")),
        last_ts_ms=_int(fields.get("last_ts")) or last_seen,
        label=label_text if label_text in LABELS else None,
        campaign=raw_campaign or by_member.get(client_id),
    )


def _rank(summary: ClientSummary) -> tuple[int, float, int]:
    score = summary.score if summary.score is not None else -1.0
    return (0 if summary.flagged else 1, -score, -(summary.last_ts_ms or 0))


def _shadow_level(raw: Any) -> str | None:
    if not raw:
        return None
    try:
        stored = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    level = stored.get("level") if isinstance(stored, dict) else None
    return level if isinstance(level, str) and level in LEVELS else None


def _campaigns(raw: dict[Any, Any]) -> list[Campaign]:
    """Stored campaigns, highest score first (malformed ones skipped)."""
    out = []
    for key, value in raw.items():
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict):
            continue
        out.append(
            Campaign(
                id=str(doc.get("id") or _text(key)),
                members=_strings(doc.get("members")),
                links=_strings(doc.get("links")),
                score=json_number(doc.get("score")) or 0.0,
                reasons=_strings(doc.get("reasons")),
                ts_ms=int(json_number(doc.get("ts")) or 0),
            )
        )
    out.sort(key=lambda c: (-c.score, c.id))
    return out


def _campaign_of(campaigns: list[Campaign]) -> dict[str, str]:
    """Member → id of the highest-scoring campaign it is in (``campaigns`` ranked)."""
    out: dict[str, str] = {}
    for campaign in campaigns:
        for member in campaign.members:
            out.setdefault(member, campaign.id)
    return out


def _history(raw: list[Any]) -> tuple[ScorePoint, ...]:
    points = []
    for item in raw:
        parts = _text(item).split()
        if len(parts) != 3:
            continue
        ts, score = _int(parts[0]), _float(parts[1])
        if ts is not None and score is not None:
            points.append(ScorePoint(ts, score, parts[2]))
    return tuple(points)


def _evidence(raw: str) -> tuple[Evidence, ...]:
    if not raw:
        return ()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ()
    out = []
    for item in doc if isinstance(doc, list) else ():
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str)):
            continue
        numbers = [json_number(x) for x in item[1:]]
        if any(x is None for x in numbers):
            continue
        contribution, value, benign = (float(x or 0.0) for x in numbers)
        out.append(Evidence(item[0], contribution, value, benign))
    return tuple(out)


def _event(fields: dict[Any, Any]) -> DecisionEvent | None:
    try:
        return DecisionEvent.from_fields(_text_map(fields))
    except (ValueError, TypeError):
        return None  # a malformed row (a foreign writer) is not worth failing a page for


def _field(fields: dict[Any, Any], name: str) -> str | None:
    raw = fields.get(name.encode())
    if raw is None:
        raw = fields.get(name)
    return None if raw is None else _text(raw)


def _server_ms(reply: Any) -> float:
    secs, micros = reply
    return int(secs) * 1000 + int(micros) / 1000


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _text_map(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _int(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return None


def _float(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()
