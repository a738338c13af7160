"""A model's metrics.json or curve.json reached through a symbolic link: refused with the
same message whether the link is the file or a folder above it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import dataset_manifest, model_manifest
from stemma.registry import Registry
from stemma.registry.check.consistency import check


def _built(populated: Registry) -> Registry:
    dataset_manifest(populated, "digits-5to9")
    model_manifest(populated, "scratch")
    return Registry.open(populated.repo_root)


def _messages(root: Path) -> list[str]:
    return [str(v) for v in check(Registry.open(root))]


def test_plain_metric_files_that_agree_pass(populated: Registry) -> None:
    reg = _built(populated)
    folder = reg.root / "models/scratch"
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.9, "loss": 0.1}))
    assert _messages(reg.repo_root) == []


@pytest.mark.parametrize("file", ["metrics.json", "curve.json"])
def test_a_linked_metric_file_outside_the_repository_is_refused(
    populated: Registry, tmp_path: Path, file: str
) -> None:
    reg = _built(populated)
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (reg.root / "models/scratch" / file).symlink_to(outside)
    found = [m for m in _messages(reg.repo_root) if file in m]
    where = f"models/scratch/{file}"
    refused = f"path '{where}' lies outside the repository"
    assert found == [f"{where}: {where}: {refused} [metrics-mismatch]"]
