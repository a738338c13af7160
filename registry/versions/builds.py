"""Every build in the registry's git history, in lineage order, for the exports.

A build is one version of a dataset or model: a distinct manifest id, first recorded by some
commit (a version restored later is the same build). The order is `dag.build_order` over the
builds: every build after the builds it read (its source model's version, its datasets'
versions), ties broken by key: datasets first, then older commits, then name. OpenLineage and
MLflow both replay history in this order, so an input or a parent always exists before it is
linked to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from stemma.registry.errors import GitError, StemmaError
from stemma.registry.rules.dag import build_order
from stemma.registry.rules.layout import SPEC_FILE
from stemma.registry.rules.parents import recorded_parents
from stemma.registry.store.handle import Registry
from stemma.registry.store.tree import git
from stemma.registry.versions.history import (
    all_dataset_history,
    all_history,
    dataset_manifest_at,
    git_paths,
    manifest_at,
)


@dataclass(frozen=True)
class Build:
    """One build: what it built, its manifest, and where its spec lives in git."""

    kind: str  # "dataset" or "model"
    name: str
    id: str
    commit: str  # the commit that first recorded this manifest id
    spec_path: str  # the spec, relative to the git repository's top
    raw: dict[str, Any]  # the schema-valid manifest


def since_commits(reg: Registry, rev: str) -> set[str]:
    """Commits reachable from HEAD but not from `rev`."""
    top = git_paths(reg).top
    if rev.startswith("-"):
        raise StemmaError(f"invalid revision {rev!r} for --since")
    git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    return set(git(top, "rev-list", f"{rev}..HEAD").decode().split())


def _reads(raw: dict[str, Any]) -> list[str]:
    """The manifest ids a model build read: its source's version and its datasets'."""
    read = [str(i) for _, i in recorded_parents(raw)]  # a merge read every parent
    return read + [str(ref.get("id")) for ref in (raw.get("datasets") or {}).values()]


def builds(
    reg: Registry, since: str | None = None, kinds: tuple[str, ...] = ("dataset", "model")
) -> list[Build]:
    """Every build reachable from HEAD in lineage order (those committed after `since` only)."""
    paths = git_paths(reg)
    keep = since_commits(reg, since) if since is not None else None
    try:
        commits = git(paths.top, "rev-list", "--topo-order", "--reverse", "HEAD").decode().split()
    except GitError:
        commits = []  # no commit yet: no history, no builds
    age = {c: i for i, c in enumerate(commits)}  # oldest first, parents before children
    found: dict[str, tuple[str, str, str]] = {}  # key -> kind, name, commit
    by_id: dict[str, str] = {}
    history = {"dataset": all_dataset_history, "model": all_history}
    for kind in kinds:
        for v in reversed(history[kind](reg)):  # oldest first
            if v.id in by_id or (keep is not None and v.commit not in keep):
                continue  # a version restored later is the same build, not a new run
            key = f"{0 if kind == 'dataset' else 1}:{age.get(v.commit, len(age)):09d}:{v.name}"
            found[key] = (kind, v.name, v.commit)
            by_id[v.id] = key
    docs: dict[str, dict[str, Any]] = {}
    deps: dict[str, list[str]] = {}
    for key, (kind, name, commit) in found.items():
        read = dataset_manifest_at if kind == "dataset" else manifest_at
        docs[key] = dict(read(reg, name, commit).raw)
        deps[key] = [by_id[i] for i in _reads(docs[key]) if i in by_id] if kind == "model" else []
    folder = PurePosixPath(paths.prefix).parent
    out = []
    for key in build_order(deps, strict=False):
        kind, name, commit = found[key]
        spec = str(folder / f"{kind}s" / name / SPEC_FILE)
        out.append(Build(kind, name, str(docs[key]["id"]), commit, spec, docs[key]))
    return out
