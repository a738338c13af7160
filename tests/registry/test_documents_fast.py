"""The compiled schema checks only ever say "passes" for a document jsonschema accepts."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from stemma import schemas
from stemma.registry.errors import SchemaError
from stemma.registry.store import documents

ZOO = Path(__file__).resolve().parents[2] / "zoo"
# Values that break types, ranges, enums and patterns (bool against int, 64.0 as an integer).
ODD = [None, True, False, 0, 1, -1, 1.5, 64.0, 10**20, "", "x", "adamw", ">= 0.9", [], ["a", "a"]]
ODD += [{}, {"a": 1}, "finetune", "mlp", 1e-9]


def zoo_documents() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for kind in ("models", "datasets"):
        for path in sorted((ZOO / kind).glob("*/spec.yaml")):
            found.append((f"{kind[:-1]}-spec", yaml.safe_load(path.read_text())))
        for path in sorted((ZOO / kind).glob("*/manifest.json")):
            found.append((f"{kind[:-1]}-manifest", json.loads(path.read_text())))
    return found


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items: Any = ()
    if isinstance(doc, (dict, list)):
        items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for key, value in items:
        yield from _paths(value, (*prefix, key))


def mutated(doc: Any, rng: random.Random) -> Any:
    """`doc` with one field removed, replaced by an odd value, or an unknown one added."""
    doc = copy.deepcopy(doc)
    path = rng.choice([p for p in _paths(doc) if p])
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    roll = rng.random()
    if roll < 0.3 and isinstance(parent, dict):
        del parent[path[-1]]
    elif roll < 0.4 and isinstance(parent, dict):
        parent[rng.choice(["extra", "famly", "path", "config", "lora", "quantize"])] = 1
    else:
        parent[path[-1]] = rng.choice(ODD)
    return doc


def test_every_schema_compiles() -> None:
    assert all(documents._compiled(name) is not None for name in schemas.SCHEMAS)


def test_the_zoo_passes_the_compiled_checks() -> None:
    docs = zoo_documents()
    assert len(docs) > 20
    assert all(documents._passes(schema, doc) for schema, doc in docs)


def test_a_document_the_compiled_checks_pass_is_valid() -> None:
    rng = random.Random(0)
    invalid = 0
    for schema, doc in zoo_documents():
        check = schemas.validator(schema)
        for _ in range(40):
            bad = mutated(doc, rng)
            valid = check.is_valid(bad)
            invalid += not valid
            assert valid or not documents._passes(schema, bad), json.dumps(bad)[:300]
    assert invalid > 500  # the mutations do break documents


@pytest.mark.parametrize("value", [True, 64.0, "64", None])
def test_a_wrong_batch_size_keeps_its_message(value: Any) -> None:
    spec = yaml.safe_load((ZOO / "models/digits-rotated-ft/spec.yaml").read_text())
    documents.validate_document(spec, "model-spec", "models/m/spec.yaml")  # valid as it is
    spec["training"]["batch_size"] = value
    with pytest.raises(SchemaError) as caught:
        documents.validate_document(spec, "model-spec", "models/m/spec.yaml")
    assert "/training/batch_size" in str(caught.value)
