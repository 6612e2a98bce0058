"""Loading policy files: YAML in, a validated :class:`Policy` or ``file:line`` errors out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.policy import Policy, PolicyReferenceError


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in a policy file, located at a 1-based line."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used; ``issues`` says every reason."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = tuple(issues)


def _node_line(node: yaml.Node, loc: Sequence[str | int]) -> int:
    """Line of the deepest YAML node that ``loc`` (a pydantic error location) reaches."""
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if str(key_node.value) == str(part):
                    child = value_node
                    line = key_node.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _duplicate_key_issues(name: str, node: yaml.Node) -> list[PolicyIssue]:
    issues: list[PolicyIssue] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                issues.append(
                    PolicyIssue(name, key_node.start_mark.line + 1, f"repeated key {key!r}")
                )
            seen.add(key)
            issues.extend(_duplicate_key_issues(name, value_node))
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            issues.extend(_duplicate_key_issues(name, item))
    return issues


def _format_loc(loc: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def parse_policy(text: str, name: str = "<policy>") -> Policy:
    """Validate policy text; raise :class:`PolicyError` naming every problem and its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError([PolicyIssue(name, line, f"invalid YAML: {problem}")]) from None
    if root is None:
        return Policy()
    duplicates = _duplicate_key_issues(name, root)
    if duplicates:
        raise PolicyError(duplicates)
    data: Any = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PolicyError([PolicyIssue(name, 1, "a policy must be a mapping of settings")])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False):
            loc: tuple[str | int, ...] = tuple(err["loc"])
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, PolicyReferenceError):
                loc = cause.loc
                message = str(cause)
            else:
                message = err["msg"]
                if err["type"] == "extra_forbidden":
                    message = "unknown setting"
            where = _format_loc(loc)
            issues.append(
                PolicyIssue(
                    name, _node_line(root, loc), f"{where}: {message}" if where else message
                )
            )
        raise PolicyError(issues) from None


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([PolicyIssue(str(path), 1, f"cannot read: {exc}")]) from None
    return parse_policy(text, str(path))


def policy_json_schema() -> str:
    """The policy's JSON Schema, for editors."""
    return json.dumps(Policy.model_json_schema(), indent=2, sort_keys=True)
