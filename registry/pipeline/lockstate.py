"""Which built models DVC has not recorded: the `lock` case of the status rule, on files.

The query index holds specs and manifests, not dvc.lock files, so the views call a model
built from its spec and source alone. A build that swapped its outputs in but was stopped
before DVC wrote the lock (a killed `dvc repro`, a `stemma build` run by hand) leaves a
manifest whose weights md5 differs from the md5 in the folder's dvc.lock: `dvc status` then
says the stage changed and DVC's cache lacks the weights the manifest names. `unlocked`
finds those models, for `stemma ls` and `stemma repro`, by `status.staleness`.

Cost: one read of a small dvc.lock per model (none is read as YAML when DVC wrote it); the
manifest's md5 comes from the consistency check's kept facts where its folder is unchanged,
and is read only for folders whose lock records weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from stemma.registry.errors import StemmaError
from stemma.registry.pipeline.locks import folder_locked_md5
from stemma.registry.rules import status
from stemma.registry.rules.layout import LOCK_FILE, MANIFEST_FILE, MODELS_DIR
from stemma.registry.rules.status import recorded_md5
from stemma.registry.store._checkcache import FolderFacts
from stemma.registry.store._snapshot import read_texts
from stemma.registry.store.files import read_json
from stemma.registry.store.tree import WorkTree

if TYPE_CHECKING:
    from stemma.registry.store.handle import Registry


def _kept_md5s(reg: Registry) -> dict[str, tuple[str | None, str | None]]:
    """name -> (manifest md5, locked md5) from the check's kept facts of unchanged folders."""
    facts = FolderFacts(reg)
    out: dict[str, tuple[str | None, str | None]] = {}
    for name in facts.stored:
        kept = facts.get(name)
        if kept is not None and len(kept) >= 13:  # ModelFacts.to_list: ..., weights, locked
            md5, locked = kept[11], kept[12]
            if (md5 is None or isinstance(md5, str)) and (
                locked is None or isinstance(locked, str)
            ):
                out[name] = (md5, locked)
    return out


def _manifest_md5(reg: Registry, name: str) -> str | None:
    """The weights md5 the model's manifest records (None when it cannot be read: the
    consistency check reports that manifest itself)."""
    path = reg.model_dir(name) / MANIFEST_FILE
    try:
        doc = read_json(path, reg.rel("models", name, MANIFEST_FILE), root=reg.repo_root)
    except StemmaError:
        return None
    return recorded_md5(doc.get("weights") if isinstance(doc, dict) else None)


def _lock_texts(reg: Registry, names: list[str]) -> dict[str, str | None]:
    """Model name -> text (None: no such file) of the dvc.lock of each of the model
    folders `names` of the working tree, read in one pass (`_snapshot.read_texts`);
    {} where that cannot be done (a git revision, or a file the careful reader refuses:
    then each is read on its own, and refused as it always is)."""
    if not names or not isinstance(reg.tree, WorkTree):
        return {}
    paths = [f"{MODELS_DIR}/{name}/{LOCK_FILE}" for name in names]
    try:
        texts = read_texts(reg.root, paths, reg.rel_root)
    except StemmaError:
        return {}
    return dict(zip(names, texts, strict=True))


def unlocked(reg: Registry, names: Iterable[str]) -> set[str]:
    """The models among `names` (built ones) whose manifest records other weights than their
    folder's dvc.lock: stale by the status rule's `lock` case."""
    names = list(names)
    if not names:
        return set()
    kept = _kept_md5s(reg)
    locks = _lock_texts(reg, [n for n in names if n not in kept])
    out = set()
    for name in names:
        if name in kept:
            md5, locked = kept[name]
        else:
            read = (lambda _path, text=locks[name]: text) if name in locks else None
            locked = folder_locked_md5(reg, name, read)
            md5 = _manifest_md5(reg, name) if locked is not None else None
        # the lock case alone: the index has judged the rest
        lock_only = status.StatusInputs(True, True, weights_md5=md5, locked_md5=locked)
        if lock_only.staleness() == status.LOCK_CHANGED:
            out.add(name)
    return out
