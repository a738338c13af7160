"""JSON Schemas (2020-12) for stemma's files, and a loader for compiled validators."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

SCHEMAS = ("settings", "dataset-spec", "model-spec", "dataset-manifest", "model-manifest")
# References into the shared definitions, from a schema file or from within defs.json.
PREFIXES = ("defs.json#/$defs/", "#/$defs/")
# A reference into another schema of this folder, such as `model-spec.json#/properties/x`.
_OTHER = re.compile(r"([a-z-]+)\.json#((?:/[A-Za-z0-9_-]+)+)")


@cache
def load(name: str) -> dict[str, Any]:
    """The schema document called `name` (e.g. "model-spec"), as published."""
    text = resources.files(__name__).joinpath(f"{name}.json").read_text()
    doc: dict[str, Any] = json.loads(text)
    return doc


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace `$ref`s into defs.json (and into another schema, `NAME.json#/POINTER`) by
    their targets: resolving references at every validation costs about as much as the
    validation itself."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        prefix = next((p for p in PREFIXES if isinstance(ref, str) and ref.startswith(p)), None)
        target: Any = None
        if prefix is not None:
            target = _inline(defs[str(ref)[len(prefix) :]], defs)
        elif isinstance(ref, str) and (match := _OTHER.fullmatch(ref)):
            target = load(match.group(1))
            for part in match.group(2).split("/")[1:]:
                target = target[part]
            target = _inline(target, defs)
        if target is not None:
            rest = {k: _inline(v, defs) for k, v in node.items() if k != "$ref"}
            return {**target, **rest}
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _is_integer(checker: Any, instance: Any) -> bool:
    # JSON Schema counts 64.0 as an integer; training cannot take a batch of 64.0 samples.
    return isinstance(instance, int) and not isinstance(instance, bool)


@cache
def validator(name: str) -> Any:
    """A compiled validator (2020-12) for schema `name`, references inlined, where an
    integer is an integer (not a float with no fraction)."""
    from jsonschema import Draft202012Validator, validators

    checker = Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer)
    strict = validators.extend(Draft202012Validator, type_checker=checker)
    schema = _inline(load(name), load("defs")["$defs"])
    return strict(schema)
