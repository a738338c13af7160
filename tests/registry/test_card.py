"""Hugging Face model cards: huggingface_hub parses the front matter, and with --weights the
model's own library (transformers, timm, peft) loads the folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write
from factories import dataset_manifest, model_manifest
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from stemma.registry import Registry
from stemma.registry.errors import StemmaError
from stemma.registry.publish.card import export_card
from stemma.registry.store.files import file_hashes

GATE = {"metric": "accuracy", "op": ">=", "threshold": 0.5, "value": 0.9, "passed": True}
CHECKS = {"forgetting": {"passed": True, "figures": {"before": 0.9, "after": 0.88}}}


def derived(reg: Registry, relation: str = "finetune", **extra: Any) -> Registry:
    """base (with a Hub id) and ft derived from it with `relation`, both with manifests."""
    write(
        reg.root / "models/base/spec.yaml",
        "hub_id: acme/digits-base\narchitecture: {family: mlp, hidden: [32]}\n"
        "data: {train: digits-0to4}\n",
    )
    write(
        reg.root / "models/ft/spec.yaml",
        f"description: Digits 5-9 from the base.\nlicense: apache-2.0\ntags: [digits]\n"
        f"source: {{model: base, relation: {relation}}}\n"
        "data: {train: digits-5to9, eval: digits-5to9}\n",
    )
    reg = Registry.open(reg.root)
    for ds in ("digits-0to4", "digits-5to9"):
        dataset_manifest(reg, ds)
    model_manifest(reg, "base")
    model_manifest(reg, "ft", accuracy=0.93, gates=[GATE], checks=CHECKS, **extra)
    return Registry.open(reg.root)


def test_card_of_a_derived_model_parses(populated: Registry, tmp_path: Path) -> None:
    reg = derived(populated)
    manifest = reg.model_manifest("ft")
    assert manifest is not None
    written = export_card(reg, "ft", tmp_path / "card")
    assert written.path == tmp_path / "card" / "README.md" and written.files == ()
    card = ModelCard.load(written.path)
    data = card.data
    assert data.base_model == "acme/digits-base"  # the source's hub_id, declared in its spec
    assert data.base_model_relation == "finetune"
    assert data.datasets is None  # local names are no Hub dataset ids: under `stemma`
    assert [d["name"] for d in data.stemma["datasets"]] == ["digits-5to9", "digits-5to9"]
    assert data.license == "apache-2.0"
    assert data.library_name is None  # the Hub's library list has no plain torch module
    assert data.pipeline_tag == "image-classification"
    assert data.tags == ["stemma", "digits", "mlp"]
    results = {
        (r.metric_type, r.metric_value, r.dataset_name, r.task_type) for r in data.eval_results
    }
    assert results == {
        (k, v, "digits-5to9", "image-classification") for k, v in manifest.metrics.items()
    }
    assert {r.dataset_revision for r in data.eval_results} == {
        reg.dataset_manifest("digits-5to9").id  # type: ignore[union-attr]
    }
    text = card.text
    for section in ("## Usage", "## Lineage", "## Transfer report", "## Gates", "## Checks"):
        assert section in text
    assert "finetune of **base**" in text and manifest.raw["source"]["id"][:19] in text
    assert "| accuracy | >= 0.5 | 0.9 | True |" in text
    assert "| forgetting | True |" in text


def test_distill_maps_to_finetune_with_a_tag(populated: Registry, tmp_path: Path) -> None:
    reg = derived(populated, relation="distill")
    data = ModelCard.load(export_card(reg, "ft", tmp_path / "card").path).data
    assert data.base_model_relation == "finetune"
    assert "distillation" in data.tags
    assert "distilled from **base**" in ModelCard.load(tmp_path / "card" / "README.md").text


def test_card_cli_and_missing_weights(populated: Registry, tmp_path: Path, cli: Any) -> None:
    reg = derived(populated)
    res = cli(["export", "card", "ft", str(tmp_path / "c"), "--json"], reg.root)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["front_matter"]["base_model_relation"] == "finetune"
    res = cli(["export", "card", "ft", str(tmp_path / "w"), "--weights"], reg.root)
    assert res.code == 1
    assert res.stderr.count("\n") == 1
    assert "models/ft/weights.safetensors is missing" in res.stderr
    assert not (tmp_path / "w").exists()  # nothing written on refusal


def _with_weights(reg: Registry, name: str, state: dict[str, torch.Tensor], config: Any) -> None:
    path = reg.model_dir(name) / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    hashes = file_hashes(path)
    model_manifest(
        reg,
        name,
        weights={"path": "weights.safetensors", "format": "safetensors", **hashes},
        architecture={"config": config, "tensors": []},
    )


def _tiny_bert() -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


def test_transformers_weights_load_with_from_pretrained(
    populated: Registry, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    reg = derived(populated)
    model = _tiny_bert()
    hf = {k: v for k, v in model.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = {"family": "transformers", "config": hf, "num_classes": 3, "options": {}}
    _with_weights(reg, "ft", model.state_dict(), config)
    written = export_card(Registry.open(reg.root), "ft", tmp_path / "hf", weights=True)
    assert sorted(p.name for p in written.files) == ["config.json", "model.safetensors"]
    assert ModelCard.load(written.path).data.library_name == "transformers"
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_timm_weights_load_with_create_model(populated: Registry, tmp_path: Path) -> None:
    import timm

    reg = derived(populated)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5, in_chans=1).eval()
    config = {"family": "timm", "name": "test_resnet", "num_classes": 5, "in_shape": [1, 32, 32]}
    _with_weights(reg, "ft", model.state_dict(), config)
    export_card(Registry.open(reg.root), "ft", tmp_path / "timm", weights=True)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_weights_of_another_version_are_refused(populated: Registry, tmp_path: Path) -> None:
    reg = derived(populated)
    model = _tiny_bert()
    _with_weights(reg, "ft", model.state_dict(), {"family": "transformers", "config": {}})
    with pytest.raises(StemmaError, match="holds no transformers config"):
        export_card(Registry.open(reg.root), "ft", tmp_path / "x", weights=True)
    _with_weights(
        reg, "ft", model.state_dict(), {"family": "transformers", "config": model.config.to_dict()}
    )
    (reg.model_dir("ft") / "weights.safetensors").write_bytes(b"other weights")
    with pytest.raises(StemmaError, match="is not the weights of version"):
        export_card(Registry.open(reg.root), "ft", tmp_path / "x", weights=True)
    assert not (tmp_path / "x").exists()


def test_adapter_card_and_peft_files(populated: Registry, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from stemma.migration.adapters import adapter_files

    reg = derived(populated, relation="adapter")
    base = _tiny_bert()
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False)
    tuned = get_peft_model(_tiny_bert(), lora).eval()
    files = adapter_files(tuned)  # the bytes the build writes, where the build writes them
    for name, data in files.items():
        (reg.model_dir("ft") / "adapter").mkdir(exist_ok=True)
        (reg.model_dir("ft") / "adapter" / name).write_bytes(data)
    blocks = {
        n: {**file_hashes(reg.model_dir("ft") / "adapter" / n), "path": f"adapter/{n}"}
        for n in files
    }
    base_id = reg.model_manifest("base").id  # type: ignore[union-attr]
    model_manifest(
        reg,
        "ft",
        weights={**blocks["adapter_model.safetensors"], "format": "safetensors"},
        adapter={
            "format": "peft-lora",
            "base": {"model": "base", "id": base_id},
            "r": 2,
            "alpha": 4,
            "target_modules": ["query", "value"],
            "config": {**blocks["adapter_config.json"], "format": "json"},
        },
    )
    written = export_card(Registry.open(reg.root), "ft", tmp_path / "adapter", weights=True)
    assert sorted(p.name for p in written.files) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    data = ModelCard.load(written.path).data
    assert data.base_model_relation == "adapter" and data.library_name == "peft"
    assert data.base_model == "acme/digits-base"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "acme/digits-base"
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, tuned(ids).logits)
