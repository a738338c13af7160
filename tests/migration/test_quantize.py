"""Quantized models as builds: torchao int8 on the CPU, gated on the drop against the parent,
stored in torchao's safetensors form and loaded back by the libraries' own loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import new_registry, write
from stemma.migration.build import build_dataset, build_model, load_model
from stemma.migration.evaluate import evaluate
from stemma.migration.quantize import relative_drop
from stemma.migration.quantized import load_exported
from stemma.migration.verify import verify_model
from stemma.registry import Registry
from stemma.registry.errors import StemmaError
from stemma.registry.publish.hubfiles import weight_files

pytest.importorskip("torchao")

BERT = (
    "{model_type: bert, vocab_size: 64, hidden_size: 32, num_hidden_layers: 2,"
    " num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 16}"
)
SPECS = {
    "datasets/tok/spec.yaml": "source: file:datasets/tok/tokens.npz\nsplit: {eval: 0.25}\n",
    "datasets/d04/spec.yaml": "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n",
    "datasets/d09/spec.yaml": "source: sklearn:digits\n",
    "models/hb/spec.yaml": f"architecture: {{family: transformers, config: {BERT}}}\n"
    "data: {train: tok}\ntraining: {epochs: 1, batch_size: 32, optimizer: adamw, lr: 3.0e-3}\n",
    "models/mb/spec.yaml": "architecture: {family: mlp, hidden: [64, 32]}\ndata: {train: d04}\n"
    "training: {epochs: 2, lr: 1.0e-2}\n",
    "models/mq/spec.yaml": "source: {model: mb, relation: quantized}\ndata: {train: d04}\n"
    "quantize: {method: int8_weight_only, max_drop: 0.05}\ngates: {accuracy: '>= 0.3'}\n",
    "models/md/spec.yaml": "source: {model: mb, relation: quantized}\ndata: {train: d04}\n"
    "quantize: {method: int8_dynamic}\n",
    "models/hq/spec.yaml": "source: {model: hb, relation: quantized}\ndata: {train: tok}\n"
    "quantize: {method: int8_dynamic, max_drop: 0.1}\n",
}
QUANTIZED = {"mq": "mb", "md": "mb", "hq": "hb"}


def tokens(path: Path, n: int = 120, length: int = 12) -> None:
    """Synthetic token ids (0 = padding) whose second token tells the class."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.integers(4, 64, (n, length))
    x[:, 1] = y + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x.astype(np.int64), y=y)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Registry:
    """Two parents (mlp, transformers) and three quantized children, built in process."""
    reg = new_registry(tmp_path_factory.mktemp("quant") / "repo", registry_template, SPECS)
    tokens(reg.repo_root / "datasets/tok/tokens.npz")
    for name in ("d04", "d09", "tok"):
        build_dataset(reg, name)
    for name in ("mb", "hb", *QUANTIZED):
        build_model(Registry.open(reg.repo_root), name)
    return Registry.open(reg.repo_root)


def test_quantized_builds_record_size_quality_and_timing(built: Registry) -> None:
    for name, parent in QUANTIZED.items():
        doc = json.loads((built.model_dir(name) / "manifest.json").read_text())
        q = doc["quantize"]
        assert doc["source"] == {
            "model": parent,
            "relation": "quantized",
            "id": built.model_manifest(parent).id,
        }
        weights = built.model_dir(name) / "weights.safetensors"
        assert q["size"]["bytes_after"] == weights.stat().st_size == doc["weights"]["bytes"]
        parent_bytes = (built.model_dir(parent) / "weights.safetensors").stat().st_size
        assert q["size"]["bytes_before"] == parent_bytes  # the parent's stored weights
        assert q["size"]["bytes_after"] < 0.6 * parent_bytes, q["size"]
        quality = q["quality"]
        assert quality["metric"] == "accuracy"
        assert quality["quantized"] == doc["metrics"]["accuracy"]
        accuracy = doc["metrics"]["accuracy"]
        assert quality["drop"] == relative_drop("accuracy", quality["parent"], accuracy)
        gate = doc["gates"][-1]
        assert gate["metric"] == "quantize_drop" and gate["threshold"] == quality["max_drop"]
        assert gate["passed"] == quality["passed"] == (quality["drop"] <= quality["max_drop"])
        assert doc["run"]["quantize_s"] >= 0 and "training" not in doc["spec"]
        assert q["library"]["name"] == "torchao"
        assert ("hf_quantization_config" in q) == (name == "hq")
    assert (
        json.loads((built.model_dir("md") / "manifest.json").read_text())["quantize"]["quality"][
            "max_drop"
        ]
        == 0.02
    )  # the default


