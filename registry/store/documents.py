"""Reading documents at the file boundary: parse YAML or JSON text and validate it against
its JSON Schema, raising one located error (file, JSON pointer, line) for the first problem.

The records (`records/core.py`) hold documents that passed here; the schema-valid cache
(`_validcache`) lets a check skip documents that passed before.
"""

from __future__ import annotations

import difflib
from typing import Any

from stemma import schemas
from stemma.registry.errors import SchemaError
from stemma.registry.rules.pointer import pointer as _pointer
from stemma.registry.store import _validcache
from stemma.registry.store.files import parse_json_text
from stemma.registry.store.yamlio import line_of, load_yaml_text

# jsonschema and PyYAML load on first use inside `schemas.validator` and `yamlio`: `stemma ls`
# and `stemma query` read the DuckDB index and never parse a spec or validate a document.


def validate_document(doc: Any, schema: str, display: str, text: str | None = None) -> None:
    """Raise `SchemaError` for the first (most relevant) schema violation of `doc`."""
    key = _validcache.known(schema, doc)
    if key is True:  # passed this schema before, unchanged (while the checks run)
        return
    check = schemas.validator(schema)
    if check.is_valid(doc):
        _validcache.record(key)
        return
    errors = sorted(
        check.iter_errors(doc),
        key=lambda e: (list(map(str, e.absolute_path)), e.validator or ""),
    )
    if not errors:
        return
    err = errors[0]
    parts: list[str | int] = list(err.absolute_path)
    reason = err.message
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = err.schema.get("properties", {})
        extra = sorted(k for k in err.instance if k not in known)
        if extra:
            parts.append(extra[0])
            reason = f"unknown key {extra[0]!r}"
            close = difflib.get_close_matches(extra[0], list(known), n=1, cutoff=0.6)
            if close:
                reason += f"; did you mean {close[0]!r}?"
    elif (
        err.validator == "pattern" and isinstance(err.schema, dict) and "description" in err.schema
    ):
        # the schema says what the pattern means ("a comparison such as '>= 0.90'"); the
        # raw regular expression helps nobody
        reason = f"expected {err.schema['description']}, got {err.instance!r}"
    elif err.validator == "required":
        reason = f"missing required field: {err.message}"
        if isinstance(err.schema, dict) and "errorMessage" in err.schema:
            # a block another field asks for (relation: quantized): point at it, say why
            parts.append(next(k for k in err.validator_value if k not in err.instance))
            reason = str(err.schema["errorMessage"])
    elif err.schema is False:  # a field its context never reads
        unread, reason = _unread_field(check.schema, doc, parts, list(err.absolute_schema_path))
        if unread is not None:
            parts.append(unread)
    line = line_of(text, parts) if text is not None else None
    if len(reason) > 200:
        reason = reason[:197] + "..."
    raise SchemaError(display, reason, pointer=_pointer(parts), line=line)


def _unread_field(
    schema: Any, doc: Any, parts: list[str | int], schema_path: list[Any]
) -> tuple[str | None, str]:
    """The field a `false` schema under `properties` refuses, and why: the family does not
    read it (jsonschema reports these at the object, not at the field)."""
    node, parent = schema, doc
    for step in schema_path:
        node = node[step]
    for part in parts:
        parent = parent[part]
    if not (isinstance(node, dict) and isinstance(parent, dict)):
        return None, "a value that is not allowed here"
    key = next((k for k in sorted(parent) if node.get(k) is False), None)
    family = parent.get("family")
    if key is None:
        return None, "a value that is not allowed here"
    if "dependentSchemas" in schema_path:  # two fields that say the same thing
        other = schema_path[schema_path.index("dependentSchemas") + 1]
        if family is None:  # top-level blocks (a quantize block allows no training)
            return key, f"{key!r} does not apply with {other!r}; remove it"
        return key, f"family {family!r} takes {other!r} or {key!r}, not both"
    if family is not None:
        return key, f"{key!r} is not read by family {family!r}; remove it"
    return key, f"{key!r} is not allowed here"


def parse_yaml_document(text: str, schema: str, display: str) -> dict[str, Any]:
    """Parse and validate YAML text; an empty document is an empty mapping."""
    doc = load_yaml_text(text, display)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SchemaError(display, "expected a mapping at the top level", pointer="/", line=1)
    validate_document(doc, schema, display, text)
    return doc


def parse_json_document(text: str, schema: str, display: str) -> dict[str, Any]:
    """Parse and validate JSON text."""
    doc = parse_json_text(text, display)
    if not isinstance(doc, dict):
        raise SchemaError(display, "expected an object at the top level", pointer="/")
    validate_document(doc, schema, display)
    return doc
