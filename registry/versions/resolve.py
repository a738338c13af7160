"""Versions like git: resolve `NAME@REF`, list a model's versions, restore a version's weights.

History lives in `history`, tags and the REF grammar in `tags`; this module re-exports them so
callers import every version operation from one place, but for the comparison of two versions
(`diffs`), which reads the typed manifest records that `stemma ls` (an importer of this
module) never loads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stemma.registry.errors import ModelNotFound, StemmaError
from stemma.registry.records.core import Manifest
from stemma.registry.rules.layout import MODELS_DIR
from stemma.registry.rules.naming import parse_ref
from stemma.registry.store.files import CHUNK, file_hashes
from stemma.registry.store.handle import Registry
from stemma.registry.versions.gtostate import TagState, tag_state
from stemma.registry.versions.history import (
    Version,
    all_history,
    git_paths,
    history,
    manifest_at,
    parse_log_manifest,
    read_blobs,
)
from stemma.registry.versions.tags import (
    SkippedTag,
    TagInfo,
    TagScan,
    current_stages,
    deprecated_models,
    list_tags,
    locate,
    promote,
    read_tags,
    state,
    tag,
)

__all__ = [
    "LogEntry",
    "SkippedTag",
    "TagInfo",
    "TagScan",
    "TagState",
    "Version",
    "all_history",
    "checkout",
    "current_stages",
    "deprecated_models",
    "history",
    "list_tags",
    "log",
    "promote",
    "read_tags",
    "resolve",
    "state",
    "statuses",
    "tag",
]


def resolve(reg: Registry, text: str) -> Manifest:
    """The manifest that `NAME` (working tree) or `NAME@REF` (a version) names."""
    ref = parse_ref(text)
    commit = None if ref.ref is None else locate(reg, ref.name, ref.ref)
    if commit is None:
        return _working_manifest(reg, ref.name)
    label = commit[:12] if commit.startswith(str(ref.ref)) else f"{ref.ref} ({commit[:12]})"
    return manifest_at(reg, ref.name, commit, label=label)


def _working_manifest(reg: Registry, name: str) -> Manifest:
    if not reg.has_model(name):
        raise ModelNotFound(name, hint=Registry._hint(name, reg.model_names()))
    manifest = reg.model_manifest(name)
    if manifest is None:
        raise StemmaError(
            f"model {name!r} has no manifest in the working tree: build it"
            f" (stemma build model {name}) or name a version ({name}@REF)"
        )
    return manifest


@dataclass(frozen=True)
class LogEntry:
    """One row of `stemma log`: a version, the version tags and stages that name it, the
    versions of it GTO deregistered, and whether the model is deprecated."""

    version: Version
    labels: tuple[str, ...] = ()
    deregistered: tuple[str, ...] = ()
    deprecated: bool = False

    @property
    def status(self) -> str:
        """ "deprecated", "deregistered" (only deregistered tags name it), or "active"."""
        if self.deprecated:
            return "deprecated"
        if self.deregistered and not any(label.startswith("v") for label in self.labels):
            return "deregistered"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        """The version's JSON form plus its labels and GTO status."""
        return {
            **self.version.to_dict(),
            "labels": list(self.labels),
            "deregistered": list(self.deregistered),
            "status": self.status,
        }


def _tagged_ids(
    reg: Registry, name: str, tags: list[TagInfo], versions: list[Version]
) -> dict[str, str]:
    """Commit -> the manifest id of model `name` there, for each tag's commit, as GTO reads a
    tag: the artifact's version at the commit the tag points to. A tag on the commit that
    introduced a version needs no read; the others (a tag that `gto` put on a later commit)
    are read with one git process. A commit without a readable manifest is left out."""
    ids = {v.commit: v.id for v in versions}
    later = sorted({t.commit for t in tags} - ids.keys())
    if later:
        paths = git_paths(reg)
        path = paths.manifest(name)
        blobs = read_blobs(paths.top, [f"{c}:{path}" for c in later])
        for commit in later:
            doc = parse_log_manifest(blobs.get(f"{commit}:{path}"))
            if doc is not None:
                ids[commit] = str(doc["id"])
    return ids


def _index_of(versions: list[Version], t: TagInfo, ids: dict[str, str]) -> int | None:
    # a tag names the version whose id is the manifest's at the commit it points to
    mid = ids.get(t.commit)
    if mid is None:
        return None
    return next((i for i, v in enumerate(versions) if v.id == mid), None)


