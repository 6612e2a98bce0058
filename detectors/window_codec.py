"""The compact form a client's window is persisted in (one list item per request).

The worker keeps each window in memory and in a Redis list, so that a restarted worker,
or a peer in the same consumer group, can resume it; this is that list's item format.
"""

from __future__ import annotations

import orjson

from detectors.schema import RequestFeatures, RequestRecord


def pack(record: RequestRecord) -> bytes:
    """A record as stored in a client's window list (no client id: the key names it)."""
    f = record.features
    return orjson.dumps(
        [
            record.ts_ms,
            record.route,
            record.status,
            record.decision,
            record.prompt_tokens,
            record.completion_tokens,
            record.params,
            [
                f.prompt_chars,
                f.prompt_words,
                f.messages,
                f.user_turns,
                f.system_chars,
                int(f.reasoning_marker),
                f.sketch,
                f.template,
            ],
            record.client_ip,
            record.tls_fingerprint,
            record.org_id,
        ]
    )


def unpack(client: str, data: bytes) -> RequestRecord:
    ts, route, status, decision, pt, ct, params, feats, ip, tls, org = orjson.loads(data)
    return RequestRecord(
        ts_ms=ts,
        client=client,
        route=route,
        status=status,
        decision=decision,
        prompt_tokens=pt,
        completion_tokens=ct,
        params=params,
        features=RequestFeatures(
            prompt_chars=feats[0],
            prompt_words=feats[1],
            messages=feats[2],
            user_turns=feats[3],
            system_chars=feats[4],
            reasoning_marker=bool(feats[5]),
            sketch=feats[6],
            template=feats[7],
        ),
        client_ip=ip,
        tls_fingerprint=tls,
        org_id=org,
    )
