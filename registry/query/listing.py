"""Listing and describing registry entries (what `stemma ls` and `stemma show` return)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from stemma.registry.errors import DatasetNotFound, ModelNotFound, StemmaError
from stemma.registry.pipeline.locks import folder_locked_md5
from stemma.registry.records.core import Manifest
from stemma.registry.rules import status
from stemma.registry.rules.layout import SPEC_FILE
from stemma.registry.rules.parents import MERGE, parents_of
from stemma.registry.store.handle import Registry
from stemma.registry.store.index import open_index
from stemma.registry.store.tree import WorkTree
from stemma.registry.versions.resolve import resolve


class Kind(str, enum.Enum):
    """What a registry entry is."""

    model = "model"
    dataset = "dataset"


@dataclass(frozen=True)
class Entry:
    """One row of `stemma ls`."""

    kind: str
    name: str
    status: str  # unbuilt | built | stale | registered (see `stemma.registry.rules.status`)
    id: str | None = None
    source: str | None = None
    relation: str | None = None
    tags: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()  # a dataset's names of its class ids, if it has them
    parents: tuple[str, ...] = ()  # a merge's every parent (`parents_of`); else empty

    @property
    def shown_source(self) -> str | list[str] | None:
        """The source as `ls` shows it: a merge's list of parents, else the one name."""
        return list(self.parents) if self.parents else self.source

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with stable keys."""
        return {
            "kind": self.kind,
            "name": self.name,
            "status": self.status,
            "id": self.id,
            "source": self.shown_source,
            "relation": self.relation,
            "tags": list(self.tags),
            "metrics": self.metrics,
            "class_names": list(self.class_names),
        }


def model_status(reg: Registry, name: str, manifest: Manifest | None) -> str:
    """The model's status (`stemma.registry.rules.status`): unbuilt, registered, stale or built."""
    if manifest is None:
        return status.UNBUILT
    return model_inputs(reg, name, manifest).status()


def model_staleness(reg: Registry, name: str, manifest: Manifest) -> str | None:
    """Why a built model is stale (`status.staleness`: spec, source, data or lock), or None."""
    inputs = model_inputs(reg, name, manifest)
    return inputs.staleness() if inputs.has_spec else None


def model_inputs(reg: Registry, name: str, manifest: Manifest | None) -> status.StatusInputs:
    """The status rule's inputs for a model (`status.gather`), as the files are now."""
    spec = reg.model_spec(name)
    if spec.registered:  # its spec is the manifest's copy: nothing to build from
        return status.gather(None, manifest.status_record if manifest else None)
    return status.gather(
        spec.digest,
        manifest.status_record if manifest is not None else None,
        parents_of(spec),
        lambda parent: _model_id(reg, parent),
        lambda dataset: current_dataset_id(reg, dataset),
        folder_locked_md5(reg, name) if manifest is not None else None,
    )


def _model_id(reg: Registry, name: str) -> str | None:
    """The model's manifest id now; None when it is not declared or not built."""
    found = reg.model_manifest(name) if reg.has_model(name) else None
    return found.id if found is not None else None


def current_dataset_id(reg: Registry, name: str) -> str | None:
    """The dataset's manifest id now; None when it has no readable manifest (gone, or broken:
    the consistency check reports that manifest itself)."""
    if not reg.has_dataset(name):
        return None
    try:
        found = reg.dataset_manifest(name)
    except StemmaError:
        return None
    return found.id if found is not None else None


def dataset_status(reg: Registry, name: str, manifest: Manifest | None) -> str:
    """The dataset's status: unbuilt, registered (a manifest, no spec), stale or built."""
    if manifest is None:
        return status.UNBUILT
    has_spec = reg.tree.exists(reg.rel("datasets", name, SPEC_FILE))
    digest = reg.dataset_spec(name).digest if has_spec else None
    return status.gather(digest, manifest.status_record).status()


