"""Canonical JSON and content ids: the bytes stemma writes and hashes, with no I/O.

A record's digest and a manifest's id are computed here, so the records need not import the
store (which reads and writes files) to know their own identity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical_json(obj: Any) -> str:
    """Pretty, sorted, newline-terminated JSON: stable bytes for git diffs and hashing."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def digest(obj: Any) -> str:
    """`sha256:` over the compact canonical JSON of `obj`."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def content_id(manifest: Mapping[str, Any]) -> str:
    """A manifest's id: the digest of everything but its `id` and `run` blocks."""
    return digest({k: v for k, v in manifest.items() if k not in ("id", "run")})
