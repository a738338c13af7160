"""The pipeline on disk: compare the files `stemma pipeline` renders with the tree, write
them, delete those of removed datasets and models, and move lock entries of the old layout.

Layout (the rule lives in `pipeline.stage_file`): the root dvc.yaml keeps the stages people
wrote themselves and the `artifacts:` section (GTO and `dvc artifacts` name an artifact of the
root file by its bare name); each dataset and model folder has its own dvc.yaml, with `wdir`
at the repository root, and DVC writes a dvc.lock beside it. `dvc repro`, `dvc status` and
`dvc metrics show` from the root collect every dvc.yaml of the repository.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stemma.registry.errors import StemmaError
from stemma.registry.pipeline import _pipecache, _pipedelta
from stemma.registry.pipeline.locks import pipeline_texts
from stemma.registry.pipeline.render import (
    HEADER,
    _own_stage,
    file_text,
    recording_probes,
    render_docs,
    stage_file,
)
from stemma.registry.records.core import DATASET_SPEC, MODEL_SPEC
from stemma.registry.rules.layout import (
    DATASETS_DIR,
    LOCK_FILE,
    MODELS_DIR,
    PIPELINE_FILE,
    SPEC_FILE,
)
from stemma.registry.store import _validcache
from stemma.registry.store.documents import validate_document
from stemma.registry.store.files import _write_temp
from stemma.registry.store.handle import Registry
from stemma.registry.store.tree import WorkTree
from stemma.registry.store.yamlio import fast_load, load_yaml_text

Read = Callable[[str], str | None]


@dataclass(frozen=True)
class Changes:
    """What `write` did: files written and files deleted, repo-relative."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    locks_moved: int = 0

    def __bool__(self) -> bool:
        return bool(self.written or self.removed or self.locks_moved)


def generated_files(
    reg: Registry, read: Read | None = None, skip: Collection[str] = ()
) -> list[str]:
    """The per-folder dvc.yaml files in the tree that `stemma pipeline` wrote (its header),
    besides those in `skip`; `read` reads a repo-relative file (default: the registry's
    tree)."""
    read = reg.tree.read_text if read is None else read
    found = []
    for kind in (DATASETS_DIR, MODELS_DIR):
        for name in reg.tree.subdirs(reg.rel(kind)):
            path = reg.rel(kind, name, PIPELINE_FILE)
            if path in skip:
                continue
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
    key = _fingerprint(reg) if read is None else None
    cached = _pipecache.load(reg) if key is not None else None  # read once, used by both
    fast = _cached_differences(reg, key, cached)
    if fast is not None:
        return fast
    _, hashes = rendered(reg, key, cached=cached)
    del cached  # the render keeps what it needs of it: let the rest go before the compare
    return compare(reg, hashes, read)


def compare(reg: Registry, hashes: dict[str, str], read: Read | None = None) -> list[Difference]:
    """`differences` from the hash of each file's rendered text (`rendered`), in order."""
    found = []
    # the registry's own files in one pass (`pipeline_texts`): at 10,000 models, one careful
    # read per file was 0.44 s of a `pipeline --check` just after a spec edit
    texts = pipeline_texts(reg, list(hashes)) if read is None else _each(read, hashes)
    for path, have in texts:
        if isinstance(have, StemmaError):
            raise have
        if have is None:
            found.append(Difference(path, MISSING))
        elif _pipecache.sha(have) != hashes[path]:
            found.append(Difference(path, OUT_OF_STEP))
    found += [Difference(p, ORPHAN) for p in generated_files(reg, read, skip=hashes)]
    return found


def _each(read: Read, paths: Iterable[str]) -> Iterator[tuple[str, str | None]]:
    """(path, text) of each of `paths` as `read` reads it (its refusal raised)."""
    for path in paths:
        yield path, read(path)


def _fingerprint(reg: Registry) -> str | None:
    """The render cache's key of the working tree (None at a git revision: no cache)."""
    return _pipecache.fingerprint(reg) if isinstance(reg.tree, WorkTree) else None


