"""The record step: turn a finished :class:`Exchange` into its decision event and settlement."""

from __future__ import annotations

import time
from typing import Any

from detectors.features import request_features
from gateway.exchange import Exchange
from gateway.identity import ANONYMOUS
from gateway.params import request_params
from gateway.samples import prompt_sample
from gateway.store.decision_log import Settlement
from gateway.store.events import DecisionEvent

__all__ = ["decision_event", "request_params", "settlement_for"]


def settlement_for(ex: Exchange) -> Settlement | None:
    """Refund or charge the difference between reserved and used tokens; release the lease."""
    if not ex.charges and not ex.lease_id:
        return None
    used: int
    if ex.decision != "admitted" or ex.upstream_status is None or ex.upstream_status >= 400:
        used = 0  # nothing was generated: give the tokens back
    else:
        prompt = ex.prompt_tokens if ex.prompt_tokens is not None else ex.prompt_tokens_est
        used = prompt + ex.completion_tokens
    delta = used - ex.reserved_tokens
    adjustments = tuple(
        (charge, float(delta)) for charge in ex.charges if "tokens" in charge.rate.name and delta
    )
    if not adjustments and not ex.lease_id:
        return None
    return Settlement(
        adjustments=adjustments,
        inflight_key=ex.inflight_key,
        lease_id=ex.lease_id,
        throttle_factor=ex.admission.throttle_factor if ex.admission else 1.0,
    )


def decision_event(ex: Exchange) -> DecisionEvent:
    client = ex.client
    limits: dict[str, Any] = {}
    if ex.admission is not None:
        limits = {s.name: round(s.remaining, 3) for s in ex.admission.states}
    return DecisionEvent(
        ts=ex.received_at_ms,
        id=ex.id,
        client=client.id if client else ANONYMOUS,
        tier=client.tier if client else "",
        route=ex.route.path,
        method=ex.method,
        decision=ex.decision,
        status=ex.status,
        level=ex.level,
        reasons=tuple(ex.reasons),
        modifications=tuple(ex.modifications),
        shadow=ex.policy.shadow,
        upstream_status=ex.upstream_status,
        latency_ms=round((time.perf_counter() - ex.started) * 1000, 3),
        upstream_latency_ms=ex.upstream_latency_ms,
        prompt_tokens=ex.prompt_tokens
        if ex.prompt_tokens is not None
        else (ex.prompt_tokens_est or None),
        completion_tokens=ex.completion_tokens,
        reserved_tokens=ex.reserved_tokens,
        stream=ex.stream,
        stream_cut=ex.stream_cut,
        params=ex.params,
        limits=limits,
        client_ip=(client.client_ip or "") if client else "",
        tls_fingerprint=(client.tls_fingerprint or "") if client else "",
        org_id=(client.org_id or "") if client else "",
        features=request_features(ex.route.kind, ex.body).to_json() if ex.body else "",
        prompt_sample=prompt_sample(ex.route.kind, ex.body)
        if ex.body and ex.policy.store.retention.keep_prompt_samples
        else "",
    )
