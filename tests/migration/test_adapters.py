"""LoRA adapters through peft: built by dvc repro, stored in PEFT's format, composed on load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import new_registry, write
from safetensors.torch import load_file
from stemma.migration.build import build_dataset, build_model, load_model
from stemma.registry import Registry
from stemma.registry.errors import BuildError

BERT = (
    "{model_type: bert, vocab_size: 64, hidden_size: 32, num_hidden_layers: 2,"
    " num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 16}"
)
SPECS = {
    "datasets/tok/spec.yaml": "source: file:datasets/tok/tokens.npz\nsplit: {eval: 0.25}\n",
    "datasets/d04/spec.yaml": "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n",
    "datasets/d59/spec.yaml": "source: sklearn:digits\n"
    "select: {classes: [5, 6, 7, 8, 9], relabel: contiguous}\n",
    "models/hb/spec.yaml": f"architecture: {{family: transformers, config: {BERT}}}\n"
    "data: {train: tok}\ntraining: {epochs: 2, batch_size: 32, optimizer: adamw, lr: 3.0e-3}\n",
    "models/ha/spec.yaml": "source: {model: hb, relation: adapter}\ndata: {train: tok}\n"
    "strategy: {mode: lora, lora: {r: 4, alpha: 8, target_modules: [query, value]}}\n"
    "training: {epochs: 2, batch_size: 32, lr: 1.0e-2}\n",
    "models/mb/spec.yaml": "architecture: {family: mlp, hidden: [64, 32]}\ndata: {train: d04}\n"
    "training: {epochs: 2, lr: 1.0e-2}\n",
    "models/ma/spec.yaml": "source: {model: mb, relation: adapter}\ndata: {train: d59}\n"
    "strategy: {mode: lora, lora: {r: 2, alpha: 4, target_modules: [body.0, body.2]}}\n"
    "training: {epochs: 2, lr: 1.0e-2}\n",
}


def tokens(path: Path, n: int = 200, length: int = 12) -> None:
    """Synthetic token ids (0 = padding) whose second token tells the class."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.integers(4, 64, (n, length))
    x[:, 1] = y + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x.astype(np.int64), y=y)


def dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_lora_adapters_build_load_in_peft_and_follow_their_base(registry: Registry, cli) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

    reg = new_registry(registry.repo_root.parent / "lora", registry.repo_root, SPECS)
    repo = reg.repo_root
    tokens(repo / "datasets/tok/tokens.npz")
    assert cli(["pipeline"], repo).code == 0
    dvc(repo, "repro")
    reg = Registry.open(repo)
    for base, adapter in (("hb", "ha"), ("mb", "ma")):
        folder = repo / "models" / adapter / "adapter"
        assert sorted(p.name for p in folder.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        assert not (repo / "models" / adapter / "weights.safetensors").exists()
        ratio = (folder / "adapter_model.safetensors").stat().st_size / (
            repo / "models" / base / "weights.safetensors"
        ).stat().st_size
        assert ratio < 0.25, ratio
        doc = json.loads((repo / "models" / adapter / "manifest.json").read_text())
        assert doc["adapter"]["base"]["id"] == reg.model_manifest(base).id
        assert doc["source"]["relation"] == "adapter"
        assert 0 < doc["parameters"]["trainable"] < doc["parameters"]["total"] / 4
        new = [r for r in doc["architecture"]["tensors"] if ".lora_" in r["name"]]
        assert new and all(r["origin"] == "new" and not r["frozen"] for r in new)
        # peft loads the adapter on the base stemma built; every adapter key is used
        PeftModel.from_pretrained(load_model(reg, base), str(folder))
        wrapped = get_peft_model(load_model(reg, base), LoraConfig.from_pretrained(str(folder)))
        loaded = set_peft_model_state_dict(wrapped, load_file(folder / "adapter_model.safetensors"))
        assert loaded.unexpected_keys == []
        assert not [k for k in loaded.missing_keys if ".lora_" in k or "modules_to_save" in k]
        composed = load_model(reg, adapter)  # base + adapter, merged: the plain architecture
        assert set(composed.state_dict()) == set(load_model(reg, base).state_dict())
    res = cli(["explore", "d59", "--json"], repo)  # the adapter model is a candidate too
    assert res.code == 0, res.stderr
    assert "ma" in [row["model"] for row in json.loads(res.stdout)["ranking"]]
    for adapter in ("ma", "ha"):
        res = cli(["verify", adapter, "--rebuild", "--json"], repo)
        assert res.code == 0, res.stdout + res.stderr
        assert json.loads(res.stdout)["rebuild"]["verdict"] == "identical", res.stdout
    res = cli(
        ["query", "SELECT count(*) AS n FROM edges WHERE relation = 'adapter'", "-f", "json"], repo
    )
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)[0]["n"] == 2
    # a retrained base re-derives its adapter, with the new base id
    spec = repo / "models/mb/spec.yaml"
    spec.write_text(spec.read_text().replace("lr: 1.0e-2", "lr: 5.0e-3"))
    ran = dvc(repo, "repro")
    assert "Running stage 'models/mb/dvc.yaml:model-mb'" in ran
    assert "Running stage 'models/ma/dvc.yaml:model-ma'" in ran
    assert "Running stage 'models/hb/dvc.yaml:model-hb'" not in ran
    reg = Registry.open(repo)
    doc = json.loads((repo / "models/ma/manifest.json").read_text())
    assert doc["adapter"]["base"]["id"] == reg.model_manifest("mb").id