def test_a_rebuild_gives_the_same_id_and_verifies(built: Registry) -> None:
    for name in QUANTIZED:
        before = built.model_manifest(name).id
        again = build_model(Registry.open(built.repo_root), name)
        assert again["id"] == before, name
        found = {f.item: f.status for f in verify_model(built, name).findings}
        # the drop gate is recomputed from the recorded quality; kept tensors equal the parent's
        assert found["gates"] == found["frozen"] == found["weights"] == "pass", found


@pytest.mark.parametrize("name", sorted(QUANTIZED))
def test_the_exported_folder_loads_with_the_librarys_loader(
    built: Registry, name: str, tmp_path: Path
) -> None:
    manifest = built.model_manifest(name)
    for file, data in weight_files(built, manifest):
        (tmp_path / file).write_bytes(data)
    module = load_exported(tmp_path)
    linear = module.get_submodule("body.0" if name != "hq" else "bert.encoder.layer.0.output.dense")
    assert type(linear.weight).__name__ == "Int8Tensor"
    data = np.load(built.dataset_dir(manifest.raw["datasets"]["eval"]["name"]) / "data.npz")
    x = torch.as_tensor(data["x_eval"])
    if name == "hq":  # transformers' own model: token ids in, logits out
        with torch.no_grad():
            logits = module(input_ids=x.long(), attention_mask=(x != 0).long()).logits
        acc = round(float((logits.argmax(1).numpy() == data["y_eval"]).mean()), 6)
        assert acc == manifest.raw["metrics"]["accuracy"]
    else:
        scored = evaluate(module, data["x_eval"], data["y_eval"])
        assert scored["accuracy"] == manifest.raw["metrics"]["accuracy"]
        assert scored["loss"] == manifest.raw["metrics"]["loss"]
    # stemma's own loader gives the same module
    again = load_model(built, name)
    assert type(again.get_submodule(linear_name(name)).weight).__name__ == "Int8Tensor"


def linear_name(name: str) -> str:
    return "body.0" if name != "hq" else "bert.encoder.layer.0.output.dense"


