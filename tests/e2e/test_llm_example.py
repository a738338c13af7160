"""The committed language-model example (examples/llm) is a valid registry whose pipeline
files are in step with its specs. Building it takes minutes: `cd examples/llm && dvc repro`,
then `python benchmarks/check_llm_example.py`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm"
SKIP = shutil.ignore_patterns(".stemma", "cache", "tmp", "*.safetensors", "data.npz", "adapter")


def test_the_llm_example_validates_and_its_pipeline_is_in_step(tmp_path: Path, cli: Any) -> None:
    repo = tmp_path / "llm"
    shutil.copytree(EXAMPLE, repo, ignore=SKIP)  # a copy: validate writes its index cache
    res = cli(["validate"], repo)
    assert res.code == 0, res.stdout + res.stderr
    assert "7 models, 3 datasets" in res.stdout
    res = cli(["pipeline", "--check"], repo)
    assert res.code == 0, res.stdout + res.stderr
