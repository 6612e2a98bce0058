from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.policy import Policy
from gateway.policy_file import PolicyError, load_policy, parse_policy, policy_json_schema

ROOT = Path(__file__).resolve().parents[2]


def test_default_yaml_is_the_builtin_default() -> None:
    assert load_policy(ROOT / "policies" / "default.yaml") == Policy()


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_policies_are_valid(path: Path) -> None:
    load_policy(path)


def _issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    return [str(i) for i in info.value.issues]


def test_every_error_named_with_its_line() -> None:
    text = (
        "version: 1\n"
        "shadow: maybe\n"
        "tiers:\n"
        "  default:\n"
        "    limits:\n"
        "      requests_per_minute: -3\n"
        "      tokns_per_minute: 5\n"
    )
    issues = _issues(text)
    assert "p.yaml:2: shadow: Input should be a valid boolean, unable to interpret input" in issues
    assert any(i.startswith("p.yaml:6: tiers.default.limits.requests_per_minute") for i in issues)
    assert "p.yaml:7: tiers.default.limits.tokns_per_minute: unknown setting" in issues


def test_yaml_syntax_error_and_duplicates_and_references() -> None:
    assert _issues("a: [1,\n b")[0].startswith("p.yaml:2: invalid YAML")
    assert _issues("shadow: true\nshadow: false\n") == ["p.yaml:2: repeated key 'shadow'"]
    assert _issues("identity:\n  default_tier: gold\n") == [
        "p.yaml:2: identity.default_tier: default_tier 'gold' is not one of the tiers"
    ]
    assert _issues("- 1\n- 2\n") == ["p.yaml:1: a policy must be a mapping of settings"]
    assert any("not a key hash" in i for i in _issues("clients:\n  bob: {}\n"))


def test_empty_file_is_default_and_policy_is_frozen() -> None:
    policy = parse_policy("")
    assert policy == Policy()
    with pytest.raises(Exception, match="frozen"):
        policy.shadow = True  # type: ignore[misc]


def test_schema_exports() -> None:
    schema = json.loads(policy_json_schema())
    assert schema["additionalProperties"] is False
    assert "tiers" in schema["properties"]
