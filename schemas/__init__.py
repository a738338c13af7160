"""JSON Schemas (2020-12) for stemma's files, and a loader for compiled validators."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

SCHEMAS = ("settings", "dataset-spec", "model-spec", "dataset-manifest", "model-manifest")
BASE = "https://stemma.dev/schemas/"


@cache
def load(name: str) -> dict[str, Any]:
    """The schema document called `name` (e.g. "model-spec")."""
    text = resources.files(__name__).joinpath(f"{name}.json").read_text()
    doc: dict[str, Any] = json.loads(text)
    return doc


@cache
def validator(name: str) -> Any:
    """A compiled `Draft202012Validator` for schema `name`, with `$ref`s resolved locally."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    resources_ = [
        (BASE + f"{n}.json", Resource.from_contents(load(n))) for n in (*SCHEMAS, "defs")
    ]
    registry: Registry[Any] = Registry().with_resources(resources_)
    return Draft202012Validator(load(name), registry=registry)
