"""dvc.yaml generation, and `dvc repro` rebuilding exactly the stale models, reproducibly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import git, new_registry, write
from stemma.registry import Registry, pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import synth

TINY = "{epochs: 1, batch_size: 64, optimizer: adam, lr: %s, seed: 0}"
SPECS = {
    "datasets/d04/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4], limit: 300}
    """,
    "datasets/d59/spec.yaml": """
        source: sklearn:digits
        select: {classes: [5, 6, 7, 8, 9], relabel: contiguous, limit: 300}
    """,
    "models/base/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [16]}}
        data: {{train: d04}}
        training: {TINY % "1.0e-2"}
    """,
    "models/ft/spec.yaml": f"""
        source: {{model: base}}
        data: {{train: d59}}
        strategy: {{reinit: ["head.*"]}}
        training: {TINY % "1.0e-2"}
    """,
    "models/probe/spec.yaml": f"""
        source: {{model: ft}}
        data: {{train: d59}}
        strategy: {{mode: linear-probe}}
        training: {TINY % "1.0e-2"}
    """,
    "models/other/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [8]}}
        data: {{train: d59}}
        training: {TINY % "1.0e-2"}
    """,
}
MODELS = ("base", "ft", "probe", "other")


def dvc(repo: Path, *args: str) -> str:
    """Run the real DVC command line in `repo` and return its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def state(reg: Registry) -> dict[str, tuple[str, bytes, bytes]]:
    """Per model: manifest id, weights bytes and the raw manifest bytes."""
    out = {}
    for name in MODELS:
        folder = reg.model_dir(name)
        manifest = (folder / "manifest.json").read_bytes()
        out[name] = (
            json.loads(manifest)["id"],
            (folder / "weights.safetensors").read_bytes(),
            manifest,
        )
    return out


def test_pipeline_is_deterministic_and_follows_lineage(registry: Registry) -> None:
    reg = new_registry(registry.repo_root.parent / "p", registry.repo_root, SPECS)
    doc = pipeline.render_dict(reg)
    assert pipeline.render(reg) == pipeline.render(Registry.open(reg.root))
    stages = list(doc["stages"])
    assert stages.index("model-base") < stages.index("model-ft") < stages.index("model-probe")
    ft = doc["stages"]["model-ft"]
    assert ft["cmd"] == "stemma build model ft"
    assert "models/base/weights.safetensors" in ft["deps"]
    assert "models/base/manifest.json" in ft["deps"]
    assert "datasets/d59/data.npz" in ft["deps"]
    outs = {next(iter(o)): next(iter(o.values())) for o in ft["outs"]}
    assert outs["models/ft/manifest.json"]["cache"] is False
    assert "cache" not in outs["models/ft/weights.safetensors"]
    assert doc["artifacts"]["ft"] == {
        "path": "models/ft/weights.safetensors",
        "type": "model",
        "meta": {"source": "base", "relation": "finetune"},
    }
    assert yaml.safe_load(pipeline.render(reg)) == doc


def test_pipeline_check_fails_when_out_of_step(registry: Registry, cli) -> None:
    reg = new_registry(registry.repo_root.parent / "p", registry.repo_root, SPECS)
    assert cli(["pipeline", "--check"], reg.root).code == 1
    res = cli(["pipeline"], reg.root)
    assert res.code == 0 and "wrote dvc.yaml" in res.stdout
    assert cli(["pipeline", "--check"], reg.root).code == 0
    write(reg.root / "models/extra/spec.yaml", "source: {model: other}\ndata: {train: d04}\n")
    before = (reg.root / "dvc.yaml").read_bytes()
    res = cli(["pipeline", "--check"], reg.root)
    assert res.code == 1
    assert res.stderr.strip() == (
        "error: dvc.yaml is out of step with the specs; run `stemma pipeline`"
    )
    assert (reg.root / "dvc.yaml").read_bytes() == before


def test_model_stages_depend_on_the_settings_as_params(registry: Registry) -> None:
    reg = new_registry(registry.repo_root.parent / "d", registry.repo_root, SPECS)
    stages = pipeline.render_dict(reg)["stages"]
    assert {name: stage.get("params") for name, stage in stages.items()} == {
        name: [{"stemma.yaml": None}] if name.startswith("model-") else None for name in stages
    }
    assert {name for name in stages if name.startswith("model-")} == {f"model-{m}" for m in MODELS}
    text = pipeline.render(reg)
    settings = reg.repo_root / "stemma.yaml"
    settings.write_text(settings.read_text() + "defaults:\n  training: {lr: 0.1}\n")
    assert pipeline.render(Registry.open(reg.root)) == text  # the file, whatever it sets


@pytest.mark.slow
def test_dvc_repro_rebuilds_exactly_the_stale_family(registry: Registry, cli) -> None:
    reg = new_registry(registry.repo_root.parent / "e2e", registry.repo_root, SPECS)
    repo = reg.repo_root
    assert cli(["pipeline"], repo).code == 0
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "build")
    first = state(Registry.open(repo))
    assert cli(["validate"], repo).code == 0

    # Nothing is stale: a second repro runs no stage.
    out = dvc(repo, "repro")
    assert "Running stage" not in out

    # A forced rebuild on CPU reproduces every byte of the weights and every id.
    dvc(repo, "repro", "--force")
    forced = state(Registry.open(repo))
    for name in MODELS:
        assert forced[name][:2] == first[name][:2], name

    # Change the base's learning rate: the base and its descendants are re-derived.
    spec = repo / "models/base/spec.yaml"
    spec.write_text(spec.read_text().replace("lr: 1.0e-2", "lr: 3.0e-3"))
    out = dvc(repo, "repro")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"model-base", "model-ft", "model-probe"}
    after = state(Registry.open(repo))
    for name in ("base", "ft", "probe"):
        assert after[name][0] != forced[name][0], name
    assert after["other"][2] == forced["other"][2]  # untouched, to the byte
    reg = Registry.open(repo)
    assert reg.model_manifest("ft").source_id == after["base"][0]
    assert reg.model_manifest("probe").source_id == after["ft"][0]
    assert cli(["validate"], repo).code == 0

    # stemma.yaml is a params file of every model stage: a training default set, changed or
    # removed makes exactly the model stages stale to DVC.
    settings = repo / "stemma.yaml"
    plain = settings.read_text()
    models = {f"model-{name}" for name in MODELS}
    for text in (
        plain + "defaults:\n  training: {weight_decay: 0.0}\n",
        plain + "defaults:\n  training: {weight_decay: 1.0e-4}\n",
        plain,
    ):
        settings.write_text(text)
        assert set(json.loads(dvc(repo, "status", "--json"))) == models
        dvc(repo, "commit", "--force")  # take the outputs as they stand, new params and all
        assert json.loads(dvc(repo, "status", "--json")) == {}
    assert cli(["pipeline", "--check"], repo).code == 0


def test_libyaml_emitter_writes_the_same_dvc_yaml_bytes(tmp_path: Path) -> None:
    from stemma.registry.yamlio import dump_yaml

    synth.generate(tmp_path / "reg", 40, shape="mixed", seed=5, family_size=15)
    doc = pipeline.render_dict(Registry.open(tmp_path / "reg"))
    odd = ["ü ß — 日本", "a: b # c", "'quoted'", 'x "y"', "yes", "1e3", "", " lead", "x" * 150]
    for i, text in enumerate(odd):
        doc["artifacts"][f"odd{i}"] = {"path": f"models/odd{i}", "desc": text, "labels": [text]}
    assert pipeline._dump(doc) == dump_yaml(doc)