def list_entries(reg: Registry, kind: Kind | str | None = None) -> list[Entry]:
    """Datasets then models, each sorted by name.

    On the working tree the rows come from the DuckDB index, which re-reads only files whose
    size or mtime changed: listing 1,000 models then costs a stat per file, not a parse.
    """
    kind = Kind(kind) if kind is not None else None
    if isinstance(reg.tree, WorkTree):
        return _indexed_entries(reg, kind)
    rows: list[Entry] = []
    if kind in (None, Kind.dataset):
        for name in reg.dataset_names():
            dspec = reg.dataset_spec(name)
            dm = reg.dataset_manifest(name)
            rows.append(
                Entry(
                    "dataset",
                    name,
                    dataset_status(reg, name, dm),
                    dm.id if dm else None,
                    dspec.source,
                    None,
                    dspec.tags,
                    class_names=dm.class_names if dm else (),
                )
            )
    if kind in (None, Kind.model):
        for name in reg.model_names():
            spec = reg.model_spec(name)
            mm = reg.model_manifest(name)
            src = spec.source
            rows.append(
                Entry(
                    "model",
                    name,
                    model_status(reg, name, mm),
                    mm.id if mm else None,
                    src.model if src else None,
                    src.relation if src else None,
                    spec.tags,
                    mm.metrics if mm else {},
                    parents=_merge_parents(reg, name, src.relation if src else None),
                )
            )
    return rows


_DATASETS_SQL = "SELECT name, status, id, source, tags, class_names FROM datasets ORDER BY name"
_MODELS_SQL = "SELECT name, status, id, source, relation, tags, metrics FROM models ORDER BY name"


def _indexed_entries(reg: Registry, kind: Kind | None) -> list[Entry]:
    rows: list[Entry] = []
    with open_index(reg) as index:
        if kind in (None, Kind.dataset):
            for name, state, id_, source, tags, names in index.con.execute(
                _DATASETS_SQL
            ).fetchall():
                entry = Entry("dataset", name, state, id_, source, None, tuple(tags))
                rows.append(replace(entry, class_names=tuple(names or ())))
        if kind in (None, Kind.model):
            found = index.con.execute(_MODELS_SQL).fetchall()
            for name, state, id_, source, relation, tags, metrics in found:
                rows.append(
                    Entry(
                        "model",
                        name,
                        state,
                        id_,
                        source,
                        relation,
                        tuple(tags),
                        dict(metrics or {}),
                        parents=_merge_parents(reg, name, relation),
                    )
                )
    return rows


def _merge_parents(reg: Registry, name: str, relation: str | None) -> tuple[str, ...]:
    """A merge's parents in the order its spec names them (models, then base); () for any
    other relation, whose one source the row already holds. Merges are few: reading their
    specs costs little next to the index."""
    if relation != MERGE:
        return ()
    try:
        return parents_of(reg.model_spec(name))
    except StemmaError:  # a spec `validate` reports: the row keeps the index's one source
        return ()


def describe(reg: Registry, name: str) -> dict[str, Any]:
    """Spec, status and manifest of a model (`NAME@REF` allowed) or a dataset."""
    if "@" in name:
        manifest = resolve(reg, name)
        return {
            "kind": "model",
            "name": manifest.name,
            "status": "version",
            "spec": manifest.spec,
            "manifest": manifest.to_dict(),
        }
    if reg.has_model(name):
        mm = reg.model_manifest(name)
        return {
            "kind": "model",
            "name": name,
            "status": model_status(reg, name, mm),
            "spec": reg.model_spec(name).to_dict(),
            "manifest": mm.to_dict() if mm else None,
        }
    if reg.has_dataset(name):
        dm = reg.dataset_manifest(name)
        return {
            "kind": "dataset",
            "name": name,
            "status": dataset_status(reg, name, dm),
            "spec": reg.dataset_spec(name).to_dict(),
            "manifest": dm.to_dict() if dm else None,
        }
    hint = Registry._hint(name, reg.model_names() + reg.dataset_names())
    if reg.dataset_names() and not reg.model_names():
        raise DatasetNotFound(name, hint)
    raise ModelNotFound(name, hint)
