"""A build's outputs switch in as one unit; an identical rebuild changes no file; kills are safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write
from stemma.migration.build import build_dataset, build_model
from stemma.migration.commit import COMMITTING, STAGING, commit, pending, recover
from stemma.migration.verify import verify_model
from stemma.registry import Registry
from stemma.registry.errors import BuildError

SPEC = (
    "architecture: {family: mlp, hidden: [8]}\ndata: {train: d}\ntraining: {epochs: 1, seed: 0}\n"
)
TRACKED = ("weights.safetensors", "manifest.json", "metrics.json", "curve.json")

# Run `stemma build model m` in a fresh process and SIGKILL it at a deterministic point, found
# through Python's audit events (no change to the build): WHEN is "written" (the first file
# opened for writing after the weights file was) or "switch" (just before the manifest is moved
# into place, the weights already are).
KILLER = """
import os, signal, sys
WHEN, REPO = sys.argv[1], sys.argv[2]
armed = False

def writing(args):
    mode, flags = args[1], args[2]
    return (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))

def hook(event, args):
    global armed
    if WHEN == "written" and event == "open" and isinstance(args[0], str) and writing(args):
        if armed:
            os.kill(os.getpid(), signal.SIGKILL)
        armed = armed or "weights.safetensors" in os.path.basename(args[0])
    if WHEN == "switch" and event == "os.rename" and str(args[1]).endswith("/manifest.json"):
        if ".stemma-commit" in str(args[0]):
            os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(hook)
from stemma.cli.app import main
main(["build", "model", "m", "-q", "-C", REPO])
"""


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` with its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def built(registry: Registry) -> Registry:
    """A registry with one small dataset and one model built."""
    write(registry.root / "datasets/d/spec.yaml", "source: sklearn:digits\nselect: {limit: 200}\n")
    write(registry.root / "models/m/spec.yaml", SPEC)
    build_dataset(registry, "d")
    build_model(Registry.open(registry.repo_root), "m")
    return Registry.open(registry.repo_root)


def _kill(reg: Registry, when: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLER, when, str(reg.repo_root)], capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_commit_writes_only_what_changed_and_the_manifest_last(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    assert commit(folder, {"manifest.json": b"1", "weights.safetensors": b"w", "a.json": b"a"}) == [
        "a.json",
        "weights.safetensors",
        "manifest.json",
    ]
    before = snapshot(folder)
    assert commit(folder, {"manifest.json": b"1", "weights.safetensors": b"w"}) == []
    assert snapshot(folder) == before
    assert commit(folder, {"manifest.json": b"2", "weights.safetensors": b"w"}) == ["manifest.json"]
    assert snapshot(folder)["weights.safetensors"] == before["weights.safetensors"]
    assert sorted(os.listdir(folder)) == ["a.json", "manifest.json", "weights.safetensors"]


def test_recover_drops_a_staging_folder_and_finishes_a_commit(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write(folder / "manifest.json", "old")
    write(folder / STAGING / "manifest.json", "never committed")
    assert recover(folder) is False and (folder / "manifest.json").read_text() == "old"
    write(folder / COMMITTING / "manifest.json", "new")
    assert pending(folder)
    assert recover(folder) is True and (folder / "manifest.json").read_text() == "new"
    assert sorted(os.listdir(folder)) == ["manifest.json"]


def test_identical_rebuild_leaves_every_output_untouched(built: Registry) -> None:
    folder = built.model_dir("m")
    before = snapshot(folder)
    first = json.loads((folder / "last-run.json").read_text())
    again = build_model(Registry.open(built.repo_root), "m")
    after = snapshot(folder)
    assert {k: after[k] for k in TRACKED} == {k: before[k] for k in TRACKED}
    assert again["id"] == json.loads(before["manifest.json"][0])["id"]
    assert json.loads((folder / "last-run.json").read_text())["started"] >= first["started"]
    data = built.dataset_dir("d")
    kept = snapshot(data)
    build_dataset(Registry.open(built.repo_root), "d")
    assert {k: v for k, v in snapshot(data).items() if k != "last-run.json"} == {
        k: v for k, v in kept.items() if k != "last-run.json"
    }


def test_failed_build_changes_nothing(built: Registry) -> None:
    folder = built.model_dir("m")
    write(folder / "spec.yaml", SPEC.replace("epochs: 1", "epochs: 1, lr: 1.0e+30"))
    before = snapshot(folder)
    with pytest.raises(BuildError):  # the loss is NaN: the manifest cannot hold it
        build_model(Registry.open(built.repo_root), "m")
    assert snapshot(folder) == before


def test_kill_right_after_the_weights_are_written_keeps_the_old_build(built: Registry) -> None:
    folder = built.model_dir("m")
    write(folder / "spec.yaml", SPEC.replace("seed: 0", "seed: 1"))
    before = snapshot(folder)
    _kill(built, "written")
    after = snapshot(folder)
    assert {k: after.get(k) for k in TRACKED} == {k: before[k] for k in TRACKED}
    found = {f.item: f.status for f in verify_model(Registry.open(built.repo_root), "m").findings}
    assert found["weights"] == "pass" and found["metrics"] == "pass" and found["id"] == "pass"
    manifest = build_model(Registry.open(built.repo_root), "m")  # the next build cleans up
    assert sorted(os.listdir(folder)) == sorted(["spec.yaml", "last-run.json", *TRACKED])
    assert json.loads((folder / "manifest.json").read_text())["id"] == manifest["id"]


def test_kill_while_switching_is_finished_by_the_next_build(built: Registry) -> None:
    folder = built.model_dir("m")
    write(folder / "spec.yaml", SPEC.replace("seed: 0", "seed: 2"))
    _kill(built, "switch")
    assert pending(folder)  # new weights in place, the new manifest waiting beside the old one
    expected = json.loads((folder / COMMITTING / "manifest.json").read_text())["id"]
    manifest = build_model(Registry.open(built.repo_root), "m")
    assert manifest["id"] == expected and not pending(folder)
    assert verify_model(Registry.open(built.repo_root), "m").ok
