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
# the two-process builds: DDP (the default strategy) and FSDP2 (torch's fully_shard, which
# runs on the CPU with gloo in torch 2.14: all-gather and reduce-scatter both work there)
RUNS = {"duo": "", "fsdp": ", strategy: fsdp"}


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
    roots = {"solo": reg.repo_root}
    for run, strategy in RUNS.items():
        shutil.copytree(reg.repo_root, base / run, symlinks=True)
        roots[run] = base / run
        (roots[run] / "models" / "m").mkdir(parents=True)
        spec = SPEC % f", distributed: {{processes: 2, backend: gloo{strategy}}}"
        (roots[run] / "models" / "m" / "spec.yaml").write_text(spec)
    (reg.model_dir("m")).mkdir(parents=True)
    (reg.model_dir("m") / "spec.yaml").write_text(SPEC % "")
    before = {run: _files(root) for run, root in roots.items()}
    build_model(Registry.open(reg.repo_root), "m")
    env = {**os.environ, "STEMMA_DEBUG": ""}
    for run in RUNS:
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "stemma"),
                "build",
                "model",
                "m",
                "--quiet",
                "--json",
            ],
            cwd=roots[run],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (base / f"{run}.json").write_text(proc.stdout)
    changed = {run: sorted(_changed(before[run], _files(root))) for run, root in roots.items()}
    (base / "changed.json").write_text(json.dumps(changed))
    return {**roots, "base": base}


def _manifest(root: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((root / "models" / "m" / "manifest.json").read_text())


@pytest.mark.parametrize("run", list(RUNS))
def test_two_gloo_processes_match_one(pair: dict[str, Path], run: str) -> None:
    solo, two = _manifest(pair["solo"]), _manifest(pair[run])
    want = {"world_size": 2, "backend": "gloo"}
    assert two["run"]["distributed"] == (want if run == "duo" else {**want, "strategy": "fsdp"})
    assert "distributed" not in solo["run"]
    out = json.loads((pair["base"] / f"{run}.json").read_text())  # rank 0 alone prints
    assert out["id"] == two["id"]
    curves = [
        json.loads((pair[r] / "models" / "m" / "curve.json").read_text()) for r in ("solo", run)
    ]
    for one, other in zip(*curves, strict=True):
        assert abs(one["train_loss"] - other["train_loss"]) <= LOSS_TOLERANCE
        assert abs(one["eval_loss"] - other["eval_loss"]) <= LOSS_TOLERANCE
    acc = solo["metrics"]["accuracy"] - two["metrics"]["accuracy"]
    assert abs(acc) <= ACCURACY_TOLERANCE
    # FSDP's weights were gathered whole into an unsharded module: the same tensors as DDP's
    if run == "fsdp":
        from safetensors.numpy import load_file

        names = [
            load_file(str(pair[r] / "models" / "m" / "weights.safetensors")) for r in ("duo", run)
        ]
        assert {k: v.shape for k, v in names[0].items()} == {
            k: v.shape for k, v in names[1].items()
        }


@pytest.mark.parametrize("run", list(RUNS))
def test_only_rank_zero_writes(pair: dict[str, Path], run: str) -> None:
    """A two-process build changes exactly the files the one-process build does."""
    changed = json.loads((pair["base"] / "changed.json").read_text())
    outputs = {k: [p for p in v if not p.startswith(".stemma/")] for k, v in changed.items()}
    assert outputs[run] == outputs["solo"]
    assert "models/m/weights.safetensors" in changed[run]
    assert not (pair[run] / ".stemma" / "checkpoints" / "m").exists()


def test_fsdp_refuses_checkpoints() -> None:
    """Each FSDP process holds a shard: there is no one file a resumed build could read."""
    block = {"distributed": {"processes": 2, "strategy": "fsdp"}, "checkpoint_every": 1}
    with pytest.raises(BuildError, match=r"m/spec.yaml at /training/checkpoint_every: .*fsdp"):
        TrainConfig.from_spec(block, "m/spec.yaml")
    fsdp = TrainConfig.from_spec({"distributed": {"processes": 2, "strategy": "fsdp"}})
    assert fsdp.distributed is not None and fsdp.distributed.sharded
    assert fsdp.to_dict()["distributed"]["strategy"] == "fsdp"
    ddp = TrainConfig.from_spec({"distributed": {"processes": 2, "strategy": "ddp"}})
    assert ddp.to_dict()["distributed"] == {"processes": 2, "nodes": 1}  # earlier keys


def test_held_store_writes_nothing(tmp_path: Path) -> None:
    from stemma.registry.store import derived as _store

    with _store.held():
        assert not _store.write(tmp_path / ".stemma" / "valid", b"x")
    assert _store.write(tmp_path / ".stemma" / "valid", b"x")


def test_distributed_block_is_checked_by_the_schema() -> None:
    good = TrainConfig.from_spec({"distributed": {"processes": 2}})
    assert good.distributed is not None and good.distributed.world_size == 2
    assert "distributed" not in TrainConfig.from_spec({}).to_dict()  # old checkpoint keys
    assert TrainConfig.from_spec({"distributed": {"processes": 1}}).distributed is None
    bad_blocks = (
        {"processes": 0},
        {"processes": 2, "backend": "mpi"},
        {"nodes": 2},
        {"processes": 2, "strategy": "zero3"},
    )
    for bad in bad_blocks:
        with pytest.raises((SchemaError, BuildError), match="/training/distributed"):
            TrainConfig.from_spec({"distributed": bad}, "m/spec.yaml")
