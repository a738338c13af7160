"""File boundary helpers: canonical JSON, content ids, hashes and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


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


def file_hashes(path: Path) -> dict[str, Any]:
    """md5 (as DVC records it), sha256 and size of a file, read once."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return {"md5": md5.hexdigest(), "sha256": "sha256:" + sha.hexdigest(), "bytes": size}


def write_atomic(path: Path, data: bytes | str, sync: bool = True) -> None:
    """Write `data` to a temp file in the same folder, fsync (unless `sync` is false: a
    cache that is checked when read), then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    import tempfile  # imported where used: most commands write nothing

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp makes the file private to its owner
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """The permissions of the file `path` replaces, or those a new file gets (umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)  # read it by setting it; put back at once
        os.umask(umask)
        return 0o666 & ~umask


def write_json(path: Path, obj: Any) -> None:
    """Write canonical JSON atomically."""
    write_atomic(path, canonical_json(obj))


def read_json(path: Path) -> Any:
    """Read JSON, raising `ParseError` naming the file and line on bad syntax."""
    from .errors import ParseError

    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ParseError(str(path), f"invalid JSON: {exc.msg}", line=exc.lineno) from None
