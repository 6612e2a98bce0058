"""Prompt samples: the latest user message, redacted and cut, and only when the policy asks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from gateway.keys import KeySpace
from gateway.samples import MAX_CHARS, prompt_sample, redact
from tests.gateway.conftest import GatewayFactory, wait_for_events

AUTH = {"Authorization": "Bearer test-key-1"}


def test_redaction_removes_what_a_log_should_not_hold() -> None:
    text = (
        "mail bob.smith@example.com or call +1 415 555 0199; key sk-abcdefghijklmnop1234, "
        "host 10.0.0.12, in 2024"
    )
    assert redact(text) == "mail [email] or call [number]; key [key], host [ip], in 2024"


def test_sample_is_the_latest_user_message() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "<script>x</script> second"}]},
        ]
    }
    assert prompt_sample("openai-chat", body) == "<script>x</script> second"  # escaped later
    assert prompt_sample("openai-completions", {"prompt": "plain"}) == "plain"
    assert prompt_sample("openai-chat", {"messages": []}) == ""


def test_long_samples_are_cut_after_redaction() -> None:
    sample = prompt_sample("openai-completions", {"prompt": "word " * 500 + "a@b.co"})
    assert len(sample) == MAX_CHARS and sample.endswith("…")
    near_cut = "x" * (MAX_CHARS - 10) + " carol@example.org"
    assert "carol" not in prompt_sample("openai-completions", {"prompt": near_cut})


@pytest.mark.timeout(20)
def test_redaction_takes_linear_time_on_long_tokens() -> None:
    """A hang guard: nested quantifiers took 2.5 s on one such prompt (cubic backtracking),
    and the redaction runs on the request loop."""
    for n in range(50):
        tail = "é" if n % 2 else "!"
        assert prompt_sample("openai-chat", {"prompt": "1" * 600 + "a" * 599 + tail})


def test_the_bound_before_redaction_does_not_split_an_address() -> None:
    keys = " ".join("k3y" + "x" * 391 for _ in range(3))  # redacted to short "[key]"s
    prompt = f"{keys} call me at alice.jones@example.org"
    assert prompt.index("alice") < MAX_CHARS * 4 < prompt.index("@")  # the bound splits it
    sample = prompt_sample("openai-completions", {"prompt": prompt})
    assert sample.startswith("[key] [key] [key] call me at") and "alice" not in sample


def test_the_gateway_keeps_samples_only_when_the_policy_says_so(
    gateway: GatewayFactory, scripted_upstream: Any, redis_sync: redis.Redis, keyspace: KeySpace
) -> None:
    url, _ = scripted_upstream
    body = {"model": "m", "messages": [{"role": "user", "content": "<b>hi</b> from x@y.org"}]}
    with gateway(url) as gw:
        assert httpx.post(f"{gw}/v1/chat/completions", json=body, headers=AUTH).status_code == 200
        (event,) = wait_for_events(redis_sync, keyspace, 1)
    assert event["prompt_sample"] == ""
    keep = {"store": {"retention": {"keep_prompt_samples": True}}}
    with gateway(url, policy=keep) as gw:
        assert httpx.post(f"{gw}/v1/chat/completions", json=body, headers=AUTH).status_code == 200
        events = wait_for_events(redis_sync, keyspace, 2)
    assert events[-1]["prompt_sample"] == "<b>hi</b> from [email]"
