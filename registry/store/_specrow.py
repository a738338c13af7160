"""A spec as the index holds it: its canonical JSON (the text `files.digest` hashes) and the
fields the index stores, picked in Python. The SQL of `_sql` picks the same fields in bulk;
this is the reference it is tested against, and the path for specs that SQL flags.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from stemma.registry.errors import SchemaError, StemmaError
from stemma.registry.records.core import DATASET_SPEC, MODEL_SPEC
from stemma.registry.rules.parents import parents_of, primary
from stemma.registry.store.documents import validate_document
from stemma.registry.store.yamlio import fast_canonical, load_yaml_text


def _yaml_mapping(path: str, text: str) -> dict[str, Any]:
    doc = load_yaml_text(text, path)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SchemaError(path, "expected a mapping at the top level", pointer="/", line=1)
    return doc


def spec_json(display: str, text: str) -> str:
    """A spec's compact, key-sorted JSON (what `files.digest` hashes); located errors for
    files that are not YAML mappings of plain data."""
    compact = fast_canonical(text)
    if compact is not None:
        return compact
    doc = _yaml_mapping(display, text)
    try:
        return json.dumps(
            doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError):
        raise _schema_error(display, doc, text) from None


def _schema_error(display: str, doc: dict[str, Any], text: str) -> StemmaError:
    """The schema's own located error for a spec the index cannot take, else a plain one."""
    schema = DATASET_SPEC if "datasets/" in f"/{display}" else MODEL_SPEC
    validate_document(doc, schema, display, text)  # raises, with pointer and line
    return SchemaError(display, "cannot index this spec: a value is not plain data")


# (path, canonical JSON, digest, source, relation, train, eval, family, description, parents)
SpecRow = tuple[Any, ...]
SPEC_COLUMNS = (
    "path",
    "spec",
    "digest",
    "source",
    "relation",
    "train",
    "eval",
    "family",
    "description",
    "parents",  # JSON list of `parents.parents_of` (None: no parent named)
)


class _Unindexable(Exception):
    """A spec whose fields the index needs are missing or of the wrong type."""


def spec_row(path: str, compact: str, display: str, text: str) -> SpecRow:
    """The fields the index stores for one spec, picked in Python: the reference for the SQL
    that picks them in bulk, used for the specs that SQL flags. Raises located errors."""
    doc = json.loads(compact)
    try:
        fields = _fields(path, doc)
    except _Unindexable:
        raise _schema_error(display, doc, text) from None
    return (path, compact, "sha256:" + hashlib.sha256(compact.encode()).hexdigest(), *fields)


def _fields(path: str, doc: dict[str, Any]) -> tuple[str | None, ...]:
    description = _opt_str(doc.get("description"))
    tags = doc.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise _Unindexable
    source = relation = train = eval_ = family = None
    if path.startswith("models/"):
        src, data, arch = doc.get("source"), doc.get("data"), doc.get("architecture")
        if src:
            if not isinstance(src, dict):
                raise _Unindexable
            # a merge names several (`parents_of`); the first stands where one name fits
            source = _req_str(src.get("model") if "models" not in src else primary(doc))
            relation = _req_str(src.get("relation", "finetune"))
        if not isinstance(data, dict):
            raise _Unindexable
        train = _req_str(data.get("train"))
        eval_ = _req_str(data.get("eval", train))
        if arch is not None:
            if not isinstance(arch, dict):
                raise _Unindexable
            family = _opt_str(arch.get("family"))
    else:
        source = _req_str(doc.get("source"))
    named = parents_of(doc) if path.startswith("models/") else ()
    return (
        source,
        relation,
        train,
        eval_,
        family,
        description,
        json.dumps(named) if named else None,
    )


def _req_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Unindexable
    return value


def _opt_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _Unindexable
    return value
