"""Records are read by their dataclass fields: each annotation picks the read, each default
says whether the key may be absent, and a record built in code writes its keys in field order."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Annotated, Any

import pytest
from stemma.registry.errors import SchemaError
from stemma.registry.records import manifest
from stemma.registry.records._reader import NULLABLE, OneOf, Record
from stemma.registry.records.manifest import (
    Check,
    FileRef,
    ModelRef,
    Source,
    Split,
    Transfer,
    Weights,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Sample(Record):
    """One field of each kind the reader knows."""

    text: str
    count: int
    ratio: float
    flag: bool
    kind: Annotated[str, OneOf("a", "b")]
    maybe: float | None  # required, and null is allowed
    ref: ModelRef
    refs: tuple[ModelRef, ...]
    names: tuple[str, ...]
    table: Mapping[str, int]
    members: Mapping[str, ModelRef]
    free: Mapping[str, Any]
    note: str | None = None  # may be absent, never null
    label: Annotated[str | None, NULLABLE] = None  # may be absent or null


def _sample() -> dict[str, Any]:
    return {
        "text": "t",
        "count": 3,
        "ratio": 0.5,
        "flag": False,
        "kind": "a",
        "maybe": None,
        "ref": {"model": "m", "id": "sha256:1"},
        "refs": [{"model": "n", "id": "sha256:2"}],
        "names": ["x", "y"],
        "table": {"x": 1},
        "members": {"base": {"model": "b", "id": "sha256:3"}},
        "free": {"any": [1, {"thing": None}]},
    }


def test_each_annotation_reads_its_kind() -> None:
    doc = _sample()
    record = Sample.from_dict(doc)
    assert record.ref == ModelRef.of("m", "sha256:1")
    assert record.refs == (ModelRef.of("n", "sha256:2"),)
    assert record.names == ("x", "y") and record.table == {"x": 1}
    assert record.members["base"].model == "b" and record.free == doc["free"]
    assert record.maybe is None and record.has("maybe") and not record.has("note")
    assert record.to_dict() == doc
    nulled = {**doc, "label": None, "note": "n"}
    assert Sample.from_dict(nulled).to_dict() == nulled


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"text": 1}, "at /text: expected a string, got an integer"),
        ({"count": 1.5}, "at /count: expected an integer, got a number"),
        ({"count": True}, "at /count: expected an integer, got a boolean"),
        ({"ratio": "1"}, "at /ratio: expected a number, got a string"),
        ({"flag": 0}, "at /flag: expected a boolean, got an integer"),
        ({"kind": "c"}, "at /kind: expected one of [\"'a'\", \"'b'\"], got 'c'"),
        ({"kind": True}, "at /kind: expected one of [\"'a'\", \"'b'\"], got True"),
        ({"maybe": "1"}, "at /maybe: expected a number, got a string"),
        ({"note": None}, "at /note: expected a string, got null"),
        ({"label": 1}, "at /label: expected a string, got an integer"),
        ({"ref": [1]}, "at /ref: expected an object, got an array"),
        ({"ref": {"model": "m"}}, "at /ref: missing required field: 'id'"),
        ({"refs": {}}, "at /refs: expected an array, got an object"),
        ({"refs": [1]}, "at /refs/0: expected an object, got an integer"),
        ({"names": ["a", 2]}, "at /names/1: expected a string, got an integer"),
        ({"table": {"a/b": "1"}}, "at /table/a~1b: expected an integer, got a string"),
        ({"members": {"x": 1}}, "at /members/x: expected an object, got an integer"),
        ({"free": []}, "at /free: expected an object, got an array"),
        ({"extra": 1}, "at /extra: unknown key 'extra'"),
    ],
)
def test_a_wrong_value_is_refused_at_its_pointer(change: dict[str, Any], expected: str) -> None:
    with pytest.raises(SchemaError) as caught:
        Sample.from_dict({**_sample(), **change}, "x.json", "/at")
    assert str(caught.value) == "x.json " + expected.replace("at /", "at /at/", 1)


@pytest.mark.parametrize("key", ["text", "maybe", "ref", "refs", "free"])
def test_a_required_field_is_missed_at_its_object(key: str) -> None:
    doc = _sample()
    del doc[key]
    with pytest.raises(SchemaError) as caught:
        Sample.from_dict(doc, "x.json")
    assert str(caught.value) == f"x.json at /: missing required field: {key!r}"


def test_every_manifest_record_has_a_reader() -> None:
    """Each record class of the manifests reads (its plan is made on its first read)."""
    records = [c for _, c in inspect.getmembers(manifest, inspect.isclass) if issubclass(c, Record)]
    assert len(records) >= 30
    for cls in records:
        if cls is Record:
            continue
        required = [f for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        if any(f.default_factory is dataclasses.MISSING for f in required):
            with pytest.raises(SchemaError, match="missing required field"):
                cls.from_dict({})
        else:
            assert cls.from_dict({}).to_dict() == {}


def test_a_new_block_writes_its_fields_in_order() -> None:
    ref = FileRef.of("w.safetensors", "m" * 32, "s" * 64, 10, "safetensors")
    assert ref.keys == ("path", "md5", "sha256", "bytes", "format")
    assert FileRef.from_dict(ref.to_dict()) == ref
    assert Source.of("base", "finetune", "sha256:1").keys == ("model", "relation", "id")
    merged = Source.of("a", "merge", "sha256:1", (ModelRef.of("a", "sha256:2"),))
    assert merged.keys == ("model", "relation", "id", "parents")
    assert Source.from_dict(merged.to_dict()) == merged
    weights = Weights(path="w", md5="m", sha256="s", bytes=1, format="safetensors")
    assert "shards" not in weights.to_dict()
    assert Split.of(2, {"0": 2}) == Split(samples=2, class_counts={"0": 2})


def test_keys_given_are_kept_and_extra_keys_follow_the_fields() -> None:
    block = Transfer(keys=("mapping", "mode"), mapping=None, mode="registered")
    assert block.to_dict() == {"mapping": None, "mode": "registered"}
    assert Transfer(mode="finetune").to_dict() == {"mode": "finetune"}
    check = Check(passed=False, extra={"figures": {"drop": 0.2}})
    assert check.to_dict() == {"passed": False, "figures": {"drop": 0.2}}
    assert Check.from_dict(check.to_dict()) == check


@dataclasses.dataclass(frozen=True, slots=True)
class _NoReader(Record):
    tags: set[str]


@dataclasses.dataclass(frozen=True, slots=True)
class _NeverAbsent(Record):
    name: str = "x"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _KeywordOnly(Record):
    name: str


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (_NoReader, "_NoReader.tags: no reader for set"),
        (_NeverAbsent, "_NeverAbsent.name: an optional field must allow None"),
        (_KeywordOnly, "_KeywordOnly.name: a record's fields are positional"),
    ],
)
def test_a_field_the_reader_cannot_read_is_refused_by_name(
    cls: type[Record], expected: str
) -> None:
    with pytest.raises(TypeError, match=expected):
        cls.from_dict({"tags": [], "name": "n"})
