"""The manifest blocks a build assembles as typed records write the JSON they always wrote,
and the manifests made of them (`Head`, `Trained`, `dataset_manifest`) are the committed files:
a manifest under zoo/ or examples/ rebuilt from its parts is the same bytes, id included."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from stemma.migration.adapters import adapter_record, lora_block
from stemma.migration.build_inputs import eval_pointer
from stemma.migration.build_outputs import (
    blob_file,
    blob_ref,
    blob_weights,
    dataset_manifest,
    run_record,
)
from stemma.migration.data import materialize, npz_bytes
from stemma.migration.mapping import tensor_row
from stemma.migration.model_manifest import (
    MODEL_HEAD,
    Head,
    Trained,
    counted,
    datasets_block,
    merge_source,
    renamed_pairs,
    transfer_block,
)
from stemma.migration.strategy import Strategy
from stemma.registry import Registry
from stemma.registry.records.core import DATASET_MANIFEST, MODEL_MANIFEST, ModelSpec
from stemma.registry.records.manifest import (
    Adapter,
    DatasetManifest,
    DatasetRef,
    ModelManifest,
    ModelRef,
    Parameters,
    Run,
    Source,
    Split,
    Tensor,
    Transfer,
    Weights,
)
from stemma.registry.rules.layout import MANIFEST_FILE
from stemma.registry.store.documents import validate_document
from stemma.registry.store.files import canonical_json, content_id
from stemma.schemas import load
from torch import nn

REPO = Path(__file__).resolve().parents[2]  # stemma.yaml: the zoo
LM_INT8 = REPO / "examples" / "llm" / "models" / "lm-int8" / MANIFEST_FILE


def test_source_blocks_write_the_keys_they_name() -> None:
    one = Source.of("base", "finetune", "sha256:" + "a" * 64)
    assert one.to_dict() == {"model": "base", "relation": "finetune", "id": "sha256:" + "a" * 64}
    merged = merge_source([("a", "sha256:1"), ("b", "sha256:2")], "sha256:12")
    assert merged.to_dict() == {
        "model": "a",
        "relation": "merge",
        "id": "sha256:12",
        "parents": [{"model": "a", "id": "sha256:1"}, {"model": "b", "id": "sha256:2"}],
    }
    for block in (one, merged):  # read back as any manifest's source block is
        assert Source.from_dict(block.to_dict()) == block


def test_transfer_and_parameters_blocks_keep_nulls_and_extra_keys() -> None:
    rows = [
        tensor_row(
            "body.0.weight",
            "parameter",
            (2, 3),
            "float32",
            "transferred",
            True,
            "features.0.weight",
        ),
        tensor_row("body.0.bias", "parameter", (2,), "float32", "transferred", True, "body.0.bias"),
        tensor_row("head.weight", "parameter", (1, 2), "float32", "new", False, None),
    ]
    assert rows[2].to_dict() == {  # every key, in the order builds write them; null kept
        "name": "head.weight",
        "kind": "parameter",
        "shape": [1, 2],
        "dtype": "float32",
        "origin": "new",
        "frozen": False,
        "source_name": None,
    }
    assert Tensor.from_dict(rows[2].to_dict()) == rows[2]
    strategy = Strategy(mode="finetune", freeze=("body.*",))
    block = transfer_block(strategy, False, ["fc.weight"], True, renamed_pairs(rows))
    assert block.to_dict() == {
        "mapping": None,  # no tensor map: written as null, not left out
        "mode": "finetune",
        "freeze": ["body.*"],
        "reinit": [],
        "unused_source": ["fc.weight"],
        "features_cached": True,
        "pairs": [{"target": "body.0.weight", "source": "features.0.weight"}],
    }
    assert Transfer.from_dict(block.to_dict()) == block

    module = nn.Sequential()
    module.add_module("body", nn.Sequential(nn.Linear(3, 2)))
    module.add_module("head", nn.Linear(2, 1))
    module.body.requires_grad_(False)
    found = counted(dict(module.named_parameters()), rows)
    assert found == Parameters.of(total=11, trainable=3, transferred=8)
    assert found.to_dict() == {"total": 11, "trainable": 3, "transferred": 8}


def test_adapter_block_keeps_the_lora_values_as_given() -> None:
    config = blob_ref("adapter/adapter_config.json", b"{}", "json")
    lora = lora_block({"target_modules": ["q", "v"]})
    block = adapter_record(ModelRef.of("base", "sha256:1"), lora, config, ("head",))
    assert block.to_dict() == {
        "format": "peft-lora",
        "base": {"model": "base", "id": "sha256:1"},
        **lora,
        "modules_to_save": ["head"],
        "config": blob_file("adapter/adapter_config.json", b"{}", "json"),
    }
    assert isinstance(block.to_dict()["alpha"], int)  # 16, not 16.0: the id hashes the JSON
    assert Adapter.from_dict(block.to_dict()) == block
    plain = adapter_record(ModelRef.of("base", "sha256:1"), lora, config)
    assert "modules_to_save" not in plain.to_dict()


def test_split_blocks_count_samples_per_class() -> None:
    assert Split.of(3, {"0": 2, "1": 1}).to_dict() == {
        "samples": 3,
        "class_counts": {"0": 2, "1": 1},
    }
    assert Split.from_dict(Split.of(0, {}).to_dict()) == Split.of(0, {})


def test_run_block_names_what_it_was_given_and_keeps_notes(registry: Registry) -> None:
    begin = time.perf_counter()
    plain = run_record(registry, "2026-01-01T00:00:00Z", begin)
    assert list(plain.to_dict()) == ["started", "duration_s", "stemma", "torch", "numerics"]
    assert plain.device is None and plain.numerics is not None
    assert plain.numerics.fingerprint is not None and plain.numerics.mode == "portable"
    trained = run_record(
        registry, "2026-01-01T00:00:00Z", begin, device="cpu", seed=0, threads=2, train_s=1.5
    )
    doc = trained.to_dict()
    assert list(doc)[5:] == ["device", "seed", "threads", "train_s"]
    assert (trained.device, trained.seed, trained.deterministic) == ("cpu", 0, None)
    assert dict(trained.extra) == {"threads": 2, "train_s": 1.5}
    assert Run.from_dict(doc).to_dict() == doc  # read back as a manifest's run block is


def test_weights_blocks_of_one_file_write_a_file_block() -> None:
    block = blob_weights("weights.safetensors", b"abc", "safetensors")
    assert block.shards is None
    assert block.to_dict() == blob_file("weights.safetensors", b"abc", "safetensors")
    assert Weights.from_dict(block.to_dict()) == block


def test_datasets_rows_write_name_and_id_by_role() -> None:
    refs = {"train": DatasetRef.of("digits", "sha256:1"), "eval": DatasetRef.of("held", "sha256:2")}
    assert datasets_block(refs) == {
        "train": {"name": "digits", "id": "sha256:1"},
        "eval": {"name": "held", "id": "sha256:2"},
    }
    assert DatasetRef.from_dict(refs["train"].to_dict()) == refs["train"]


def test_eval_pointer_names_the_data_a_model_is_scored_on() -> None:
    both = ModelSpec.from_dict("m", {"data": {"train": "a", "eval": "b"}})
    assert eval_pointer(both) == "/data/eval" and both.eval == "b"
    one = ModelSpec.from_dict("m", {"data": {"train": "a"}})
    assert eval_pointer(one) == "/data/train" and one.eval == "a"


# ---- whole manifests, rebuilt from the parts of committed ones ----------------------------

ZOO_MODELS = sorted((REPO / "zoo" / "models").glob(f"*/{MANIFEST_FILE}"))
ZOO_DATASETS = ("digits-0to4", "digits-5to9", "digits-rotated")  # sklearn's digits: no download
BUILD_ROLES = ("train", "eval")  # the build's own datasets; a check's come after them


def _committed(doc: dict[str, Any], schema: str, path: Path) -> str:
    """The file `commit_outputs` writes for a built manifest: the id computed from the rest,
    the document validated against its schema, then canonical JSON."""
    assert doc["id"] == ""  # left for the commit to fill in
    doc["id"] = content_id(doc)
    validate_document(doc, schema, str(path.relative_to(REPO)))
    return canonical_json(doc)


def _model(path: Path) -> ModelManifest:
    return ModelManifest.from_dict(json.loads(path.read_text()), str(path.relative_to(REPO)))


def _head(m: ModelManifest, roles: tuple[str, ...] | None = None) -> Head:
    """The head of `m`, with only its datasets in `roles` (in that order) where given."""
    datasets = dict(m.datasets) if roles is None else {r: m.datasets[r] for r in roles}
    return Head(m.name, m.spec, m.spec_digest, m.source, datasets, m.architecture, m.parameters)


def test_the_head_keys_are_the_schemas_first_properties() -> None:
    schema = load("model-manifest")
    named = [k for k in schema["properties"] if k != "id"]  # the id is written last
    assert tuple(named[: len(MODEL_HEAD)]) == MODEL_HEAD
    assert set(MODEL_HEAD) <= set(schema["required"])


def test_the_zoo_has_models_from_scratch_and_with_check_datasets() -> None:
    """The cases the rebuild below must cover are in the zoo."""
    models = [_model(p) for p in ZOO_MODELS]
    assert any(m.source is None for m in models) and any(m.source for m in models)
    assert any(set(m.datasets) - set(BUILD_ROLES) for m in models)


@pytest.mark.parametrize("path", ZOO_MODELS, ids=[p.parent.name for p in ZOO_MODELS])
def test_a_trained_zoo_model_rebuilt_from_its_blocks_is_its_file(path: Path) -> None:
    m = _model(path)
    assert m.transfer is not None and m.per_class is not None and m.checks is not None
    trained = Trained(_head(m, BUILD_ROLES), m.transfer, m.metrics, m.per_class, m.gates)
    more = {r: d for r, d in m.datasets.items() if r not in BUILD_ROLES}
    built = trained.with_datasets(more).manifest(
        m.weights,
        m.checks,
        task=m.task,
        class_names=m.class_names,
        adapter=m.adapter,
        exploration=m.exploration,
        search=m.search,
        run=m.run,
        tokenizer=m.tokenizer,
    )
    doc = built.to_dict()
    # the head, Trained's blocks, then the later ones given (None ones left out), id last
    blocks = ["transfer", "metrics", "per_class", "gates", "checks", "run"]
    assert list(doc) == [*MODEL_HEAD, *blocks, "id"]
    assert list(doc["datasets"]) == [*BUILD_ROLES, *more]
    assert "source" in doc and (doc["source"] is None) == (m.source is None)  # null, kept
    assert _committed(doc, MODEL_MANIFEST, path) == path.read_text()
    assert doc["id"] == m.id


def test_the_quantized_example_rebuilt_through_head_is_its_file() -> None:
    """lm-int8 (examples/llm) in the blocks and order migration/quantize.py gives `Head`."""
    m = _model(LM_INT8)
    built = _head(m).manifest(
        m.weights,
        metrics=m.metrics,
        gates=m.gates,
        run=m.run,
        per_class=m.per_class,
        task=m.task,
        tokenizer=m.tokenizer,
        class_names=m.class_names,
        checks={},
        quantize=m.quantize,
    )
    doc = built.to_dict()
    blocks = ["metrics", "gates", "run", "per_class", "task", "tokenizer", "checks", "quantize"]
    assert list(doc) == [*MODEL_HEAD, *blocks, "id"]  # no class names: left out, not null
    assert doc["checks"] == {}  # empty, but written
    assert _committed(doc, MODEL_MANIFEST, LM_INT8) == LM_INT8.read_text()
    assert doc["id"] == m.id


def test_a_manifest_whose_blocks_differ_gets_another_id() -> None:
    """The rebuilt bytes above are a comparison that can fail: one gate less is another id."""
    m = _model(LM_INT8)
    doc = _head(m).manifest(m.weights, metrics=m.metrics, gates=m.gates[:-1], run=m.run)
    assert content_id(doc.to_dict()) != m.id


@pytest.fixture(scope="module")
def zoo() -> Registry:
    return Registry.open(REPO)


@pytest.mark.parametrize("name", ZOO_DATASETS)
def test_a_zoo_dataset_rebuilt_from_its_inputs_is_its_file(zoo: Registry, name: str) -> None:
    path = REPO / "zoo" / "datasets" / name / MANIFEST_FILE
    m = DatasetManifest.from_dict(json.loads(path.read_text()), str(path.relative_to(REPO)))
    spec = zoo.dataset_spec(name)
    blob = npz_bytes(materialize(spec.raw, display=spec.path))
    built = dataset_manifest(
        spec,
        name,
        blob,
        shape=m.shape,
        dtype=m.dtype,
        classes=m.classes,
        splits=m.splits,
        stats=m.stats,
        task=None,  # classification: left out
        class_names=None,
        run=m.run,
    )
    doc = built.to_dict()
    head = ["kind", "schema_version", "name", "spec", "spec_digest", "data"]
    assert list(doc) == [*head, "shape", "dtype", "classes", "splits", "stats", "run", "id"]
    assert doc["data"] == blob_file("data.npz", blob, "npz")
    assert _committed(doc, DATASET_MANIFEST, path) == path.read_text()
    assert doc["id"] == m.id
