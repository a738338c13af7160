"""Exports true to the Hugging Face Hub: Hub ids (never registry names) in `base_model` and
`datasets`, every parent of a merge, the pipeline tag of each family and task, a library name
from the Hub's list, and a folder each library's own loader reads, stemma's own families
included, through the snippet the card itself carries."""

from __future__ import annotations

import json
import os
import re
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
from stemma.registry.publish.card import export_card, front_matter
from stemma.registry.publish.hubfiles import snapshot_hub_id
from stemma.registry.store.files import file_hashes
from test_card import _tiny_bert

BERT = {
    "model_type": "bert",
    "vocab_size": 64,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}


def _registry(reg: Registry, base_spec: str, relation: str = "finetune") -> Registry:
    """base (spec `base_spec`) and ft derived from it with `relation`."""
    write(reg.root / "models/base/spec.yaml", base_spec + "data: {train: digits-0to4}\n")
    write(
        reg.root / "models/ft/spec.yaml",
        f"source: {{model: base, relation: {relation}}}\n"
        "data: {train: digits-5to9, eval: digits-5to9}\n",
    )
    reg = Registry.open(reg.root)
    for ds in ("digits-0to4", "digits-5to9"):
        dataset_manifest(reg, ds)
    return reg


def _weights(reg: Registry, name: str, state: dict[str, torch.Tensor], **extra: Any) -> None:
    """A manifest for `name` whose weights file holds `state`."""
    path = reg.model_dir(name) / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    block = {"path": "weights.safetensors", "format": "safetensors", **file_hashes(path)}
    model_manifest(reg, name, weights=block, **extra)


def _run_snippet(readme: Path, cwd: Path) -> dict[str, Any]:
    """Run the card's Python snippet as written (from `cwd`); its variables."""
    code = re.search(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert code is not None, "the card has no usage snippet"
    scope: dict[str, Any] = {}
    old = Path.cwd()
    os.chdir(cwd)
    try:
        exec(compile(code.group(1), str(readme), "exec"), scope)  # the card this test wrote
    finally:
        os.chdir(old)
    return scope


def _stemma_module(config: dict[str, Any]) -> torch.nn.Module:
    from stemma.migration.architectures import build_module

    torch.manual_seed(1)
    return build_module(config).eval()


@pytest.mark.parametrize(
    ("config", "x", "tag"),
    [
        (
            {"family": "mlp", "in_shape": [6], "num_classes": 3, "hidden": [5]},
            torch.randn(4, 6),
            "tabular-classification",
        ),
        (
            {"family": "cnn", "in_shape": [1, 8, 8], "num_classes": 3, "channels": [2]},
            torch.randn(4, 1, 8, 8),
            "image-classification",
        ),
    ],
)
def test_stemma_families_export_loadable_weights(
    populated: Registry, tmp_path: Path, config: dict[str, Any], x: torch.Tensor, tag: str
) -> None:
    reg = _registry(populated, "architecture: {family: mlp}\n")
    model_manifest(reg, "base")
    module = _stemma_module(config)
    _weights(reg, "ft", module.state_dict(), architecture={"config": config, "tensors": []})
    written = export_card(Registry.open(reg.root), "ft", tmp_path / "out", weights=True)
    assert sorted(p.name for p in written.files) == ["config.json", "model.safetensors"]
    data = ModelCard.load(written.path).data
    assert data.pipeline_tag == tag and data.eval_results[0].task_type == tag
    assert data.library_name is None  # not "pytorch": the Hub's library list has none
    # no Hub id for base: the local name is not put where the Hub reads an id
    assert data.base_model is None and data.datasets is None
    assert data.stemma["base_models"][0]["model"] == "base"
    assert data.stemma["base_models"][0]["hub_id"] is None
    loaded = _run_snippet(written.path, tmp_path)["model"]
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))


