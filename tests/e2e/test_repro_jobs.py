"""`stemma repro --jobs N`: stages with no lineage between them run at the same time, each
through its own `dvc repro --single-item`, parents still first; DVC records every one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import dvc, git, new_registry
from stemma.registry import Registry
from stemma.registry.pipeline import pipefiles, repro

TRAIN = "training: {epochs: 1, batch_size: 64, lr: 1.0e-2, seed: 0}"
SPECS = {
    "datasets/d04/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4], limit: 150}
    """,
    "models/a/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [8]}}
        data: {{train: d04}}
        {TRAIN}
    """,
    "models/b/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [4]}}
        data: {{train: d04}}
        {TRAIN}
    """,
    "models/c/spec.yaml": f"""
        source: {{model: a}}
        data: {{train: d04}}
        {TRAIN}
    """,
}
# Stands in for `stemma` on the stages' PATH: logs when each build starts and ends.
WRAPPER = """#!/bin/sh
echo "start $3 $(date +%s%N)" >> "{log}"
"{real}" "$@"
rc=$?
echo "end $3 $(date +%s%N)" >> "{log}"
exit $rc
"""


def test_parents_come_first_in_the_plan(registry: Registry) -> None:
    reg = new_registry(registry.repo_root.parent / "p", registry.repo_root, SPECS)
    plan = repro.plan(reg)
    data = "datasets/d04/dvc.yaml:dataset-d04"
    assert plan.parents[data] == []
    assert plan.parents["models/a/dvc.yaml:model-a"] == [data]
    assert plan.parents["models/c/dvc.yaml:model-c"] == ["models/a/dvc.yaml:model-a", data]


def test_independent_stages_overlap(registry: Registry, tmp_path: Path) -> None:
    reg = new_registry(registry.repo_root.parent / "j", registry.repo_root, SPECS)
    pipefiles.write(reg)
    git(reg.repo_root, "add", "-A")
    git(reg.repo_root, "commit", "-qm", "specs")
    bin_dir, log = tmp_path / "bin", tmp_path / "builds.log"
    bin_dir.mkdir()
    real = Path(sys.executable).parent / "stemma"
    (bin_dir / "stemma").write_text(WRAPPER.format(log=log, real=real))
    (bin_dir / "stemma").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(real), "repro", "--jobs", "2"],
        cwd=reg.repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    times: dict[tuple[str, str], int] = {}
    for line in log.read_text().splitlines():
        what, name, ns = line.split()
        times[what, name] = int(ns)
    assert times["start", "a"] < times["end", "b"] and times["start", "b"] < times["end", "a"]
    assert times["start", "c"] >= times["end", "a"]  # the child after its parent
    assert times["start", "a"] >= times["end", "d04"]  # and both after their data
    assert "up to date" in dvc(reg.repo_root, "status")
