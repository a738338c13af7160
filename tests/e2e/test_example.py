"""The committed example registry (zoo/) rebuilds to the same ids from a clean clone.

CI runs on other machines than the one that built the example, so this is the check that
portable numerics hold across processors: `dvc repro` in a fresh clone must reproduce every
committed manifest id and leave `git status` clean (manifests, metrics, curves and dvc.lock
byte for byte). Run it alone with `pytest -m example`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _ids(root: Path) -> dict[str, str]:
    return {
        str(p.parent.relative_to(root)): json.loads(p.read_text())["id"]
        for p in sorted(root.glob("zoo/*/*/manifest.json"))
    }


@pytest.mark.slow
@pytest.mark.example
def test_a_clean_clone_reproduces_every_committed_id(tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    committed = _ids(clone)
    assert committed, "the example has no built manifests"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "repro", "-q"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _ids(clone) == committed
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout
    assert status == ""