def test_tabular_regression_and_timm_tags(populated: Registry) -> None:
    reg = _registry(populated, "architecture: {family: mlp}\n")
    model_manifest(reg, "base")
    mlp = {"family": "mlp", "in_shape": [6], "num_classes": 1, "hidden": [5]}
    model_manifest(reg, "ft", task="regression", architecture={"config": mlp, "tensors": []})
    meta = front_matter(reg, reg.model_manifest("ft"))  # type: ignore[arg-type]
    assert meta["pipeline_tag"] == "tabular-regression"
    timm = {"family": "timm", "name": "test_resnet", "in_shape": [1, 32, 32], "num_classes": 5}
    model_manifest(reg, "ft", architecture={"config": timm, "tensors": []})
    meta = front_matter(reg, reg.model_manifest("ft"))  # type: ignore[arg-type]
    assert (meta["pipeline_tag"], meta["library_name"]) == ("image-classification", "timm")


def test_bert_card_text_classification_and_architectures(
    populated: Registry, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    reg = _registry(populated, "hub_id: acme/bert-tiny\narchitecture: {family: mlp}\n")
    model_manifest(reg, "base")
    model = _tiny_bert()
    hf = {k: v for k, v in model.config.to_dict().items() if k not in ("id2label", "label2id")}
    hf.pop("architectures", None)  # a spec's config carries none: the export names the class
    config = {"family": "transformers", "config": hf, "num_classes": 3, "in_shape": [32]}
    _weights(reg, "ft", model.state_dict(), architecture={"config": config, "tensors": []})
    written = export_card(Registry.open(reg.root), "ft", tmp_path / "hf", weights=True)
    data = ModelCard.load(written.path).data
    assert data.pipeline_tag == "text-classification"  # not tabular: a BERT reads text
    assert data.eval_results[0].task_type == "text-classification"
    assert (data.library_name, data.base_model) == ("transformers", "acme/bert-tiny")
    doc = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert doc["architectures"] == ["BertForSequenceClassification"]
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([[1, 5, 9, 2]])
    snippet = _run_snippet(written.path, tmp_path)["model"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        assert torch.equal(snippet(ids).logits, model(ids).logits)


def test_merge_lists_its_recorded_parents(populated: Registry, tmp_path: Path) -> None:
    reg = _registry(populated, "hub_id: acme/digits-base\n", relation="merge")
    model_manifest(reg, "base")
    model_manifest(reg, "ft")
    data = ModelCard.load(export_card(reg, "ft", tmp_path / "m").path).data
    assert data.base_model == ["acme/digits-base"] and data.base_model_relation == "merge"


def _lora_over_bert(reg: Registry) -> tuple[Any, Any]:
    """base: a tiny BERT with weights; ft: a LoRA adapter over it, stored as the build does."""
    from peft import LoraConfig, get_peft_model
    from stemma.migration.adapters import adapter_files

    base = _tiny_bert()
    hf = {k: v for k, v in base.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = {"family": "transformers", "config": hf, "num_classes": 3, "in_shape": [32]}
    _weights(reg, "base", base.state_dict(), architecture={"config": config, "tensors": []})
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False)
    torch.manual_seed(3)
    tuned = get_peft_model(_tiny_bert(), lora).eval()
    folder = reg.model_dir("ft") / "adapter"
    folder.mkdir(parents=True)
    blocks = {}
    for name, data in adapter_files(tuned).items():
        (folder / name).write_bytes(data)
        blocks[name] = {**file_hashes(folder / name), "path": f"adapter/{name}"}
    model_manifest(
        reg,
        "ft",
        weights={**blocks["adapter_model.safetensors"], "format": "safetensors"},
        architecture={"config": config, "tensors": []},
        adapter={
            "format": "peft-lora",
            "base": {"model": "base", "id": reg.model_manifest("base").id},  # type: ignore[union-attr]
            "r": 2,
            "alpha": 4,
            "target_modules": ["query", "value"],
            "config": {**blocks["adapter_config.json"], "format": "json"},
        },
    )
    return base, tuned


def test_lora_export_names_its_base_and_loads(
    populated: Registry, tmp_path: Path, cli: Any
) -> None:
    reg = _registry(populated, "architecture: {family: mlp}\n", relation="adapter")
    base, tuned = _lora_over_bert(reg)
    out = tmp_path / "export"
    res = cli(["export", "card", "ft", str(out / "ft"), "--weights"], reg.root)
    assert res.code == 0, res.stderr  # was: models/ft/adapter_config.json is missing
    config = json.loads((out / "ft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(out / "base")  # no Hub id: its export
    data = ModelCard.load(out / "ft" / "README.md").data
    assert (data.library_name, data.base_model) == ("peft", None)
    assert cli(["export", "card", "base", str(out / "base"), "--weights"], reg.root).code == 0
    loaded = _run_snippet(out / "ft" / "README.md", tmp_path)["model"]
    ids = torch.tensor([[3, 4, 5, 0]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, tuned(ids).logits)
    del base


def _tiny_snapshot(folder: Path) -> None:
    import transformers

    cfg = transformers.AutoConfig.for_model(**BERT, num_labels=3)
    torch.manual_seed(0)
    transformers.AutoModelForSequenceClassification.from_config(cfg).save_pretrained(folder)


def test_registered_snapshot_keeps_its_hub_id(registry: Registry, tmp_path: Path) -> None:
    from stemma.migration.register import register

    snap = tmp_path / "hub/models--acme--tiny-bert/snapshots/0123abcd"
    _tiny_snapshot(snap)
    register(registry, "tiny", snap)
    manifest = registry.model_manifest("tiny")
    assert manifest is not None and manifest.raw["spec"]["hub_id"] == "acme/tiny-bert"
    write(
        registry.root / "models/ft/spec.yaml",
        "source: {model: tiny}\ndata: {train: d}\n",
    )
    write(registry.root / "datasets/d/spec.yaml", "source: sklearn:digits\n")
    reg = Registry.open(registry.root)
    dataset_manifest(reg, "d")
    model_manifest(reg, "ft")
    data = ModelCard.load(export_card(reg, "ft", tmp_path / "c").path).data
    assert data.base_model == "acme/tiny-bert"


SNAPSHOT_CARDS = {
    "model id": ("---\nmodel_id: acme/x\n---\n", "acme/x"),
    "model-index name": ("---\nmodel-index:\n- name: acme/y\n---\n", "acme/y"),
    "a bare name is no id": ("---\nmodel-index:\n- name: y\n---\n", None),
    "path traversal": ("---\nmodel_id: ../../etc\n---\n", None),
    "newline": ('---\nmodel_id: "acme/x\\n"\n---\n', None),
    "not a mapping": ("---\n- a\n---\n", None),
    "alias bomb": ("---\na: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b, *b]\n---\n", None),
    "bad YAML": ("---\nmodel_id: [\n---\n", None),
    "no front matter": ("# hello\n", None),
    "huge": ("---\nmodel_id: acme/z\n---\n" + "x" * (2 << 20), None),
}


@pytest.mark.parametrize("case", sorted(SNAPSHOT_CARDS))
def test_snapshot_card_ids(tmp_path: Path, case: str) -> None:
    text, expected = SNAPSHOT_CARDS[case]
    (tmp_path / "README.md").write_text(text)
    assert snapshot_hub_id(tmp_path) == expected


def test_snapshot_readme_that_is_a_pipe_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "README.md")
    assert snapshot_hub_id(tmp_path) is None  # opened without blocking, refused
    bad = tmp_path / "models--a--..--b" / "snapshots" / "r"
    bad.mkdir(parents=True)
    assert snapshot_hub_id(bad) is None


def test_a_dataset_hub_id_is_listed_in_datasets(populated: Registry) -> None:
    spec = populated.root / "datasets/digits-5to9/spec.yaml"
    spec.write_text("hub_id: acme/digits\n" + spec.read_text())
    reg = _registry(populated, "architecture: {family: mlp}\n")
    model_manifest(reg, "base")
    model_manifest(reg, "ft")
    meta = front_matter(reg, reg.model_manifest("ft"))  # type: ignore[arg-type]
    assert meta["datasets"] == ["acme/digits"]
    spec.write_text(spec.read_text().replace("acme/digits", '"acme/digits\\n"'))
    with pytest.raises(StemmaError, match="hub_id"):
        Registry.open(reg.root).dataset_spec("digits-5to9")
