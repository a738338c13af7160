"""Resumable builds: a build killed after a checkpoint resumes and ends with the same weights
bytes as an uninterrupted one; foreign or damaged checkpoints are discarded; a finished build
leaves none (migration/checkpoint.py, migration/loopstate.py)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import new_registry, write
from stemma.migration.build import build_dataset, build_model
from stemma.migration.checkpoint import CHECKPOINTS, META_FILE
from stemma.registry import Registry
from stemma.registry.errors import StemmaError

# dropout (the global RNG), Adam's moments, a cosine schedule and early stopping's best
# weights all have to come back for the bytes to match
SPEC = """
architecture: {family: mlp, hidden: [32], dropout: 0.2}
data: {train: d}
training:
  epochs: 6
  batch_size: 32
  optimizer: adam
  lr: 0.01
  seed: 3
  schedule: {name: cosine, warmup_steps: 5}
  early_stopping: {metric: accuracy, patience: 50}
  checkpoint_every: 1
"""

# SIGKILL the build as it is about to switch in its second checkpoint (found through Python's
# audit events, as tests/test_commit.py does): the first checkpoint is complete, the second's
# tensor file already written.
KILLER = """
import os, signal, sys
REPO = sys.argv[1]
seen = 0

def hook(event, args):
    global seen
    if event == "os.rename" and str(args[1]).endswith("/checkpoint.json"):
        seen += 1
        if seen == 2:
            os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(hook)
from stemma.cli.app import main
main(["build", "model", "m", "-q", "-C", REPO])
"""


def checkpoint_dir(reg: Registry) -> Path:
    return reg.repo_root / ".stemma" / CHECKPOINTS / "m"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """A registry with dataset d built and model m's spec written."""
    path = tmp_path_factory.mktemp("resume") / "repo"
    reg = new_registry(
        path,
        registry_template,
        {"datasets/d/spec.yaml": "source: sklearn:digits\nselect: {limit: 300}\n"},
    )
    build_dataset(reg, "d")
    write(reg.root / "models/m/spec.yaml", SPEC)
    return path


@pytest.fixture(scope="module")
def reference(template: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Weights of an uninterrupted build, which also finds and deletes a foreign checkpoint."""
    reg = new_registry(tmp_path_factory.mktemp("ref") / "repo", template)
    folder = checkpoint_dir(reg)
    folder.mkdir(parents=True)
    (folder / META_FILE).write_text(json.dumps({"key": "another build", "epoch": 3}))
    (folder / "epoch-000003.safetensors").write_bytes(b"not tensors")
    manifest = build_model(reg, "m")
    assert not folder.exists()  # ignored, deleted, and none left behind
    assert "resumed_after_epoch" not in manifest["run"]
    return (reg.root / "models/m/weights.safetensors").read_bytes()


def stemma(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "stemma")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_killed_build_resumes_to_the_same_bytes(
    template: Path, reference: bytes, tmp_path: Path
) -> None:
    reg = new_registry(tmp_path / "repo", template)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(reg.repo_root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    meta = json.loads((checkpoint_dir(reg) / META_FILE).read_text())
    assert meta["epoch"] == 1
    assert not (reg.root / "models/m/weights.safetensors").exists()
    assert "models/m" not in subprocess.run(
        ["git", "status", "--porcelain", "--ignored=no"],
        cwd=reg.repo_root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("models/m/spec.yaml", "")  # git sees no checkpoint file
    done = stemma("build", "model", "m", "-q", "-C", str(reg.repo_root))
    assert done.returncode == 0, done.stderr
    assert (reg.root / "models/m/weights.safetensors").read_bytes() == reference
    run = json.loads((reg.root / "models/m/manifest.json").read_text())["run"]
    assert run["resumed_after_epoch"] == 1
    assert run["early_stopping"]["stopped_epoch"] == 6
    assert not checkpoint_dir(reg).exists()


def test_damaged_checkpoint_is_a_miss(template: Path, reference: bytes, tmp_path: Path) -> None:
    reg = new_registry(tmp_path / "repo", template)
    folder = checkpoint_dir(reg)
    folder.mkdir(parents=True)
    (folder / META_FILE).write_text("{not json")
    manifest = build_model(reg, "m")
    assert "resumed_after_epoch" not in manifest["run"]
    assert (reg.root / "models/m/weights.safetensors").read_bytes() == reference
    assert not folder.exists()


def test_checkpoint_folder_outside_the_registry_is_refused(template: Path, tmp_path: Path) -> None:
    reg = new_registry(tmp_path / "repo", template)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    checkpoint_dir(reg).parent.mkdir(parents=True)
    checkpoint_dir(reg).symlink_to(outside)
    with pytest.raises(StemmaError, match="outside the registry root"):
        build_model(reg, "m")
    assert (outside / "keep.txt").read_text() == "mine"
    assert not (reg.root / "models/m/weights.safetensors").exists()
    shutil.rmtree(outside)
