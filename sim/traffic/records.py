"""Drafts → request records, as the gateway would have logged them.

Applies the client's requests-per-minute limit (GCRA, burst = the limit, like the
gateway): a request over the limit is logged as a 429 and retried by the client after the
retry-after, up to three times. A small share of admitted requests fail upstream.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from detectors.features import request_features
from detectors.schema import RequestRecord
from gateway.record import request_params
from sim.traffic.client import COMPLETIONS_ROUTE, Draft, Identity
from sim.traffic.timing import START_MS

Rng = np.random.Generator
_MAX_RETRIES = 3
_UPSTREAM_ERROR_RATE = 0.002


def kind_of(route: str) -> str:
    return "openai-completions" if route == COMPLETIONS_ROUTE else "openai-chat"


def build(
    rng: Rng, client: str, drafts: list[Draft], who: Identity
) -> tuple[list[RequestRecord], list[Draft]]:
    """The records of ``drafts`` (time-ordered) and the drafts behind each record."""
    interval = 60.0 / who.rpm
    tolerance = 60.0 - interval
    tat = 0.0
    queue: list[tuple[float, int, int, Draft]] = [(d.t, i, 0, d) for i, d in enumerate(drafts)]
    heapq.heapify(queue)
    seq = len(drafts)
    records: list[RequestRecord] = []
    sent: list[Draft] = []
    feature_cache: dict[int, Any] = {}
    while queue:
        t, _, attempt, d = heapq.heappop(queue)
        key = id(d.body)
        features = feature_cache.get(key)
        if features is None:
            features = feature_cache[key] = request_features(kind_of(d.route), d.body)
        prompt_tokens = (features.prompt_chars + features.system_chars) // 4 + 3 * features.messages
        ip = (
            who.ips[0]
            if len(who.ips) == 1 or rng.random() < 0.7
            else who.ips[int(rng.integers(len(who.ips)))]
        )
        common: dict[str, Any] = {
            "ts_ms": START_MS + int(t * 1000),
            "client": client,
            "route": d.route,
            "params": request_params(d.body),
            "features": features,
            "client_ip": ip,
            "tls_fingerprint": who.ja4,
            "org_id": who.org_id,
        }
        if t < tat - tolerance:
            records.append(
                RequestRecord(
                    status=429, decision="rejected", prompt_tokens=prompt_tokens, **common
                )
            )
            sent.append(d)
            if attempt < _MAX_RETRIES:
                retry = (tat - tolerance - t) + float(rng.uniform(0.5, 5.0)) * (attempt + 1)
                heapq.heappush(queue, (t + retry, seq, attempt + 1, d))
                seq += 1
            continue
        tat = max(tat, t) + interval
        if rng.random() < _UPSTREAM_ERROR_RATE:
            records.append(
                RequestRecord(status=502, decision="error", prompt_tokens=prompt_tokens, **common)
            )
        else:
            records.append(
                RequestRecord(
                    status=200,
                    decision="admitted",
                    prompt_tokens=prompt_tokens,
                    completion_tokens=d.completion_tokens,
                    **common,
                )
            )
        sent.append(d)
    return records, sent
