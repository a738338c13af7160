"""The status of a model or dataset: one rule, one set of names.

`stemma ls`, the `models` and `datasets` views of `stemma query`, the lineage graph, the
consistency checks (and so `validate` and `audit`) all decide a status here; the SQL of the
index views (`_sql`) is tested against `status`.

- `unbuilt`: declared by a spec, no manifest yet;
- `registered`: a manifest and no spec (weights imported by `stemma register`, nothing to build);
- `stale`: the spec changed since the build (`spec`), or the source model was rebuilt since
  (`source`), or a dataset the manifest records (train, eval, the checks') now has another
  manifest id or none (`data`), or the weights the manifest records are not the ones the
  folder's dvc.lock records (`lock`: a build that DVC never recorded, so its weights are
  not in DVC's cache and `dvc status` says the stage changed): `dvc repro` rebuilds it;
- `built`: the manifest was built from the spec, the source and the datasets as they are.

The lineage graph adds two names for nodes that are not a healthy entry: `invalid` (a spec
that cannot be read) and `missing` (named as a source or dataset, but not declared).

The rule's arguments are gathered here too, once: `Built.of` reads what a manifest records
(spec digest, source id, weights md5, dataset ids), `gather` pairs it with the files as they
are now (the spec's digest, the parents' and datasets' manifest ids now, the dvc.lock's md5)
into `StatusInputs`. Every reader (`ls`, `show`, the lineage graph, `validate`, the report)
calls `gather` with its own way of reading a document; `_sql`'s views are tested against it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from stemma.registry.rules.parents import combined_id

UNBUILT = "unbuilt"
BUILT = "built"
STALE = "stale"
REGISTERED = "registered"
INVALID = "invalid"
MISSING = "missing"
STATUSES = (UNBUILT, BUILT, STALE, REGISTERED, INVALID, MISSING)

# Why a manifest is stale (see `staleness`).
SPEC_CHANGED = "spec"
SOURCE_CHANGED = "source"
DATA_CHANGED = "data"
LOCK_CHANGED = "lock"

# (recorded manifest id, current manifest id or None when the dataset has no manifest now)
DatasetIds = Iterable[tuple[str | None, str | None]]


def recorded_datasets(datasets: object) -> dict[str, str]:
    """The datasets a model manifest records (its `datasets` block: role -> {name, id}), as
    name -> recorded manifest id; entries without both are skipped (the schema reports them)."""
    out: dict[str, str] = {}
    if not isinstance(datasets, Mapping):
        return out
    for entry in datasets.values():
        if isinstance(entry, Mapping):
            name, id_ = entry.get("name"), entry.get("id")
            if isinstance(name, str) and isinstance(id_, str):
                out[name] = id_
    return out


def staleness(
    spec_digest: str | None,
    built_digest: str | None,
    parent_id: str | None = None,
    built_source_id: str | None = None,
    weights_md5: str | None = None,
    locked_md5: str | None = None,
    datasets: DatasetIds = (),
) -> str | None:
    """Why a built model or dataset is stale, or None when it is not.

    `spec_digest` is the digest of the spec as it is, `built_digest` the one its manifest
    recorded; `parent_id` the manifest id of the declared source model as it is (None when
    the spec names no source, picks one by exploration, or the source has no manifest), and
    `built_source_id` the source id the manifest recorded; `weights_md5` the md5 of the
    weights the manifest records and `locked_md5` the one the folder's dvc.lock records
    (None when there is no lock entry: a build that never went through DVC is not judged);
    `datasets` pairs each dataset id the manifest recorded with that dataset's manifest id
    now (None when it has none: rebuilt away or deleted, the model was built from data that
    is no longer there). Comparing ids, never hashing files, keeps every read path cheap.
    """
    if built_digest != spec_digest:
        return SPEC_CHANGED
    if parent_id is not None and parent_id != built_source_id:
        return SOURCE_CHANGED
    if any(recorded != now for recorded, now in datasets):
        return DATA_CHANGED
    if weights_md5 is not None and locked_md5 is not None and weights_md5 != locked_md5:
        return LOCK_CHANGED
    return None


def status(
    has_spec: bool,
    has_manifest: bool,
    spec_digest: str | None = None,
    built_digest: str | None = None,
    parent_id: str | None = None,
    built_source_id: str | None = None,
    weights_md5: str | None = None,
    locked_md5: str | None = None,
    datasets: DatasetIds = (),
) -> str:
    """The status of a model or dataset (arguments as for `staleness`)."""
    if not has_manifest:
        return UNBUILT
    if not has_spec:
        return REGISTERED
    why = staleness(
        spec_digest, built_digest, parent_id, built_source_id, weights_md5, locked_md5, datasets
    )
    if why is not None:
        return STALE
    return BUILT


def lock_changed(weights_md5: str | None, locked_md5: str | None) -> bool:
    """The lock case alone (`staleness`): the manifest records other weights than the
    folder's dvc.lock (None for either: not judged)."""
    lock_only = StatusInputs(True, True, weights_md5=weights_md5, locked_md5=locked_md5)
    return lock_only.staleness() == LOCK_CHANGED