def test_relative_drop_follows_the_metric_direction() -> None:
    assert relative_drop("accuracy", 0.8, 0.76) == pytest.approx(0.05)
    assert relative_drop("accuracy", 0.8, 0.9) == 0.0
    assert relative_drop("perplexity", 20.0, 22.0) == pytest.approx(0.1)
    assert relative_drop("perplexity", 20.0, 19.0) == 0.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "source: {model: mb, relation: quantized}\ndata: {train: d04}\n",
            "at /quantize: a quantized model names a method",
        ),
        (
            "source: {model: mb, relation: finetune}\ndata: {train: d04}\n"
            "quantize: {method: int8_dynamic}\n",
            "at /source/relation",
        ),
        (
            "source: {model: mb, relation: quantized}\ndata: {train: d04}\n"
            "quantize: {method: int8_dynamic}\ntraining: {epochs: 3}\n",
            "at /training: 'training' does not apply with 'quantize'; remove it",
        ),
        (
            "source: {model: mb, relation: quantized}\ndata: {train: d04}\n"
            "quantize: {method: int4}\n",
            "at /quantize/method",
        ),
        (
            "source: {model: hb, relation: quantized}\ndata: {train: d04}\n"
            "quantize: {method: int8_dynamic}\n",
            "at /data/train: samples of 'd04' have shape [1, 8, 8], the parent takes [12]",
        ),
        (
            "source: {model: mb, relation: quantized}\ndata: {train: d04}\n"
            "quantize: {method: int8_dynamic}\ngates: {r2: '>= 0.1'}\n",
            "at /gates/r2",
        ),
        (
            "source: {model: mq, relation: quantized}\ndata: {train: d04}\n"
            "quantize: {method: int8_dynamic}\n",
            "at /source/model: source model 'mq' is quantized (int8_weight_only); derive from"
            " its parent 'mb' instead",
        ),
        (
            "source: {model: mq, relation: finetune}\ndata: {train: d04}\ntraining: {epochs: 1}\n",
            "at /source/model: source model 'mq' is quantized",
        ),
        (
            "source: {model: mb, relation: quantized}\ndata: {train: d09}\n"
            "quantize: {method: int8_dynamic}\n",
            "at /data/train: 'd09' has class 9, the parent only classes 0-4",
        ),
        (
            "source: {relation: merge, models: [mq, mb], merge: {method: linear}}\n"
            "data: {train: d04}\n",
            "source model 'mq' is quantized (int8_weight_only); derive from its parent 'mb'",
        ),
        (
            "source: {model: mb, relation: quantized}\ndata: {train: d04}\n"
            "quantize: {method: int8_dynamic, max_drop: 1.5}\n",
            "at /quantize/max_drop",
        ),
        (
            "source: {model: auto, relation: quantized}\ndata: {train: d04}\n"
            "quantize: {method: int8_dynamic}\n",
            "at /source/model",
        ),
    ],
)
def test_refusals_name_the_field_and_write_nothing(
    built: Registry, spec: str, message: str
) -> None:
    write(built.root / "models/bad/spec.yaml", spec)
    try:
        with pytest.raises(StemmaError) as err:
            build_model(Registry.open(built.repo_root), "bad")
        assert str(err.value).startswith("models/bad/spec.yaml"), str(err.value)
        assert message in str(err.value), str(err.value)
        assert "\n" not in str(err.value)
        assert sorted(p.name for p in (built.root / "models/bad").iterdir()) == ["spec.yaml"]
    finally:
        (built.root / "models/bad/spec.yaml").unlink()
        (built.root / "models/bad").rmdir()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"a.weight": '{"_type": "os.system"}'}, "Unsupported tensor type: os.system"),
        (
            {
                "a.weight": '{"_type": "Int8Tensor", "_data": {"dtype": {"_type":'
                ' "builtins.eval", "_data": "1"}}, "_tensor_data_names": ["qdata"]}'
            },
            "Failed to find class builtins.eval",
        ),
        ({"a.weight": "not json"}, "not torchao quantized weights"),
        ({}, "not torchao quantized weights"),
    ],
)
def test_weights_torchao_cannot_describe_are_one_error(
    tmp_path: Path, metadata: dict[str, str], message: str
) -> None:
    """torchao rebuilds only its own tensor classes from the JSON metadata; anything else is
    refused as one error line naming the file, never a traceback or an import."""
    from safetensors.torch import save_file
    from stemma.migration.quantized import load_state

    path = tmp_path / "w.safetensors"
    save_file(
        {"a._weight_qdata": torch.zeros(2, 2, dtype=torch.int8)},
        str(path),
        metadata={"tensor_names": '["a.weight"]', **metadata} if metadata else None,
    )
    with pytest.raises(StemmaError) as err:
        load_state(path, "models/x/weights.safetensors")
    assert str(err.value).startswith("models/x/weights.safetensors: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_changed_weights_file_is_refused_on_load(built: Registry, tmp_path: Path) -> None:
    path = built.model_dir("md") / "weights.safetensors"
    saved = path.read_bytes()
    try:
        path.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
        with pytest.raises(StemmaError, match="does not match its manifest"):
            load_model(built, "md")
    finally:
        path.write_bytes(saved)


LLAMA = (
    "{model_type: llama, vocab_size: 512, hidden_size: 32, intermediate_size: 64,"
    " num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1,"
    " max_position_embeddings: 64}"
)


def test_a_causal_lm_quantizes_with_its_tokenizer_and_perplexity(
    tmp_path_factory: pytest.TempPathFactory, registry_template: Path, tmp_path: Path
) -> None:
    """A tiny Llama on Python's own docs text: perplexity before and after, the tokenizer
    inherited, and transformers' own loaders reproduce the recorded perplexity."""
    pytest.importorskip("stemma.migration.causal_lm")
    import pydoc_data.topics
    import shutil

    from stemma.migration import lm_train
    from stemma.migration.textdata import load_text
    from transformers import AutoModelForCausalLM, AutoTokenizer

    specs = {
        "datasets/txt/spec.yaml": "source: text:datasets/txt/corpus.txt\nsplit: {eval: 0.25}\n",
        "models/lb/spec.yaml": f"architecture: {{family: transformers, config: {LLAMA}}}\n"
        "tokenizer: tok\ndata: {train: txt}\nlm: {block_size: 32}\n"
        "training: {epochs: 1, batch_size: 16, lr: 3.0e-3}\n",
        "models/lq/spec.yaml": "source: {model: lb, relation: quantized}\ndata: {train: txt}\n"
        "quantize: {method: int8_weight_only}\ngates: {perplexity: '<= 100000'}\n",
    }
    reg = new_registry(tmp_path_factory.mktemp("lm") / "repo", registry_template, specs)
    tiny_bpe = Path(__file__).resolve().parents[1] / "data" / "tiny-bpe"
    shutil.copytree(tiny_bpe, reg.repo_root / "tok")
    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[k] for k in sorted(topics))[:12000]
    (reg.repo_root / "datasets/txt/corpus.txt").write_text(text)
    build_dataset(reg, "txt")
    build_model(Registry.open(reg.repo_root), "lb")
    doc = build_model(Registry.open(reg.repo_root), "lq")
    quality = doc["quantize"]["quality"]
    assert quality["metric"] == "perplexity" and doc["task"] == "causal-lm"
    assert quality["quantized"] == doc["metrics"]["perplexity"]
    assert quality["drop"] == relative_drop("perplexity", quality["parent"], quality["quantized"])
    assert doc["quantize"]["layers"] == 14  # 2 x (4 attention + 3 MLP); lm_head left as is
    assert doc["tokenizer"]["from"] == "lb"
    assert doc["quantize"]["size"]["bytes_after"] < doc["quantize"]["size"]["bytes_before"]
    built = Registry.open(reg.repo_root)
    assert build_model(built, "lq")["id"] == doc["id"]  # deterministic
    for file, data in weight_files(built, built.model_manifest("lq")):
        (tmp_path / file).write_bytes(data)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(model.model.layers[0].mlp.down_proj.weight).__name__ == "Int8Tensor"
    records = load_text(built, "txt", "txt").eval
    scored = lm_train.score(model, lm_train.blocks(tokenizer, records, 32, packed=True))
    assert scored["perplexity"] == doc["metrics"]["perplexity"]


