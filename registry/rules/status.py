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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
