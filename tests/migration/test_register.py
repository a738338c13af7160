"""`stemma register` with a source, library families and HF folders; your own stages and code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import new_registry, write
from safetensors.torch import save_file
from stemma.registry import Registry
from stemma.registry.pipeline.render import render_dict

BERT = {
    "model_type": "bert",
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 16,
}
SPECS = {
    "datasets/d/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2], limit: 150}
        transforms: [{resize: [16, 16]}]
    """,
    "models/base/spec.yaml": """
        architecture: {family: mlp, hidden: [16]}
        data: {train: d}
        training: {epochs: 1, seed: 0}
    """,
}
# your own training script: trains a timm model and registers it with its source
TRAIN_SCRIPT = """
import sys
import timm, torch
from safetensors.torch import save_file
torch.manual_seed(0)
model = timm.create_model("test_resnet", pretrained=False, num_classes=3, in_chans=1)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "own.safetensors")
"""


def dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_own_stage_registers_and_stemma_derives_from_it(registry: Registry, cli) -> None:
    reg = new_registry(registry.repo_root.parent / "own", registry.repo_root, SPECS)
    repo = reg.repo_root
    write(repo / "train.py", TRAIN_SCRIPT)
    write(
        repo / "dvc.yaml",
        """
        stages:
          train-own:
            cmd: python train.py && stemma register own --weights own.safetensors
              --family timm --name test_resnet --eval d --source base
            deps: [train.py, models/base/manifest.json]
            outs:
            - models/own/weights.safetensors
            - models/own/manifest.json: {cache: false}
        """,
    )
    write(
        repo / "models/kid/spec.yaml",
        """
        source: {model: own}
        data: {train: d}
        strategy: {mode: linear-probe, reinit: ["fc.*"]}
        training: {epochs: 1, seed: 0}
        """,
    )
    assert cli(["pipeline"], Path(repo)).code == 0
    stages = render_dict(Registry.open(repo))["stages"]
    assert "train-own" in stages  # a stage stemma did not write is kept
    assert "models/own/weights.safetensors" in stages["model-kid"]["deps"]
    assert cli(["pipeline", "--check"], repo).code == 0
    # With stages of one's own in the root dvc.yaml, a plain `dvc repro` runs those and what
    # they need; --all-pipelines runs every dvc.yaml of the repository.
    dvc(repo, "repro", "--all-pipelines")
    own = json.loads((repo / "models/own/manifest.json").read_text())
    base = json.loads((repo / "models/base/manifest.json").read_text())
    assert own["source"] == {"model": "base", "relation": "finetune", "id": base["id"]}
    assert own["architecture"]["config"]["family"] == "timm"
    kid = json.loads((repo / "models/kid/manifest.json").read_text())
    assert kid["source"]["id"] == own["id"]
    assert kid["parameters"]["transferred"] > 0
    res = cli(["ls", "--json"], repo)
    assert res.code == 0, res.stderr
    ls = json.loads(res.stdout)
    status = {row["name"]: row["status"] for row in ls}
    assert status["own"] == "registered" and status["kid"] == "built"
    res = cli(["query", "SELECT status FROM models WHERE name = 'own'", "-f", "json"], repo)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)[0]["status"] == "registered"
    # editing the training script reruns that stage and everything derived from it
    write(repo / "train.py", TRAIN_SCRIPT.replace("manual_seed(0)", "manual_seed(1)"))
    ran = dvc(repo, "repro", "--all-pipelines")
    assert "Running stage 'train-own'" in ran
    assert "Running stage 'models/kid/dvc.yaml:model-kid'" in ran
    assert "Running stage 'models/base/dvc.yaml:model-base'" not in ran


def test_hf_folder_registers_with_a_source_as_a_dvc_output(registry: Registry, cli) -> None:
    import transformers

    reg = new_registry(registry.repo_root.parent / "hf", registry.repo_root, SPECS)
    repo = reg.repo_root
    write(repo / "models/base/spec.yaml", SPECS["models/base/spec.yaml"])
    assert cli(["build", "dataset", "d"], repo).code == 0
    assert cli(["build", "model", "base", "-q"], repo).code == 0
    cfg = transformers.AutoConfig.for_model(**BERT, num_labels=4)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(cfg)
    model.save_pretrained(repo / "export")
    res = cli(["register", "bert", "--weights", "export", "--source", "base"], repo)
    assert res.code == 0, res.stderr
    doc = json.loads((repo / "models/bert/manifest.json").read_text())
    assert doc["architecture"]["config"]["family"] == "transformers"
    assert doc["architecture"]["config"]["num_classes"] == 4
    assert doc["source"]["model"] == "base"
    # the weights are a cached DVC output, not a file for git
    assert (repo / "models/bert/weights.safetensors.dvc").is_file()
    assert "weights.safetensors" in (repo / "models/bert/.gitignore").read_text()
    back = transformers.AutoModelForSequenceClassification.from_config(cfg)
    from safetensors.torch import load_file

    back.load_state_dict(load_file(repo / "models/bert/weights.safetensors"), strict=True)
    # a wrong family is refused in one line and writes nothing
    save_file({"weight": torch.zeros(2, 2)}, repo / "odd.safetensors")
    res = cli(
        [
            "register",
            "odd",
            "--weights",
            "odd.safetensors",
            "--family",
            "timm",
            "--name",
            "test_resnet",
        ],
        repo,
    )
    assert res.code == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "fc.weight" in res.stderr and not (repo / "models/odd").exists()


def test_entrypoint_file_is_a_dependency_of_the_models_that_run_it(registry: Registry) -> None:
    reg = new_registry(registry.repo_root.parent / "ep", registry.repo_root, SPECS)
    repo = reg.repo_root
    write(repo / "nets/__init__.py", "")
    write(
        repo / "nets/small.py",
        """
        from torch import nn

        class Net(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(width, 8), nn.ReLU())
                self.head = nn.Linear(8, 3)

            def forward_features(self, x):
                return self.body(x)

            def forward(self, x):
                return self.head(self.forward_features(x))

        def build(in_shape, num_classes):
            return Net(in_shape[0] * in_shape[1] * in_shape[2])
        """,
    )
    write(repo / "stemma.yaml", "version: 1\nroot: .\nentrypoints: ['nets.small:build']\n")
    write(
        repo / "models/mine/spec.yaml",
        "architecture: {family: entrypoint, entrypoint: 'nets.small:build'}\ndata: {train: d}\n",
    )
    write(repo / "models/child/spec.yaml", "source: {model: mine}\ndata: {train: d}\n")
    stages = render_dict(Registry.open(repo))["stages"]
    assert "nets/small.py" in stages["model-mine"]["deps"]
    assert "nets/small.py" in stages["model-child"]["deps"]  # it inherits the architecture
    assert "nets/small.py" not in stages["model-base"]["deps"]
