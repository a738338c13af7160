"""A model's versions from git history: the distinct manifest ids its manifest file went through.

History is read with one `git log --raw` (which commits touched which manifest, and the new
blob of each) and one `git cat-file --batch` for every distinct blob, so a log over hundreds of
commits costs two git processes, not one per commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stemma.registry.errors import ConsistencyError, DatasetNotFound, GitError, ModelNotFound
from stemma.registry.records.core import (
    DATASET_MANIFEST,
    MODEL_MANIFEST,
    Manifest,
)
from stemma.registry.rules.layout import DATASETS_DIR, MANIFEST_FILE, MODELS_DIR
from stemma.registry.store.documents import parse_json_document
from stemma.registry.store.handle import Registry
from stemma.registry.store.tree import git

_NULL_SHA = "0" * 40
_RECORD, _FIELD = "\x1e", "\x1f"
_LOG_FORMAT = "%x1e%H%x1f%cI%x1f%an"


@dataclass(frozen=True)
class Version:
    """One version of a model: a manifest id and the commit that introduced it."""

    name: str
    id: str
    commit: str
    date: str  # ISO 8601 committer date
    author: str
    source_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with stable keys."""
        return {
            "name": self.name,
            "id": self.id,
            "commit": self.commit,
            "date": self.date,
            "author": self.author,
            "source_id": self.source_id,
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True)
class GitPaths:
    """Where the registry sits inside its git repository."""

    top: Path  # the git work tree's top folder
    prefix: str  # the registry's models folder, relative to `top`

    def manifest(self, name: str) -> str:
        """Top-relative path of a model's manifest."""
        return f"{self.prefix}/{name}/{MANIFEST_FILE}"


def git_paths(reg: Registry) -> GitPaths:
    """The git top folder of `reg` and its models folder relative to that top."""
    top = Path(git(reg.repo_root, "rev-parse", "--show-toplevel").decode().strip()).resolve()
    models = (reg.repo_root / reg.rel(MODELS_DIR)).resolve()
    try:
        rel = models.relative_to(top)
    except ValueError:
        raise GitError(f"{models} is not inside the git repository at {top}") from None
    return GitPaths(top, str(PurePosixPath(rel.as_posix())))


def read_blobs(top: Path, objects: list[str]) -> dict[str, bytes | None]:
    """Read many git objects (`sha` or `rev:path`) with one `git cat-file --batch`."""
    wanted = list(dict.fromkeys(objects))
    if not wanted:
        return {}
    out = git(top, "cat-file", "--batch", input_="".join(o + "\n" for o in wanted).encode())
    blobs: dict[str, bytes | None] = {}
    pos = 0
    for obj in wanted:
        header_end = out.index(b"\n", pos)
        header = out[pos:header_end].rsplit(b" ", 2)
        pos = header_end + 1
        if header[-1] in (b"missing", b"ambiguous"):
            blobs[obj] = None  # no file at that path (or no such revision)
            continue
        size = int(header[-1])
        # a tree or commit at that path is not a manifest, but its body must be skipped
        blobs[obj] = out[pos : pos + size] if header[-2] == b"blob" else None
        pos += size + 1
    return blobs


def manifest_at(reg: Registry, name: str, commit: str, label: str = "") -> Manifest:
    """The schema-valid manifest of model `name` at `commit`; raises when absent or invalid."""
    paths = git_paths(reg)
    path = paths.manifest(name)
    where = label or commit[:12]
    blob = read_blobs(paths.top, [f"{commit}:{path}"])[f"{commit}:{path}"]
    if blob is None:
        raise ModelNotFound(name, hint=f" with a manifest at revision {where}")
    display = f"{path} at {where}"
    doc = parse_json_document(blob.decode(errors="replace"), MODEL_MANIFEST, display)
    if doc["name"] != name:
        raise ConsistencyError(f"{display}: manifest names model {doc['name']!r}, not {name!r}")
    return Manifest(name, reg.rel(MODELS_DIR, name, MANIFEST_FILE), doc)


@dataclass(frozen=True)
class _Change:
    commit: str
    date: str
    author: str
    path: str
    blob: str | None  # None: the manifest was deleted in this commit


