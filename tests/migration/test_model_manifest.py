"""The manifest blocks a build assembles as typed records write the JSON they always wrote."""

from __future__ import annotations

import time

from stemma.migration.adapters import adapter_record, lora_block
from stemma.migration.build_inputs import eval_pointer
from stemma.migration.build_outputs import blob_file, blob_ref, blob_weights, run_record
from stemma.migration.mapping import tensor_row
from stemma.migration.model_manifest import (
    counted,
    datasets_block,
    merge_source,
    renamed_pairs,
    transfer_block,
)
from stemma.migration.strategy import Strategy
from stemma.registry import Registry
from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import (
    Adapter,
    DatasetRef,
    ModelRef,
    Parameters,
    Run,
    Source,
    Split,
    Tensor,
    Transfer,
    Weights,
)
from torch import nn


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
