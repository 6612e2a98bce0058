"""Live mode: replay a scenario's clients against a gateway over HTTP, time-compressed.

Each synthetic client gets a real API key (``sim-<family>-<n>``) and sends its requests
with the trusted edge headers (``x-real-ip``, ``x-ja4``, ``x-org-id``). Simulated time runs
``speed`` times faster than real time; the run stops when every request is sent and
answered, or after ``duration_s`` real seconds, whichever comes first. Loopback only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from sim.traffic.client import SimClient

CONNECTION_ERROR = 0  # the status recorded when no HTTP answer came back


@dataclass(frozen=True, slots=True)
class LiveKey:
    """One synthetic client as the gateway sees it: its API key and its label."""

    key: str
    family: str
    attack: bool
    attacker_share: float
    campaign: str | None


@dataclass(frozen=True, slots=True)
class Send:
    """One request to send: when (real seconds from the start), who, where, what."""

    at: float
    key: int
    route: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(slots=True)
class LiveResult:
    keys: list[LiveKey]
    planned: int
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    finished: bool = False

    @property
    def sent(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())


def check_loopback(url: str) -> str:
    """The base URL without a trailing slash; refuses anything that is not loopback."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{host!r} is not a loopback address: sim run only targets loopback")
    return url.rstrip("/")


def fit_body(body: dict[str, Any], vocab_size: int, max_tokens: int) -> dict[str, Any]:
    """The body within an upstream's limits: logit_bias ids folded into its vocabulary."""
    out = dict(body)
    bias = out.get("logit_bias")
    if isinstance(bias, dict) and vocab_size > 0:
        out["logit_bias"] = {str(int(k) % vocab_size): v for k, v in bias.items()}
    if isinstance(out.get("max_tokens"), int) and max_tokens > 0:
        out["max_tokens"] = min(out["max_tokens"], max_tokens)
    return out


def keys_for(clients: list[SimClient]) -> list[LiveKey]:
    """One API key per client, ``sim-<family>-<n>`` (n counts from 1 within a family)."""
    per_family: Counter[str] = Counter()
    keys = []
    for c in clients:
        per_family[c.family] += 1
        keys.append(
            LiveKey(f"sim-{c.family}-{per_family[c.family]}", c.family, c.attack,
                    c.attacker_share, c.campaign)
        )  # fmt: skip
    return keys


def plan(
    clients: list[SimClient], speed: float, vocab_size: int = 2000, max_tokens: int = 2048
) -> tuple[list[LiveKey], list[Send]]:
    """Keys and the time-ordered sends (first attempts only: the gateway makes its own 429s)."""
    keys = keys_for(clients)
    sends: list[Send] = []
    starts = [c.records[0].ts_ms for c in clients if c.records]
    t0 = min(starts) if starts else 0
    for index, (c, key) in enumerate(zip(clients, keys, strict=True)):
        if c.bodies is None:
            raise ValueError("live mode needs clients generated with keep_bodies=True")
        seen: set[int] = set()
        for rec, body in zip(c.records, c.bodies, strict=True):
            if id(body) in seen:  # a simulated retry of the same request
                continue
            seen.add(id(body))
            headers = {"authorization": f"Bearer {key.key}"}
            for name, value in (
                ("x-real-ip", rec.client_ip),
                ("x-ja4", rec.tls_fingerprint),
                ("x-org-id", rec.org_id),
            ):
                if value:
                    headers[name] = value
            sends.append(
                Send(
                    (rec.ts_ms - t0) / 1000.0 / speed,
                    index,
                    rec.route,
                    fit_body(body, vocab_size, max_tokens),
                    headers,
                )
            )
    sends.sort(key=lambda s: s.at)
    return keys, sends


async def _send(session: aiohttp.ClientSession, base: str, s: Send) -> int:
    try:
        async with session.post(base + s.route, json=s.body, headers=s.headers) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return CONNECTION_ERROR


async def run(
    target: str,
    clients: list[SimClient],
    *,
    speed: float = 100.0,
    duration_s: float = 600.0,
    concurrency: int = 8,
    vocab_size: int = 2000,
    max_tokens: int = 2048,
) -> LiveResult:
    """Replay ``clients`` against ``target``; returns statuses per family."""
    base = check_loopback(target)
    keys, sends = plan(clients, speed, vocab_size, max_tokens)
    result = LiveResult(keys, len(sends), {k.family: Counter() for k in keys})
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    deadline = started + duration_s
    timeout = aiohttp.ClientTimeout(total=30)

    async def one(session: aiohttp.ClientSession, s: Send) -> None:
        try:
            status = await _send(session, base, s)
            result.statuses[keys[s.key].family][status] += 1
        finally:
            gate.release()

    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)
    ) as session:
        tasks: set[asyncio.Task[None]] = set()
        try:
            for s in sends:
                due = started + s.at
                now = time.monotonic()
                if due >= deadline or now >= deadline:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                await asyncio.wait_for(gate.acquire(), timeout=max(0.001, deadline - now))
                task = asyncio.create_task(one(session, s))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                result.finished = True
            if tasks:
                left = max(0.001, deadline - time.monotonic())
                _, pending = await asyncio.wait(tasks, timeout=left)
                if pending:
                    result.finished = False
        except TimeoutError:
            result.finished = False
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
    result.elapsed_s = time.monotonic() - started
    return result
