"""The parents of a model: the one rule that lists the models a spec is built from.

Every relation but `merge` names one parent, `source: {model: A}`; a merge names two or more,
`source: {relation: merge, models: [A, B, ...], base: C?, merge: {method: ...}}` (one adapter
model alone is an adapter merged into its base). The lineage graph, the `edges` view, the
status rule, `stemma repro`'s order, dvc.yaml's deps, the audit, the card, OpenLineage and the
exploration candidates all take a model's parents from `parents_of`, so a merge has several
parents everywhere alike. Pure: documents in, names out, no files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MERGE = "merge"
AUTO = "auto"
# mergekit's names; the parameters each takes are checked by the build (migration/merge.py)
MERGE_METHODS = ("linear", "task_arithmetic", "ties", "slerp")
# methods that add each model's difference to a base model, which they therefore need
NEEDS_BASE = ("task_arithmetic", "ties")


@dataclass(frozen=True)
class Parent:
    """One parent of a model: its name and where the spec names it (a JSON pointer)."""

    name: str
    pointer: str


def _source(doc: Mapping[str, Any] | Any) -> Mapping[str, Any] | None:
    raw = doc.raw if hasattr(doc, "raw") else doc
    src = raw.get("source") if isinstance(raw, Mapping) else None
    return src if isinstance(src, Mapping) and src else None


def parent_refs(doc: Mapping[str, Any] | Any) -> list[Parent]:
    """Every parent a spec (a document or a `ModelSpec`) names, in its order, with its
    pointer; names that are not text are left out (the schema reports them), duplicates kept
    (`problems` reports them)."""
    src = _source(doc)
    if src is None:
        return []
    if "models" in src:
        models = src["models"] if isinstance(src["models"], list) else []
        out = [Parent(m, f"/source/models/{i}") for i, m in enumerate(models) if isinstance(m, str)]
        if isinstance(src.get("base"), str):
            out.append(Parent(src["base"], "/source/base"))
        return out
    model = src.get("model")
    return [Parent(model, "/source/model")] if isinstance(model, str) and model != AUTO else []


def parents_of(doc: Mapping[str, Any] | Any) -> tuple[str, ...]:
    """The models a spec (a document or a `ModelSpec`) is built from, each once, in the
    order it names them: its source, or a merge's models then its base. `model: auto` names
    none (the exploration picks one: see the manifest)."""
    return tuple(dict.fromkeys(p.name for p in parent_refs(doc)))


def pointer_of(doc: Mapping[str, Any] | Any, name: str) -> str:
    """Where a spec names parent `name` (a JSON pointer: its first mention), so an error
    about one parent points at it; `/source/model` when the spec does not name it."""
    return next((p.pointer for p in parent_refs(doc) if p.name == name), "/source/model")


def is_merge(doc: Mapping[str, Any] | Any) -> bool:
    """True for a spec whose source is a merge of several models (`source.models`)."""
    src = _source(doc)
    return src is not None and "models" in src


def primary(doc: Mapping[str, Any] | Any) -> str | None:
    """The one name shown where a single source fits (the first parent), or None."""
    src = _source(doc)
    if src is None:
        return None
    if "models" not in src:
        model = src.get("model")
        return model if isinstance(model, str) else None
    found = parents_of(doc)
    return found[0] if found else None


def problems(doc: Mapping[str, Any] | Any) -> list[tuple[str, str]]:
    """(pointer, message) for each parent list a build cannot take: a name twice, a merge of
    one model that is not an adapter's merge, or a method that needs a base without one."""
    src = _source(doc)
    if src is None or "models" not in src:
        return []
    found: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    block = src.get("merge")
    method = block.get("method") if isinstance(block, Mapping) else None
    models = src["models"] if isinstance(src["models"], list) else []
    for ref in parent_refs(doc):
        if ref.name in seen:
            twice = f"parent {ref.name!r} is named twice (also at {seen[ref.name]})"
            found.append((ref.pointer, twice))
        else:
            seen[ref.name] = ref.pointer
    if len(models) >= 2 and method is None:
        needs = f"a merge of several models needs merge.method ({', '.join(MERGE_METHODS)})"
        found.append(("/source/merge", needs))
    if method in NEEDS_BASE and "base" not in src:
        found.append(("/source/base", f"method {method} adds differences to a base: name it"))
    if method == "slerp" and len(models) + ("base" in src) != 2:
        found.append(("/source/models", "slerp interpolates between exactly two models"))
    return found


def recorded_parents(manifest: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """(name, manifest id at build time) of every parent a model manifest records: a
    merge's `source.parents`, else its one `source`."""
    src = manifest.get("source")
    if not isinstance(src, Mapping):
        return []
    if isinstance(src.get("parents"), list):
        return [
            (str(p["model"]), p.get("id"))
            for p in src["parents"]
            if isinstance(p, Mapping) and p.get("model")
        ]
    return [(str(src["model"]), src.get("id"))] if src.get("model") else []


def combined_id(ids: Sequence[str | None]) -> str | None:
    """The parents' manifest ids as the one source id a manifest records and the status rule
    compares: a single parent's own id (so existing manifests keep theirs), for several the
    digest of their ids in order; None while a parent has no manifest (not judged).

    `_sql.models_view` computes the same in SQL; tests compare the two."""
    if not ids or any(i is None for i in ids):
        return None
    if len(ids) == 1:
        return ids[0]
    return "sha256:" + hashlib.sha256(" ".join(str(i) for i in ids).encode()).hexdigest()


def parent_map(specs: Mapping[str, Any], known: Any = None) -> dict[str, list[str]]:
    """name -> the parents of each spec in `specs` (name -> spec) that are in `known`
    (default: the specs' own names), for the lineage rules of `dag`."""
    pool = specs if known is None else known
    out: dict[str, list[str]] = {}
    for name, spec in specs.items():
        found = [p for p in parents_of(spec) if p in pool]
        if found:
            out[name] = found
    return out