@pytest.fixture
def built(registry: Registry) -> Registry:
    write(registry.root / "datasets/d04/spec.yaml", SPECS["datasets/d04/spec.yaml"])
    write(registry.root / "models/mb/spec.yaml", SPECS["models/mb/spec.yaml"])
    reg = Registry.open(registry.root)
    build_dataset(reg, "d04")
    build_model(reg, "mb")
    return Registry.open(registry.root)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "architecture: {family: mlp}\ndata: {train: d04}\n"
            "strategy: {mode: lora, lora: {target_modules: [body.0]}}\n",
            "models/bad/spec.yaml at /strategy/mode: mode lora needs a source model",
        ),
        (
            "source: {model: mb, relation: adapter}\ndata: {train: d04}\n"
            "strategy: {mode: lora, lora: {target_modules: [query]}}\n",
            "models/bad/spec.yaml at /strategy/lora/target_modules/0: no module named 'query'",
        ),
    ],
)
def test_lora_refusals_come_before_training(built: Registry, spec: str, message: str) -> None:
    write(built.model_dir("bad") / "spec.yaml", spec)
    with pytest.raises(BuildError) as err:
        build_model(Registry.open(built.root), "bad")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert [p.name for p in built.model_dir("bad").iterdir()] == ["spec.yaml"]


def test_a_child_of_an_adapter_refuses_a_tampered_base(built: Registry) -> None:
    """Deriving from an adapter reads its base too: the base's weights are checked against
    the base's manifest, not only the adapter's own file."""
    root = built.root
    write(root / "datasets/d59/spec.yaml", SPECS["datasets/d59/spec.yaml"])
    write(root / "models/ma/spec.yaml", SPECS["models/ma/spec.yaml"])
    write(
        root / "models/mc/spec.yaml",
        "source: {model: ma, relation: finetune}\ndata: {train: d59}\n"
        "training: {epochs: 1, lr: 1.0e-2}\n",
    )
    reg = Registry.open(root)
    build_dataset(reg, "d59")
    build_model(reg, "ma")
    weights = root / "models/mb/weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor: the file still parses
    weights.write_bytes(bytes(data))
    tampered = r"models/mb/weights\.safetensors does not match its manifest"
    with pytest.raises(BuildError, match=tampered):
        build_model(Registry.open(root), "mc")
    assert not (root / "models/mc/manifest.json").exists()
