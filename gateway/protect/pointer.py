"""JSON pointers (RFC 6901) into parsed JSON: find the container that holds a value."""

from __future__ import annotations

from typing import Any


def locate(doc: Any, pointer: str) -> tuple[dict[str, Any] | list[Any], str | int] | None:
    """The container and key/index that ``pointer`` names in ``doc``, or None when the
    path does not exist (or names the document itself, which cannot be replaced in place).
    """
    if not pointer.startswith("/"):
        return None
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
    node = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict):
            if part not in node:
                return None
            if last:
                return node, part
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or (len(part) > 1 and part[0] == "0"):
                return None
            index = int(part)
            if index >= len(node):
                return None
            if last:
                return node, index
            node = node[index]
        else:
            return None
    return None


def get(location: tuple[dict[str, Any] | list[Any], str | int]) -> Any:
    """The value at a location found by :func:`locate`."""
    container, key = location
    return container[str(key)] if isinstance(container, dict) else container[int(key)]


def put(location: tuple[dict[str, Any] | list[Any], str | int], value: Any) -> None:
    """Replace the value at a location found by :func:`locate`."""
    container, key = location
    if isinstance(container, dict):
        container[str(key)] = value
    else:
        container[int(key)] = value
