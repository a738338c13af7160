"""JSON Pointers (RFC 6901): how every error and diff names a place in a document."""

from __future__ import annotations

from collections.abc import Iterable


def escape(key: str | int) -> str:
    """One reference token: `~` and `/` escaped as the RFC says (`~0`, `~1`)."""
    return str(key).replace("~", "~0").replace("/", "~1")


def pointer(parts: Iterable[str | int]) -> str:
    """The pointer to `parts` below the root; the root itself is `/`."""
    return "".join("/" + escape(part) for part in parts) or "/"
