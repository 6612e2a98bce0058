"""The request parameters kept in the decision log: what was asked, never the prompt."""

from __future__ import annotations

from typing import Any

_SCALAR_PARAMS = (
    "model",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "top_logprobs",
)


def request_params(body: dict[str, Any] | None) -> dict[str, Any]:
    """The request's parameters that matter for review and detection (never the prompt)."""
    if body is None:
        return {}
    params: dict[str, Any] = {}
    for name in _SCALAR_PARAMS:
        value = body.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            params[name] = value[:128] if isinstance(value, str) else value
    logprobs = body.get("logprobs")
    if logprobs is not None and isinstance(logprobs, bool | int):
        params["logprobs"] = logprobs
    bias = body.get("logit_bias")
    if isinstance(bias, dict) and bias:
        params["logit_bias_tokens"] = len(bias)
    if "seed" in body:
        params["seed"] = True
    if body.get("stream") is True:
        params["stream"] = True
    messages = body.get("messages")
    if isinstance(messages, list):
        params["messages"] = len(messages)
    return params
