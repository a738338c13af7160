"""The pipeline on disk: compare the files `stemma pipeline` renders with the tree, write
them, delete those of removed datasets and models, and move lock entries of the old layout.

Layout (the rule lives in `pipeline.stage_file`): the root dvc.yaml keeps the stages people
wrote themselves and the `artifacts:` section (GTO and `dvc artifacts` name an artifact of the
root file by its bare name); each dataset and model folder has its own dvc.yaml, with `wdir`
at the repository root, and DVC writes a dvc.lock beside it. `dvc repro`, `dvc status` and
`dvc metrics show` from the root collect every dvc.yaml of the repository.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .pipeline import (
    HEADER,
    PIPELINE_FILE,
    _own_stage,
    recording_probes,
    render_files,
    stage_file,
)
from .registry import SPEC_FILE, Registry
from .tree import WorkTree

LOCK_FILE = "dvc.lock"
Read = Callable[[str], str | None]


@dataclass(frozen=True)
class Changes:
    """What `write` did: files written and files deleted, repo-relative."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    locks_moved: int = 0

    def __bool__(self) -> bool:
        return bool(self.written or self.removed or self.locks_moved)


def generated_files(reg: Registry, read: Read | None = None) -> list[str]:
    """The per-folder dvc.yaml files in the tree that `stemma pipeline` wrote (its header);
    `read` reads a repo-relative file (default: the registry's tree)."""
    read = reg.tree.read_text if read is None else read
    found = []
    for kind in ("datasets", "models"):
        for name in reg.tree.subdirs(reg.rel(kind)):
            path = reg.rel(kind, name, PIPELINE_FILE)
            text = read(path)
            if text is not None and text.startswith(HEADER):
                found.append(path)
    return found


@dataclass(frozen=True)
class Difference:
    """A pipeline file that is not as `stemma pipeline` would write it."""

    path: str
    reason: str  # "is missing" | "is out of step with the specs" | "belongs to no ..."

    def __str__(self) -> str:
        return f"{self.path} {self.reason}"


MISSING = "is missing"
OUT_OF_STEP = "is out of step with the specs"
ORPHAN = "belongs to no dataset or model"


def differences(reg: Registry, read: Read | None = None) -> list[Difference]:
    """Each pipeline file that differs from what the specs imply (the root dvc.yaml first,
    then the folders' files in build order, then generated files nothing declares now);
    empty when all are in step. `read` reads a repo-relative file of the state compared
    (default: the registry's tree). On the working tree an unchanged registry is checked
    against the hashes of its last render (`_pipecache`)."""
    fast = _cached_differences(reg) if read is None else None
    if fast is not None:
        return fast
    read = reg.tree.read_text if read is None else read
    want = rendered(reg)
    found = []
    for path, text in want.items():
        have = read(path)
        if have != text:
            found.append(Difference(path, MISSING if have is None else OUT_OF_STEP))
    found += [Difference(p, ORPHAN) for p in generated_files(reg, read) if p not in want]
    return found


def rendered(reg: Registry) -> dict[str, str]:
    """`pipeline.render_files`, kept in the cache on the working tree; documents that
    passed their schema before are not validated again (`_validcache`)."""
    if not isinstance(reg.tree, WorkTree):
        return render_files(reg)
    from . import _pipecache, _validcache

    key = _pipecache.fingerprint(reg)
    with _validcache.remembering(reg.repo_root), recording_probes() as probes:
        _read_specs(reg)
        want = render_files(reg)
    _pipecache.save(reg, key, probes, want)
    return want


def _read_specs(reg: Registry) -> None:
    """Read every spec with the index's reader of the YAML subset specs are written in
    (`_fastyaml`, the same values as PyYAML in a fraction of the time) into the registry's
    read cache. A spec outside the subset, or one its schema refuses, is left for the
    registry to read, so that its error reads as everywhere else."""
    from . import _fastyaml
    from .errors import StemmaError
    from .records import DATASET_SPEC, MODEL_SPEC, validate_document

    for kind, names, schema in (
        ("datasets", reg.dataset_names(), DATASET_SPEC),
        ("models", reg.model_names(), MODEL_SPEC),
    ):
        for name in names:
            path = reg.rel(kind, name, SPEC_FILE)
            key = ("doc", path)
            text = None if key in reg._cache else reg.tree.read_text(path)
            doc = _fastyaml.load(text) if text is not None else None
            if doc is None:
                continue
            try:
                validate_document(doc, schema, path, text)
            except StemmaError:
                continue
            reg._cache[key] = doc  # the key `Registry._load` keeps a spec under