def rendered(
    reg: Registry,
    key: str | None = None,
    whole: bool = False,
    cached: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The document of every pipeline file (`pipeline.render_docs`) and the hash of its
    text. On the working tree (`key`: its fingerprint, when already known), documents that
    passed their schema before are not validated again (`_validcache`), and a document that
    is the same as at the last render is not written out as YAML again: its text's hash is
    the one `_pipecache` kept. After an edit of a few model specs only the files those can
    change are rendered (`_pipedelta`; the others have a hash and no document) unless
    `whole`. `cached`: the last render (`_pipecache.load`), when already read."""
    if not isinstance(reg.tree, WorkTree):
        docs = render_docs(reg)
        return docs, {path: _pipecache.sha(file_text(doc)) for path, doc in docs.items()}
    key = key or _pipecache.fingerprint(reg)
    cached = cached if cached is not None else _pipecache.load(reg)
    known = _pipecache.known_hashes(cached)
    with recording_probes() as probes:
        delta = None if whole else _delta(reg, cached, known)
    if delta is not None:
        docs, order, facts = delta
        probes = {**cached["probes"], **probes} if cached is not None else probes
    else:
        facts = {}
        with _validcache.remembering(reg.repo_root), recording_probes() as probes:
            _read_specs(reg)
            docs = render_docs(reg, facts)
        order = list(docs)
    hashes, digests = {}, {}
    for path in order:
        doc = docs.get(path)
        if doc is None:  # not rendered again: as the last render wrote it
            digests[path], hashes[path] = known[path]
            continue
        digests[path] = _pipecache.doc_digest(doc)
        last = known.get(path)
        if last is not None and last[0] == digests[path]:
            hashes[path] = last[1]
        else:
            hashes[path] = _pipecache.sha(file_text(doc))
    _pipecache.save(reg, key, probes, hashes, digests, facts, cached)
    return docs, hashes


def _delta(
    reg: Registry, cached: dict[str, Any] | None, known: dict[str, tuple[str, str]]
) -> tuple[dict[str, dict[str, Any]], list[str], dict[str, list[Any]]] | None:
    """`_pipedelta.render_changed` after an edit of model specs alone, when the last render
    (`cached`) is one it can start from; None: render everything."""
    if cached is None or not known or cached.get("base") != _pipecache.base(reg):
        return None
    kept, facts, files = cached.get("inputs"), cached.get("facts"), cached.get("files")
    if not (isinstance(kept, dict) and isinstance(facts, dict) and isinstance(files, dict)):
        return None
    if not _pipecache.probes_hold(reg, cached):
        return None
    if cached.get("foreign") != _pipecache.foreign(reg):
        return None  # the root's own stages are an input of every file
    now = _pipecache.inputs(reg)
    changed = {p for p in kept.keys() | now.keys() if kept.get(p) != now.get(p)}
    head, tail = reg.rel(MODELS_DIR) + "/", "/" + SPEC_FILE
    names = {p[len(head) : -len(tail)] for p in changed if p.startswith(head) and p.endswith(tail)}
    if len(names) != len(changed) or any("/" in n for n in names):
        return None
    # the models now, from the index the inputs came from: a model folder is one with a spec
    # or a manifest, as `model_names` lists them, without an `isfile` per folder (at 30,000
    # models ~0.08 s of a check after an edit)
    models = sorted({p[len(head) :].partition("/")[0] for p in now if p.startswith(head)})
    out = _pipedelta.render_changed(reg, facts, names, list(files), models)
    if out is None or any(p not in out[0] and p not in known for p in out[1]):
        return None
    return out


def _read_specs(reg: Registry) -> None:
    """Read every spec with the index's reader of the YAML subset specs are written in
    (`fast_load`, the same values as PyYAML in a fraction of the time) into the registry's
    read cache. A spec outside the subset, or one its schema refuses, is left for the
    registry to read, so that its error reads as everywhere else."""
    for kind, names, schema in (
        (DATASETS_DIR, reg.dataset_names(), DATASET_SPEC),
        (MODELS_DIR, reg.model_names(), MODEL_SPEC),
    ):
        for name in names:
            path = reg.rel(kind, name, SPEC_FILE)
            key = ("doc", path)
            text = None if key in reg._cache else reg.tree.read_text(path)
            doc = fast_load(text) if text is not None else None
            if doc is None:
                continue
            try:
                validate_document(doc, schema, path, text)
            except StemmaError:
                continue
            reg._cache[key] = doc  # the key `Registry._load` keeps a spec under


def _cached_differences(
    reg: Registry, key: str | None, cached: dict[str, Any] | None
) -> list[Difference] | None:
    """The differences by the cached render's hashes (`cached`: the last render), or None
    when it cannot be trusted (`key`: the working tree's fingerprint; None: no cache
    applies)."""
    if key is None:
        return None
    if cached is None or not _pipecache.still_valid(reg, cached, key):
        return None
    files: dict[str, str] = cached["files"]
    root = reg.tree.read_text(PIPELINE_FILE)
    if root is None or _pipecache.sha(root) != files.get(PIPELINE_FILE):
        return None  # its own stages are an input: render again
    found = []
    for path, have in pipeline_texts(reg, list(files)):
        if isinstance(have, StemmaError):
            raise have
        if have is None:
            found.append(Difference(path, MISSING))
        elif _pipecache.sha(have) != files[path]:
            found.append(Difference(path, OUT_OF_STEP))
    for kind in (DATASETS_DIR, MODELS_DIR):
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
    key = _fingerprint(reg)
    cached = _pipecache.load(reg)
    if _cached_differences(reg, key, cached) == [] and not _root_locks(reg):
        return Changes()
    docs, hashes = rendered(reg, key, cached=cached)
    del cached
    written = []
    for path, have in pipeline_texts(reg, list(hashes)):
        if isinstance(have, StemmaError):
            raise have
        if have is None or _pipecache.sha(have) != hashes[path]:
            written.append(path)
    if any(path not in docs for path in written):  # a file edited by hand: its text is needed
        docs, hashes = rendered(reg, key, whole=True)
    _write_batch(reg.repo_root, {path: file_text(docs[path]) for path in written})
    removed = []
    for path in generated_files(reg, skip=hashes):
        for stale in (path, str(PurePosixPath(path).with_name(LOCK_FILE))):
            target = reg.repo_root / stale
            if target.is_file():
                target.unlink()
                removed.append(stale)
    moved = _move_root_locks(reg, hashes)
    return Changes(written, removed, moved)


def _write_batch(root: Path, texts: dict[str, str]) -> None:
    """Write each file atomically (a complete temp file renamed over it), with one flush of
    the data for the whole batch before the first rename and one after the last: an fsync
    per file costs ~10 ms on a journaling file system, 100 s for 10,000 models. A crash
    leaves every file either as it was or as written, never torn (plus, at worst, temp
    files named `.NAME.*.tmp`, which nothing reads)."""
    staged: list[tuple[str, Path]] = []
    done = 0
    try:
        for path, text in texts.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.append((_write_temp(target, text.encode(), sync=False), target))
        if staged:
            os.sync()  # every temp file's data is on disk before any of them replaces a file
        for tmp, target in staged:
            os.replace(tmp, target)
            done += 1
    finally:
        for tmp, _target in staged[done:]:  # not renamed: an error part-way
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    if texts:
        os.sync()  # the renames


def _move_root_locks(reg: Registry, want: Collection[str]) -> int:
    """Lock entries of stemma's stages that an older layout left in the root dvc.lock go to
    the dvc.lock of the file that holds the stage now (paths stay the same: every stage runs
    from the root), so a registry that changes layout rebuilds nothing. DVC's own YAML
    writer keeps the files as DVC writes them."""
    root_lock = _root_locks(reg)
    if root_lock is None:
        return 0
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
