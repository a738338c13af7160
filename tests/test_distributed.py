"""Distributed builds: `stemma build model` starts itself under torchrun when the spec asks
for several processes; DDP averages the gradients, rank 0 alone writes, and the result
matches a one-process build within float rounding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import new_registry
from stemma.migration.build import build_dataset, build_model
from stemma.migration.train import TrainConfig
from stemma.registry import Registry
from stemma.registry.errors import BuildError, SchemaError

SPEC = """
    architecture: {family: mlp, hidden: [16]}
    data: {train: d04}
    training: {epochs: 2, batch_size: 50, lr: 1.0e-2, seed: 0%s}
"""
DATA = """
    source: sklearn:digits
    select: {classes: [0, 1, 2, 3, 4], limit: 150}
"""
# The two runs differ only in how each batch's mean is summed (two half-batch means averaged
# by DDP against one mean): float32 rounding, far below these bounds after two epochs.
LOSS_TOLERANCE = 1e-4
ACCURACY_TOLERANCE = 0.02


def _files(root: Path) -> dict[str, int]:
    """Every file under `root` (but git's and DVC's own) and its modification time."""
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] not in (".git", ".dvc"):
            out[str(rel)] = path.stat().st_mtime_ns
    return out


def _changed(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {k for k, v in after.items() if before.get(k) != v} | (set(before) - set(after))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> dict[str, Path]:
    """One registry with the dataset built, copied: `solo` builds m in one process (in this
    one), `duo` the same model with `distributed: {processes: 2}` through the command line."""
    base = tmp_path_factory.mktemp("dist")
    reg = new_registry(base / "solo", registry_template, {"datasets/d04/spec.yaml": DATA})
    build_dataset(reg, "d04")
    shutil.copytree(reg.repo_root, base / "duo", symlinks=True)
    (reg.model_dir("m")).mkdir(parents=True)
    (reg.model_dir("m") / "spec.yaml").write_text(SPEC % "")
    duo = base / "duo"
    (duo / "models" / "m").mkdir(parents=True)
    spec = SPEC % ", distributed: {processes: 2, backend: gloo}"
    (duo / "models" / "m" / "spec.yaml").write_text(spec)
    before = {"solo": _files(reg.repo_root), "duo": _files(duo)}
    build_model(Registry.open(reg.repo_root), "m")
    env = {**os.environ, "STEMMA_DEBUG": ""}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "stemma"), "build", "model", "m", "--quiet", "--json"],
        cwd=duo,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (base / "duo.json").write_text(proc.stdout)
    changed = {
        "solo": _changed(before["solo"], _files(reg.repo_root)),
        "duo": _changed(before["duo"], _files(duo)),
    }
    (base / "changed.json").write_text(json.dumps({k: sorted(v) for k, v in changed.items()}))
    return {"solo": reg.repo_root, "duo": duo, "base": base}


def _manifest(root: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((root / "models" / "m" / "manifest.json").read_text())


def test_two_gloo_processes_match_one(pair: dict[str, Path]) -> None:
    solo, duo = _manifest(pair["solo"]), _manifest(pair["duo"])
    assert duo["run"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert "distributed" not in solo["run"]
    out = json.loads((pair["base"] / "duo.json").read_text())  # rank 0 alone prints
    assert out["id"] == duo["id"]
    curves = [
        json.loads((p / "models" / "m" / "curve.json").read_text())
        for p in pair.values()
        if p.is_dir() and (p / "models").is_dir()
    ]
    for one, two in zip(*curves, strict=True):
        assert abs(one["train_loss"] - two["train_loss"]) <= LOSS_TOLERANCE
        assert abs(one["eval_loss"] - two["eval_loss"]) <= LOSS_TOLERANCE
    acc = solo["metrics"]["accuracy"] - duo["metrics"]["accuracy"]
    assert abs(acc) <= ACCURACY_TOLERANCE


def test_only_rank_zero_writes(pair: dict[str, Path]) -> None:
    """The two-process build changes exactly the files the one-process build does."""
    changed = json.loads((pair["base"] / "changed.json").read_text())
    outputs = {k: [p for p in v if not p.startswith(".stemma/")] for k, v in changed.items()}
    assert outputs["duo"] == outputs["solo"]
    assert "models/m/weights.safetensors" in changed["duo"]
    assert not (pair["duo"] / ".stemma" / "checkpoints" / "m").exists()


def test_held_store_writes_nothing(tmp_path: Path) -> None:
    from stemma.registry import _store

    with _store.held():
        assert not _store.write(tmp_path / ".stemma" / "valid", b"x")
    assert _store.write(tmp_path / ".stemma" / "valid", b"x")


def test_distributed_block_is_checked_by_the_schema() -> None:
    good = TrainConfig.from_spec({"distributed": {"processes": 2}})
    assert good.distributed is not None and good.distributed.world_size == 2
    assert "distributed" not in TrainConfig.from_spec({}).to_dict()  # old checkpoint keys
    assert TrainConfig.from_spec({"distributed": {"processes": 1}}).distributed is None
    for bad in ({"processes": 0}, {"processes": 2, "backend": "mpi"}, {"nodes": 2}):
        with pytest.raises((SchemaError, BuildError), match="/training/distributed"):
            TrainConfig.from_spec({"distributed": bad}, "m/spec.yaml")
