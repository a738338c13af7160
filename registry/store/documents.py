"""Reading documents at the file boundary: parse YAML or JSON text and validate it against
its JSON Schema, raising one located error (file, JSON pointer, line) for the first problem.

The records (`records/core.py`) hold documents that passed here; the schema-valid cache
(`_validcache`) lets a check skip documents that passed before.
"""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Callable
from functools import cache
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
    if _passes(schema, doc) or check.is_valid(doc):
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


# -- the fast path ----------------------------------------------------------------------------
# jsonschema walks a document at about a microsecond per schema node it visits: a model's spec
# and manifest cost about a millisecond, most of a cold `stemma validate` (one without the
# `_validcache` digests). Nearly every document passes, so each schema is also compiled to
# plain Python checks that only say "passes": a document they pass is valid, and anything
# else (a failure, or a value they are unsure of) goes to jsonschema, which decides and words
# every message. The checks follow jsonschema's own keyword functions (Draft 2020-12, with
# stemma's integer), exactly, or raise `_Unsure`.

_Check = Callable[[Any], bool]
# Keywords that never fail a document (annotations, and `then`/`else`, which `if` reads).
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "examples", "errorMessage"}
    | {"then", "else"}
)


class _Unsure(Exception):
    """A value the compiled checks do not judge: let jsonschema decide."""


class _Unsupported(Exception):
    """A schema keyword the compiler does not know: that schema always uses jsonschema."""


def _passes(schema: str, doc: Any) -> bool:
    """True when the compiled checks of `schema` pass `doc` (then jsonschema would too)."""
    check = _compiled(schema)
    if check is None:
        return False
    try:
        return check(doc)
    except (_Unsure, RecursionError):
        return False


@cache
def _compiled(schema: str) -> _Check | None:
    """The compiled checks of a stemma schema, or None when it uses an unknown keyword."""
    try:
        return _compile(schemas.validator(schema).schema)
    except _Unsupported:
        return None


def _is_number(x: Any) -> bool:
    kind = type(x)
    if kind is int or kind is float:
        return True
    if kind is bool or not isinstance(x, numbers.Number):
        return False
    raise _Unsure  # another kind of number: jsonschema's rules, not these


_TYPES: dict[str, _Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": _is_number,
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}
_SCALARS = (str, int, float, bool, type(None))


def _equal_scalar(value: Any, x: Any) -> bool:
    """jsonschema's `equal` where `value` (from the schema) is a str, number, bool or None."""
    if isinstance(value, str) or isinstance(x, str):
        return bool(value == x)
    if isinstance(value, bool) or isinstance(x, bool):
        return type(value) is type(x) and value == x
    if isinstance(x, (list, dict)):
        return False
    return bool(value == x)


def _compile(node: Any) -> _Check:
    """Checks equivalent to `node` (a schema), as one function."""
    if node is True:
        return lambda x: True
    if node is False:
        return lambda x: False
    if not isinstance(node, dict):
        raise _Unsupported
    found = [_keyword(key, value, node) for key, value in node.items() if key not in _ANNOTATIONS]
    checks = [c for c in found if c is not None]
    if len(checks) == 1:
        return checks[0]

    def all_of(x: Any) -> bool:
        return all(check(x) for check in checks)

    return all_of


def _keyword(key: str, value: Any, node: dict[str, Any]) -> _Check | None:
    """The check of one keyword of `node` (None: it checks nothing by itself)."""
    if key == "type":
        names = [value] if isinstance(value, str) else list(value)
        if any(n not in _TYPES for n in names):
            raise _Unsupported
        tests = [_TYPES[n] for n in names]
        if len(tests) == 1:
            return tests[0]
        return lambda x: any(t(x) for t in tests)
    if key == "properties":
        props = {name: _compile(sub) for name, sub in value.items()}

        def properties(x: Any) -> bool:
            # by the document's keys: a spec has a few of the schema's thirty properties
            if isinstance(x, dict):
                for name, item in x.items():
                    check = props.get(name)
                    if check is not None and not check(item):
                        return False
            return True

        return properties
    if key == "additionalProperties":
        known = frozenset(node.get("properties", {}))
        patterns = "|".join(node.get("patternProperties", {}))
        extra = _compile(value)

        def additional(x: Any) -> bool:
            if isinstance(x, dict):
                for name in x:
                    if name in known or (patterns and re.search(patterns, name)):
                        continue
                    if not extra(x[name]):
                        return False
            return True

        return additional
    if key == "patternProperties":
        pairs = [(pattern, _compile(sub)) for pattern, sub in value.items()]

        def pattern_properties(x: Any) -> bool:
            if isinstance(x, dict):
                for pattern, check in pairs:
                    for name, item in x.items():
                        if re.search(pattern, name) and not check(item):
                            return False
            return True

        return pattern_properties
    if key == "required":
        needed = list(value)
        return lambda x: not isinstance(x, dict) or all(n in x for n in needed)
    if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if not _is_number(value):
            raise _Unsupported
        bound = value
        if key == "minimum":
            return lambda x: not _is_number(x) or not x < bound
        if key == "maximum":
            return lambda x: not _is_number(x) or not x > bound
        if key == "exclusiveMinimum":
            return lambda x: not _is_number(x) or not x <= bound
        return lambda x: not _is_number(x) or not x >= bound
    if key in ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"):
        size: int = value
        kind = {"Length": str, "Items": list, "Properties": dict}[key[3:]]
        if key.startswith("min"):
            return lambda x: not isinstance(x, kind) or len(x) >= size
        return lambda x: not isinstance(x, kind) or len(x) <= size
    if key == "pattern":
        regex = re.compile(value)
        return lambda x: not isinstance(x, str) or regex.search(x) is not None
    if key in ("enum", "const"):
        allowed = list(value) if key == "enum" else [value]
        if not all(isinstance(v, _SCALARS) for v in allowed):
            raise _Unsupported
        return lambda x: any(_equal_scalar(v, x) for v in allowed)
    if key == "items":
        if "prefixItems" in node:
            raise _Unsupported
        each = _compile(value)
        return lambda x: not isinstance(x, list) or all(each(item) for item in x)
    if key == "uniqueItems":
        if not value:
            return None
        return _unique
    if key == "propertyNames":
        names_check = _compile(value)
        return lambda x: not isinstance(x, dict) or all(names_check(n) for n in x)
    if key == "dependentSchemas":
        deps = [(name, _compile(sub)) for name, sub in value.items()]
        return lambda x: not isinstance(x, dict) or all(c(x) for n, c in deps if n in x)
    if key in ("allOf", "anyOf", "oneOf"):
        subs = [_compile(sub) for sub in value]
        if key == "allOf":
            return lambda x: all(c(x) for c in subs)
        if key == "anyOf":
            return lambda x: any(c(x) for c in subs)
        return lambda x: sum(1 for c in subs if c(x)) == 1
    if key == "not":
        negated = _compile(value)
        return lambda x: not negated(x)
    if key == "if":
        condition = _compile(value)
        then = _compile(node.get("then", True))
        otherwise = _compile(node.get("else", True))
        return lambda x: then(x) if condition(x) else otherwise(x)
    raise _Unsupported


def _unique(x: Any) -> bool:
    """uniqueItems, for arrays of strings, numbers, booleans and nulls (True apart from 1, as
    jsonschema has it); anything else: jsonschema decides. "Not unique" needs no care: then
    jsonschema decides too."""
    if not isinstance(x, list):
        return True
    if not all(isinstance(item, _SCALARS) for item in x):
        raise _Unsure
    return len({(isinstance(item, bool), item) for item in x}) == len(x)