def _log(top: Path, pathspec: str) -> list[_Change]:
    """Every change to files matching `pathspec` reachable from HEAD, newest first."""
    try:
        out = git(
            top,
            "log",
            f"--format={_LOG_FORMAT}",
            "--raw",
            "--no-abbrev",
            "--no-renames",
            "-z",
            "--diff-merges=first-parent",
            "HEAD",
            "--",
            pathspec,
        )
    except GitError:
        if not _has_head(top):
            return []  # a repository without commits has no history yet
        raise
    changes: list[_Change] = []
    for record in out.decode(errors="replace").split(_RECORD):
        if not record:
            continue
        header, _, raw = record.partition("\0")
        commit, date, author = header.split(_FIELD, 2)
        parts = raw.lstrip("\n").split("\0")
        for meta, path in zip(parts[0::2], parts[1::2], strict=False):
            fields = meta.split()
            if len(fields) < 5:
                continue
            blob = fields[3]
            changes.append(_Change(commit, date, author, path, None if blob == _NULL_SHA else blob))
    return changes


def _has_head(top: Path) -> bool:
    try:
        git(top, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    except GitError:
        return False
    return True


def parse_log_manifest(blob: bytes | None) -> dict[str, Any] | None:
    """A manifest document good enough for the log (an id at least), or None."""
    if blob is None:
        return None
    try:
        doc = json.loads(blob)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep for the parser
        return None
    if not isinstance(doc, dict) or not str(doc.get("id", "")).startswith("sha256:"):
        return None
    return doc


def _versions(top: Path, changes: list[_Change]) -> list[Version]:
    """Group changes into versions per manifest path: each run of one id is one version."""
    blobs = read_blobs(top, [c.blob for c in changes if c.blob is not None])
    current: dict[str, str | None] = {}
    found: list[Version] = []
    for change in reversed(changes):  # oldest first, so each run starts at its first commit
        doc = parse_log_manifest(blobs.get(change.blob)) if change.blob is not None else None
        if change.blob is None:
            current[change.path] = None  # deleted: a later re-add starts a new version
            continue
        if doc is None:
            continue  # an unreadable manifest is not a version and does not end one
        if current.get(change.path) == doc["id"]:
            continue
        current[change.path] = str(doc["id"])
        src = doc.get("source")
        metrics = doc.get("metrics")
        found.append(
            Version(
                name=PurePosixPath(change.path).parent.name,
                id=str(doc["id"]),
                commit=change.commit,
                date=change.date,
                author=change.author,
                source_id=str(src["id"]) if isinstance(src, dict) and "id" in src else None,
                metrics={
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                if isinstance(metrics, dict)
                else {},
            )
        )
    found.reverse()
    return found


def history(reg: Registry, name: str) -> list[Version]:
    """The versions of model `name` reachable from HEAD, newest first."""
    paths = git_paths(reg)
    versions = _versions(paths.top, _log(paths.top, paths.manifest(name)))
    if not versions and not reg.has_model(name):
        raise ModelNotFound(name, hint=Registry._hint(name, reg.model_names()))
    return versions


def all_history(reg: Registry) -> list[Version]:
    """The versions of every model reachable from HEAD, newest first."""
    paths = git_paths(reg)
    spec = f":(glob){paths.prefix}/*/{MANIFEST_FILE}"
    return _versions(paths.top, _log(paths.top, spec))


def all_dataset_history(reg: Registry) -> list[Version]:
    """The versions of every dataset reachable from HEAD, newest first (no source, no metrics)."""
    paths = git_paths(reg)
    datasets = PurePosixPath(paths.prefix).parent / DATASETS_DIR
    spec = f":(glob){datasets}/*/{MANIFEST_FILE}"
    return _versions(paths.top, _log(paths.top, spec))


def dataset_manifest_at(reg: Registry, name: str, commit: str) -> Manifest:
    """The schema-valid manifest of dataset `name` at `commit`; raises when absent or invalid."""
    paths = git_paths(reg)
    path = str(PurePosixPath(paths.prefix).parent / DATASETS_DIR / name / MANIFEST_FILE)
    blob = read_blobs(paths.top, [f"{commit}:{path}"])[f"{commit}:{path}"]
    if blob is None:
        raise DatasetNotFound(name, hint=f" with a manifest at revision {commit[:12]}")
    display = f"{path} at {commit[:12]}"
    doc = parse_json_document(blob.decode(errors="replace"), DATASET_MANIFEST, display)
    if doc["name"] != name:
        raise ConsistencyError(f"{display}: manifest names dataset {doc['name']!r}, not {name!r}")
    return Manifest(name, reg.rel(DATASETS_DIR, name, MANIFEST_FILE), doc)
