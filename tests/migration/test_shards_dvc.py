"""Sharded weights through real `dvc repro`: the stage's `weights.safetensors` output is the
file of an unsharded build and the folder (index + shards) of a sharded one, so dvc.yaml is
the same for both and DVC records, caches and checks either."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import dvc, git, new_registry, write
from stemma.migration.verify import verify_model as verify
from stemma.registry import Registry
from stemma.registry.pipeline import pipefiles, repro
from stemma.registry.pipeline import render as pipeline

SPECS = {
    "datasets/d04/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4], limit: 200}
    """,
    "models/big/spec.yaml": """
        architecture: {family: mlp, hidden: [16]}
        data: {train: d04}
        training: {epochs: 1, batch_size: 64, lr: 1.0e-2, seed: 0}
    """,
    "models/small/spec.yaml": """
        architecture: {family: mlp, hidden: [4]}
        data: {train: d04}
        training: {epochs: 1, batch_size: 64, lr: 1.0e-2, seed: 0}
    """,
}


def test_sharded_model_builds_through_dvc_repro(registry: Registry) -> None:
    reg = new_registry(registry.repo_root.parent / "s", registry.repo_root, SPECS)
    settings = reg.repo_root / "stemma.yaml"
    # 1,200 bytes: the 16-wide model (4.5 KB of float32) shards, the 4-wide one does not
    settings.write_text(settings.read_text() + "limits: {max_shard_bytes: 1200}\n")
    reg = Registry.open(reg.repo_root)
    unsharded = pipeline.render_files(reg)["models/big/dvc.yaml"]
    assert "models/big/weights.safetensors:" in unsharded  # the same output either way
    pipefiles.write(reg)
    git(reg.repo_root, "add", "-A")
    git(reg.repo_root, "commit", "-qm", "specs")
    dvc(reg.repo_root, "repro")
    folder = reg.model_dir("big")
    block = json.loads((folder / "manifest.json").read_text())["weights"]
    assert len(block["shards"]) >= 2
    assert (folder / "weights.safetensors").is_dir()
    assert (folder / block["path"]).is_file()
    assert (reg.model_dir("small") / "weights.safetensors").is_file()
    assert "up to date" in dvc(reg.repo_root, "status")
    for name in ("big", "small"):
        found = verify(reg, name)
        assert found.ok, [f for f in found.findings if f.status == "fail"]
    # a missing shard folder is an output to make: `stemma repro` hands the stage to DVC
    assert repro.plan(Registry.open(reg.repo_root)).models == []
    index = folder / block["path"]
    saved = index.read_bytes()
    index.unlink()
    assert repro.plan(Registry.open(reg.repo_root)).models == ["big"]
    index.write_bytes(saved)
    write(reg.model_dir("big") / "spec.yaml", SPECS["models/big/spec.yaml"].replace("16", "8"))
    dvc(reg.repo_root, "repro")  # 8 wide is 2.3 KB: still sharded, fewer shards
    block = json.loads((folder / "manifest.json").read_text())["weights"]
    named = {Path(block["path"]).name, *(Path(s["path"]).name for s in block["shards"])}
    assert {p.name for p in (folder / "weights.safetensors").iterdir()} == named
    assert "up to date" in dvc(reg.repo_root, "status")
    assert verify(Registry.open(reg.repo_root), "big").ok