def log(reg: Registry, name: str) -> list[LogEntry]:
    """The model's versions, newest first, each with its version tags and current stages."""
    versions = history(reg, name)
    now = state(reg, name)
    tags = [*now.versions.values(), *now.stages.values(), *now.deregistered.values()]
    ids = _tagged_ids(reg, name, tags, versions)
    labels: dict[int, list[str]] = {}
    for t in [*now.versions.values(), *now.stages.values()]:
        idx = _index_of(versions, t, ids)
        if idx is not None:
            labels.setdefault(idx, []).append(t.version or str(t.stage))
    gone: dict[int, list[str]] = {}
    for version, t in now.deregistered.items():
        idx = _index_of(versions, t, ids)
        if idx is not None:
            gone.setdefault(idx, []).append(version)
    deprecated = now.deprecated is not None
    return [
        LogEntry(v, tuple(labels.get(i, ())), tuple(gone.get(i, ())), deprecated)
        for i, v in enumerate(versions)
    ]


def statuses(reg: Registry, versions: list[Version]) -> list[str]:
    """GTO's word on each version (one git call for all): "deprecated" when its model is,
    "deregistered" when only deregistered version tags name its commit, else "active"."""
    infos = list_tags(reg)
    states = {n: tag_state(t for t in infos if t.name == n) for n in {t.name for t in infos}}
    out = []
    for v in versions:
        now = states.get(v.name)
        if now is None:
            out.append("active")
        elif now.deprecated is not None:
            out.append("deprecated")
        else:
            out.append("deregistered" if v.commit in now.hidden_commits() else "active")
    return out


# -- checkout ---------------------------------------------------------------------------------


def checkout(reg: Registry, text: str) -> Path:
    """Restore the weights of `NAME@REF` into the working tree from the DVC cache or remote."""
    manifest = resolve(reg, text)
    weights = manifest.raw["weights"]
    md5 = str(weights["md5"])
    target = reg.resolve(
        f"{MODELS_DIR}/{manifest.name}/{weights['path']}",
        pointer="/weights/path",
        display=manifest.path,
    )
    if target.is_file() and file_hashes(target)["md5"] == md5:
        return target
    dvc_root = _dvc_root(reg.repo_root)
    default_cache = dvc_root / ".dvc" / "cache"
    cached = _in_cache(default_cache, md5)
    if cached is None:
        note = _fetch(dvc_root, md5, int(weights["bytes"]))
        # the cache may live elsewhere (`dvc cache dir`); only DVC knows, so ask it last
        cached = _in_cache(default_cache, md5) or _in_cache(_cache_dir(dvc_root), md5)
        if cached is None:
            raise StemmaError(
                f"weights of {text} (md5 {md5}) are in neither the DVC cache nor the default"
                f" remote{f' ({note})' if note else ''}; run `dvc push` where they were built"
            )
    _copy_verified(cached, target, md5)
    return target


def _dvc_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise StemmaError(f"no DVC repository at or above {start}: run `dvc init` first")


def _in_cache(cache: Path, md5: str) -> Path | None:
    # DVC 3 keeps objects under files/md5/; DVC 2 kept them at the cache's top level
    for path in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]):
        if path.is_file():
            return path
    return None


def _dvc(cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run `python -m dvc ARGS`: exit status, stdout, and the telling line of stderr.

    DVC runs in a subprocess, never imported: the registry must not load dvc.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    lines = [
        ln.strip().removeprefix("ERROR: ")
        for ln in proc.stderr.splitlines()
        if ln.strip() and not ln.startswith("Having any troubles")
    ]
    return proc.returncode, proc.stdout.strip(), lines[-1] if lines else ""


def _cache_dir(dvc_root: Path) -> Path:
    code, out, note = _dvc(dvc_root, "cache", "dir")
    if code != 0:
        raise StemmaError(f"dvc cache dir failed in {dvc_root}: {note or 'error'}")
    return Path(out)


def _fetch(dvc_root: Path, md5: str, size: int) -> str:
    """Download one object by md5 from the default remote into the cache; DVC's complaint.

    `dvc fetch` takes tracked files, not hashes, so a throw-away .dvc file names the object;
    it sits in a fresh folder inside the repository (DVC refuses git-ignored .dvc files).
    """
    folder = Path(tempfile.mkdtemp(prefix=".stemma-fetch-", dir=dvc_root))
    try:
        # quoted: an all-digit md5 would otherwise load as a YAML integer
        (folder / "weights.dvc").write_text(
            f"outs:\n- md5: '{md5}'\n  size: {size}\n  hash: md5\n  path: weights.bin\n"
        )
        _code, _out, note = _dvc(
            dvc_root, "fetch", str((folder / "weights.dvc").relative_to(dvc_root))
        )
        return note
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _copy_verified(source: Path, target: Path, md5: str) -> None:
    """Copy through a temp file, checking the md5 before the rename makes it visible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        digest = hashlib.md5()
        with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != md5:
            raise StemmaError(
                f"DVC cache object {source} is corrupt: md5 {digest.hexdigest()},"
                f" expected {md5}; run `dvc fetch` again"
            )
        os.chmod(tmp, 0o644)  # cache objects are read-only; the restored file is not
        # a link into the cache is replaced, never written through
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