def _cached_differences(reg: Registry) -> list[Difference] | None:
    """The differences by the cached render's hashes, or None when it cannot be trusted."""
    if not isinstance(reg.tree, WorkTree):
        return None
    from . import _pipecache

    cached = _pipecache.load(reg)
    if cached is None or not _pipecache.still_valid(reg, cached, _pipecache.fingerprint(reg)):
        return None
    files: dict[str, str] = cached["files"]
    root = reg.tree.read_text(PIPELINE_FILE)
    if root is None or _pipecache.sha(root) != files.get(PIPELINE_FILE):
        return None  # its own stages are an input: render again
    found = []
    for path, digest in files.items():
        have = reg.tree.read_text(path)
        if have is None:
            found.append(Difference(path, MISSING))
        elif _pipecache.sha(have) != digest:
            found.append(Difference(path, OUT_OF_STEP))
    for kind in ("datasets", "models"):
        for name in reg.tree.subdirs(reg.rel(kind)):
            path = reg.rel(kind, name, PIPELINE_FILE)
            if path not in files:
                text = reg.tree.read_text(path)
                if text is not None and text.startswith(HEADER):
                    found.append(Difference(path, ORPHAN))
    return found


def write(reg: Registry) -> Changes:
    """Write every pipeline file that changed (atomically), delete the generated files of
    removed datasets and models (with their dvc.lock), and move the lock entries of stemma's
    stages from the root dvc.lock to the dvc.lock beside their new dvc.yaml."""
    from .files import write_atomic

    if _cached_differences(reg) == [] and not _root_locks(reg):
        return Changes()
    want = rendered(reg)
    written = []
    for path, text in want.items():
        if reg.tree.read_text(path) != text:
            write_atomic(reg.repo_root / path, text)
            written.append(path)
    removed = []
    for path in generated_files(reg):
        if path not in want:
            for stale in (path, str(PurePosixPath(path).with_name(LOCK_FILE))):
                target = reg.repo_root / stale
                if target.is_file():
                    target.unlink()
                    removed.append(stale)
    moved = _move_root_locks(reg, want)
    return Changes(written, removed, moved)


def _move_root_locks(reg: Registry, want: dict[str, str]) -> int:
    """Lock entries of stemma's stages that an older layout left in the root dvc.lock go to
    the dvc.lock of the file that holds the stage now (paths stay the same: every stage runs
    from the root), so a registry that changes layout rebuilds nothing. DVC's own YAML
    writer keeps the files as DVC writes them."""
    root_lock = _root_locks(reg)
    if root_lock is None:
        return 0
    from .yamlio import load_yaml_text

    doc = load_yaml_text(root_lock.read_text(), LOCK_FILE)
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, dict):
        return 0
    home = {str(k): _home(reg, str(k)) for k, v in stages.items() if _own_stage(str(k), v)}
    moving = {k: v for k, v in stages.items() if home.get(str(k)) in want}
    if not moving:
        return 0
    from dvc.utils.serialize import modify_yaml  # type: ignore[import-untyped]

    by_file: dict[str, dict[str, Any]] = {}
    for stage, entry in moving.items():
        by_file.setdefault(home[stage], {})[stage] = entry
    for path, entries in by_file.items():
        lock = reg.repo_root / PurePosixPath(path).with_name(LOCK_FILE)
        with modify_yaml(str(lock)) as data:
            if not data:
                data["schema"] = doc.get("schema", "2.0")
            have = data.setdefault("stages", {})
            for stage, entry in entries.items():
                have.setdefault(stage, entry)  # a lock DVC wrote there already wins
    with modify_yaml(str(root_lock)) as data:
        for stage in moving:
            data.get("stages", {}).pop(stage, None)
    if not (load_yaml_text(root_lock.read_text(), LOCK_FILE) or {}).get("stages"):
        root_lock.unlink()
    return len(moving)


def _root_locks(reg: Registry) -> Path | None:
    """The root dvc.lock when it may hold entries of stemma's stages (an older layout)."""
    path = reg.repo_root / LOCK_FILE
    if not path.is_file():
        return None
    text = path.read_text()
    return path if any(f"\n  {kind}-" in text for kind in ("dataset", "model", "explore")) else None


def _home(reg: Registry, stage: str) -> str:
    """The per-folder dvc.yaml of one of stemma's stage names (`pipeline.stage_name`)."""
    kind, _, name = stage.partition("-")
    return stage_file(reg, "dataset" if kind == "dataset" else "model", name)


def lock_files(reg: Registry, read: Read | None = None) -> list[str]:
    """Every dvc.lock of the pipeline in the tree: the root one, then one per folder
    (`read` as for `differences`)."""
    paths = [LOCK_FILE]
    for path in generated_files(reg, read):
        paths.append(str(PurePosixPath(path).with_name(LOCK_FILE)))
    read = reg.tree.read_text if read is None else read
    return [path for path in paths if read(path) is not None]
