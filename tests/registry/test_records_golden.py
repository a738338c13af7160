"""Every manifest in the repository survives the typed records byte for byte.

For each manifest.json under zoo/, examples/*/ and tests/data/: document -> typed record ->
`to_dict()` -> the canonical JSON stemma writes gives the file's bytes, and the content id is
the recorded one. A seeded set of broken copies (a required field removed, a value of the
wrong type) is refused with an error naming the file and the JSON pointer.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stemma.registry.errors import SchemaError
from stemma.registry.records.core import Manifest
from stemma.registry.records.manifest import (
    DatasetManifest,
    Gate,
    ModelManifest,
    dataset_record,
    manifest_record,
    model_record,
    record_of,
)
from stemma.registry.store.files import canonical_json, content_id

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"


def _manifests() -> list[Path]:
    found: set[Path] = set()
    for pattern in ("zoo/**/manifest.json", "examples/*/**/manifest.json"):
        found.update(REPO.glob(pattern))
    found.update((REPO / "tests" / "data").rglob("manifest.json"))
    return sorted(found)


MANIFESTS = _manifests()


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in paths]


def test_the_repository_has_manifests_of_both_kinds() -> None:
    kinds = {json.loads(p.read_text())["kind"] for p in MANIFESTS}
    assert kinds == {"model", "dataset"}
    assert len(MANIFESTS) >= 20


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_round_trip_keeps_bytes_and_id(path: Path) -> None:
    raw = path.read_bytes()
    doc = json.loads(raw)
    record = manifest_record(doc, str(path.relative_to(REPO)))
    assert isinstance(record, ModelManifest if doc["kind"] == "model" else DatasetManifest)
    back = record.to_dict()
    # the same document, key order included at every depth, numbers of the same type
    assert json.dumps(back) == json.dumps(doc)
    assert back == doc
    assert canonical_json(back).encode() == raw
    assert content_id(back) == doc["id"] == record.id


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_key_order_of_the_document_is_kept(path: Path) -> None:
    """A document in another key order (as a build assembles it) comes back in that order."""
    doc = json.loads(path.read_text())
    shuffled = _shuffle(doc, random.Random(path.name))
    assert json.dumps(manifest_record(shuffled).to_dict()) == json.dumps(shuffled)


def _shuffle(node: Any, rng: random.Random) -> Any:
    if isinstance(node, dict):
        keys = list(node)
        rng.shuffle(keys)
        return {k: _shuffle(node[k], rng) for k in keys}
    if isinstance(node, list):
        return [_shuffle(v, rng) for v in node]
    return node


def test_typed_view_of_a_manifest() -> None:
    path = next(p for p in MANIFESTS if "digits-rotated-ft" in str(p))
    doc = json.loads(path.read_text())
    manifest = Manifest(
        name="digits-rotated-ft", path="models/digits-rotated-ft/manifest.json", raw=doc
    )
    record = model_record(manifest)
    assert record == record_of(manifest) == ModelManifest.from_dict(doc)
    assert record.name == "digits-rotated-ft"
    assert record.source is not None and record.source.id == manifest.source_id
    assert record.metrics == manifest.metrics
    assert record.run.numerics is not None and record.run.numerics.mode == "portable"
    assert record.checks is not None and record.checks["drift"].passed in (True, False)
    assert record.to_dict() == doc
    with pytest.raises(SchemaError) as caught:
        dataset_record(manifest)
    assert str(caught.value) == (
        "models/digits-rotated-ft/manifest.json at /kind: not a dataset manifest (kind 'model')"
    )


def test_reading_records_stays_out_of_the_light_commands() -> None:
    """`stemma ls` imports records/core.py; the thirty record classes cost it a sixth of its
    time, so only the readers of manifests import them."""
    code = (
        "import sys, stemma.registry.records.core, stemma.registry.store.handle;"
        " print('stemma.registry.records.manifest' in sys.modules)"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False"


# ---- broken copies -------------------------------------------------------------------------

# values of each JSON type, to put where the schema wants another type
_WRONG: tuple[tuple[str, Any], ...] = (
    ("array", [1]),
    ("object", {"x": 1}),
    ("string", "7"),
    ("boolean", True),
    ("number", 7.5),  # not an integer either
)


def _schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text())
    return loaded


DEFS = _schema("defs")["$defs"]


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    return DEFS[ref.rsplit("/", 1)[-1]]  # "defs.json#/$defs/run", "#/$defs/file"


def _sites(schema: dict[str, Any], doc: Any, where: str) -> Iterator[tuple[str, str, str, Any]]:
    """(pointer of the change, action, key, wrong value) for every place the schema types."""
    schema = _resolve(schema)
    if "oneOf" in schema:  # source: null or a block
        if doc is None:
            return
        schema = next(s for s in schema["oneOf"] if s.get("type") == "object")
    if isinstance(doc, dict):
        for key in schema.get("required", []):
            yield where, "delete", key, None
        props = schema.get("properties", {})
        other = schema.get("additionalProperties")
        for key, value in doc.items():
            sub = props.get(key, other if isinstance(other, dict) else None)
            if sub is None:
                continue
            sub = _resolve(sub)
            kinds = sub.get("type")
            kinds = [kinds] if isinstance(kinds, str) else (kinds or [])
            if "enum" in sub or "const" in sub:
                yield where, "set", key, 12345
            elif kinds:
                for kind, wrong in _WRONG:
                    if kind not in kinds and not (kind == "number" and "number" in kinds):
                        yield where, "set", key, wrong
            yield from _sites(sub, value, f"{where}/{key}")
    elif isinstance(doc, list) and "items" in schema and doc:
        for i in sorted({0, len(doc) - 1}):
            yield from _sites(schema["items"], doc[i], f"{where}/{i}")


def _apply(doc: dict[str, Any], pointer: str, action: str, key: str, value: Any) -> None:
    node: Any = doc
    for part in pointer.split("/")[1:]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if action == "delete":
        del node[key]
    else:
        node[key] = value


def _broken_copies() -> list[tuple[Path, str, str, str, Any]]:
    cases: list[tuple[Path, str, str, str, Any]] = []
    for path in MANIFESTS:
        doc = json.loads(path.read_text())
        schema = _schema(f"{doc['kind']}-manifest")
        cases += [(path, *site) for site in _sites(schema, doc, "")]
    return cases


def test_every_broken_copy_is_refused_where_it_is_broken() -> None:
    """A seeded sample of the broken copies: each error names the file and the pointer."""
    cases = _broken_copies()
    assert len(cases) > 500
    rng = random.Random(34)
    for path, pointer, action, key, value in rng.sample(cases, 400):
        doc = json.loads(path.read_text())
        _apply(doc, pointer, action, key, value)
        display = str(path.relative_to(REPO))
        with pytest.raises(SchemaError) as caught:
            manifest_record(doc, display)
        err = caught.value
        expected = (pointer or "/") if action == "delete" else f"{pointer}/{key}"
        assert err.path == display, (pointer, action, key)
        assert err.pointer == expected, (pointer, action, key, err.message)
        assert str(err).startswith(f"{display} at {expected}: ")
        if action == "delete":
            assert f"missing required field: {key!r}" in err.reason


def test_a_missing_field_and_a_wrong_type_name_file_and_pointer() -> None:
    path = next(p for p in MANIFESTS if "digits-5to9-ft" in str(p))
    doc = json.loads(path.read_text())
    gone = copy.deepcopy(doc)
    del gone["architecture"]["tensors"][2]["dtype"]
    with pytest.raises(SchemaError) as caught:
        ModelManifest.from_dict(gone, "models/digits-5to9-ft/manifest.json")
    assert str(caught.value) == (
        "models/digits-5to9-ft/manifest.json at /architecture/tensors/2:"
        " missing required field: 'dtype'"
    )
    wrong = copy.deepcopy(doc)
    wrong["metrics"]["accuracy"] = "0.9"
    with pytest.raises(SchemaError) as caught:
        ModelManifest.from_dict(wrong, "models/digits-5to9-ft/manifest.json")
    assert str(caught.value) == (
        "models/digits-5to9-ft/manifest.json at /metrics/accuracy: expected a number, got a string"
    )
    flag = copy.deepcopy(doc)
    flag["parameters"]["total"] = True  # JSON's true is no integer
    with pytest.raises(SchemaError, match="at /parameters/total: expected an integer"):
        ModelManifest.from_dict(flag)
    extra = copy.deepcopy(doc)
    extra["parameters"]["totl"] = 1
    with pytest.raises(SchemaError, match="at /parameters/totl: unknown key 'totl'"):
        ModelManifest.from_dict(extra)


def test_a_block_reads_on_its_own_at_its_pointer() -> None:
    gate = {"metric": "accuracy", "op": ">=", "threshold": 0.9, "value": None, "passed": False}
    record = Gate.from_dict(gate, "report.json", "/gates/0")
    assert record.value is None and record.has("value") and record.to_dict() == gate
    with pytest.raises(SchemaError) as caught:
        Gate.from_dict({**gate, "op": "=>"}, "report.json", "/gates/0")
    assert str(caught.value).startswith("report.json at /gates/0/op: expected one of")
