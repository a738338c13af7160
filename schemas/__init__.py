"""JSON Schemas (2020-12) for stemma's files, and a loader for compiled validators."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

SCHEMAS = ("settings", "dataset-spec", "model-spec", "dataset-manifest", "model-manifest")
# References into the shared definitions, from a schema file or from within defs.json.
PREFIXES = ("defs.json#/$defs/", "#/$defs/")


@cache
def load(name: str) -> dict[str, Any]:
    """The schema document called `name` (e.g. "model-spec"), as published."""
    text = resources.files(__name__).joinpath(f"{name}.json").read_text()
    doc: dict[str, Any] = json.loads(text)
    return doc


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace `$ref`s into defs.json by their targets: resolving references at every
    validation costs about as much as the validation itself."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        prefix = next((p for p in PREFIXES if isinstance(ref, str) and ref.startswith(p)), None)
        if prefix is not None:
            target = _inline(defs[str(ref)[len(prefix) :]], defs)
            rest = {k: _inline(v, defs) for k, v in node.items() if k != "$ref"}
            return {**target, **rest}
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


@cache
def validator(name: str) -> Any:
    """A compiled `Draft202012Validator` for schema `name`, references inlined."""
    from jsonschema import Draft202012Validator

    schema = _inline(load(name), load("defs")["$defs"])
    return Draft202012Validator(schema)