def test_a_weights_link_out_of_the_registry_is_refused(built: Registry, tmp_path: Path) -> None:
    path = built.model_dir("mq") / "weights.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(path.read_bytes())
    saved = path.read_bytes()
    path.unlink()
    path.symlink_to(outside)
    try:
        with pytest.raises(StemmaError, match="outside"):
            load_model(built, "mq")
    finally:
        path.unlink()
        path.write_bytes(saved)


def test_a_model_without_linear_layers_quantizes_nothing() -> None:
    """torchao quantizes torch.nn.Linear: a build whose parent has none is refused."""
    from stemma.migration.quantize import quantize_module

    conv = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3))
    assert quantize_module(conv, "int8_weight_only")[1] == 0
    assert type(conv[0].weight) is torch.nn.Parameter


def test_exploration_skips_quantized_models(built: Registry) -> None:
    """A quantized model is no source, so it is no candidate for source: auto either."""
    from stemma.migration.explore import explore

    ranking = explore(built, "d09", candidates=["mb", "mq"])
    assert [row["model"] for row in ranking.to_dict()["ranking"]] == ["mb"]
    assert [s.model for s in ranking.skipped] == ["mq"]
    assert "quantized" in ranking.skipped[0].reason


def test_the_quantize_block_is_a_dvc_param(built: Registry, cli) -> None:
    """`dvc params diff` and `dvc exp run -S quantize.method=...` see the block."""
    import yaml

    assert cli(["pipeline"], built.repo_root).code == 0
    stage = yaml.safe_load((built.model_dir("mq") / "dvc.yaml").read_text())["stages"]["model-mq"]
    assert {"models/mq/spec.yaml": ["quantize"]} in stage["params"]
    assert "models/mb/weights.safetensors" in stage["deps"]