def recorded_md5(weights: Any) -> str | None:
    """The md5 DVC records for the weights a manifest's weights block names: the file's, or
    for a sharded model (a `weights.safetensors` folder: index and shards) DVC's folder hash,
    the md5 of its sorted listing of names and md5s plus `.dir` (dvc-data's `Tree`, the
    format of every DVC since 1.0), so that the lock rule compares like with like."""
    md5 = weights.get("md5") if isinstance(weights, Mapping) else None
    shards = weights.get("shards") if isinstance(weights, Mapping) else None
    if md5 is None or not isinstance(shards, list):
        return None if md5 is None else str(md5)
    try:
        files = [weights, *shards]
        listing = sorted(
            ({"md5": str(f["md5"]), "relpath": PurePosixPath(str(f["path"])).name} for f in files),
            key=lambda entry: entry["relpath"],
        )
    except (KeyError, TypeError):
        return None  # a damaged block: the consistency check reports the manifest
    blob = json.dumps(listing, sort_keys=True).encode()
    return hashlib.md5(blob, usedforsecurity=False).hexdigest() + ".dir"


def _text(node: Any, *path: str) -> str | None:
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, str) else None


@dataclass(frozen=True)
class Built:
    """What a manifest (model or dataset) records that the status rule compares."""

    spec_digest: str | None = None
    source_id: str | None = None  # the parents' combined id at build time (models)
    weights_md5: str | None = None  # as DVC records the weights (`recorded_md5`)
    datasets: tuple[tuple[str, str], ...] = ()  # (name, manifest id) of each recorded dataset

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> Built:
        """Read a manifest document (parsed, not necessarily valid: a field of the wrong
        type is None, which the schema check reports)."""
        return cls(
            _text(manifest, "spec_digest"),
            _text(manifest, "source", "id"),
            recorded_md5(manifest.get("weights")),
            tuple(recorded_datasets(manifest.get("datasets")).items()),
        )


def _unknown(name: str) -> str | None:
    return None


@dataclass(frozen=True)
class StatusInputs:
    """Everything the status rule compares for one model or dataset, as gathered now."""

    has_spec: bool
    has_manifest: bool
    spec_digest: str | None = None
    built_digest: str | None = None
    parent_id: str | None = None
    built_source_id: str | None = None
    weights_md5: str | None = None
    locked_md5: str | None = None
    datasets: tuple[tuple[str, str, str | None], ...] = ()  # (name, recorded id, id now)

    def staleness(self) -> str | None:
        """Why it is stale (`staleness`), or None; only meaningful with spec and manifest."""
        return staleness(
            self.spec_digest,
            self.built_digest,
            self.parent_id,
            self.built_source_id,
            self.weights_md5,
            self.locked_md5,
            [(recorded, now) for _, recorded, now in self.datasets],
        )

    def status(self) -> str:
        """Its status (`status`)."""
        if not self.has_manifest:
            return UNBUILT
        if not self.has_spec:
            return REGISTERED
        return STALE if self.staleness() is not None else BUILT

    def changed_datasets(self) -> list[tuple[str, str | None]]:
        """(name, id now) of each recorded dataset whose manifest id is not the recorded one."""
        return [(name, now) for name, recorded, now in self.datasets if recorded != now]


def gather(
    spec_digest: str | None,
    built: Built | None,
    parents: Sequence[str] = (),
    manifest_id: Callable[[str], str | None] = _unknown,
    dataset_id: Callable[[str], str | None] = _unknown,
    locked_md5: str | None = None,
) -> StatusInputs:
    """The status rule's inputs for a model or dataset.

    `spec_digest` is its spec's digest now (None: no spec, a registered entry); `built` what
    its manifest records (None: not built); `parents` the models its spec names
    (`parents.parents_of`: none for `model: auto`, whose pick is not judged);
    `manifest_id(name)` a model's manifest id now and `dataset_id(name)` a dataset's (None
    when it has none, cannot be read or is not declared); `locked_md5` the md5 its folder's
    dvc.lock records for the weights (None: no lock entry, or a reader without locks).
    """
    if built is None:
        return StatusInputs(spec_digest is not None, False, spec_digest)
    return StatusInputs(
        spec_digest is not None,
        True,
        spec_digest,
        built.spec_digest,
        combined_id([manifest_id(p) for p in parents]),
        built.source_id,
        built.weights_md5,
        locked_md5,
        tuple((name, recorded, dataset_id(name)) for name, recorded in built.datasets),
    )
