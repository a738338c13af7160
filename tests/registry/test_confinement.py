"""No path stemma reads or writes resolves outside the registry: links that lead out are
refused in one line, without reading the target or showing its content."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import SPECS, write
from factories import model_manifest
from stemma.registry import Registry
from stemma.registry.errors import PathEscape

SECRET = "outside-secret-51d2"
SCRATCH = SPECS["models/scratch/spec.yaml"]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the repository: a model folder with a valid spec, a secret file."""
    folder = tmp_path / "outside"
    write(folder / "evil" / "spec.yaml", SCRATCH)
    write(folder / "secret.yaml", f"source: {SECRET}\n")
    write(folder / "base" / "spec.yaml", SPECS["models/base/spec.yaml"])
    write(folder / "digits-0to4" / "spec.yaml", SPECS["datasets/digits-0to4/spec.yaml"])
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _refused(cli: object, args: list[str], cwd: Path, what: str) -> str:
    res = cli(args, cwd)  # type: ignore[operator]
    assert res.code == 1, (args, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]  # a build's progress: blank
    assert len(lines) == 1 or args[0] == "validate", res.stderr
    assert SECRET not in res.stdout + res.stderr
    assert what in res.stderr and "outside" in res.stderr, res.stderr
    return res.stderr


def test_a_model_folder_linked_outside_is_refused(populated: Registry, outside: Path, cli) -> None:
    (populated.root / "models" / "evil").symlink_to(outside / "evil")
    before = _files(outside)
    _refused(cli, ["validate"], populated.root, "models/evil/spec.yaml")
    _refused(cli, ["show", "evil"], populated.root, "models/evil")
    _refused(cli, ["ls"], populated.root, "models/evil/spec.yaml")
    with pytest.raises(PathEscape, match="models/evil"):
        populated.model_dir("evil")
    assert _files(outside) == before


def test_a_build_writes_nothing_through_a_linked_model_folder(
    populated: Registry, outside: Path, cli
) -> None:
    (populated.root / "models" / "evil").symlink_to(outside / "evil")
    before = _files(outside)
    _refused(cli, ["build", "model", "evil"], populated.root, "models/evil")
    with pytest.raises(PathEscape):
        model_manifest(populated, "evil")
    assert _files(outside) == before


@pytest.mark.parametrize("kind", ["models", "datasets"])
def test_a_linked_models_or_datasets_folder_is_refused(
    populated: Registry, outside: Path, cli, kind: str
) -> None:
    folder = populated.root / kind
    os.rename(folder, populated.root / f"{kind}.real")
    folder.symlink_to(outside)
    for args in (["validate"], ["ls"], ["lineage", "show", "ft"]):
        _refused(cli, args, populated.root, kind)


@pytest.mark.parametrize("file", ["models/base/spec.yaml", "models/base/manifest.json"])
def test_a_spec_or_manifest_linked_outside_is_not_read(
    populated: Registry, outside: Path, cli, file: str
) -> None:
    model_manifest(populated, "base")
    path = populated.root / file
    path.unlink()
    path.symlink_to(outside / "secret.yaml")
    for args in (["show", "base"], ["validate"], ["ls"], ["query", "SELECT name FROM models"]):
        _refused(cli, args, populated.root, file)


def test_a_link_inside_the_registry_is_followed(populated: Registry, cli) -> None:
    spec = populated.root / "models" / "scratch" / "spec.yaml"
    write(populated.root / "shared" / "scratch.yaml", SCRATCH)
    spec.unlink()
    spec.symlink_to(populated.root / "shared" / "scratch.yaml")
    res = cli(["validate"], populated.root)
    assert res.code == 0, res.stderr


def test_a_root_outside_the_repository_names_the_setting(populated: Registry, cli) -> None:
    settings = populated.repo_root / "stemma.yaml"
    settings.write_text(settings.read_text().replace("root: .", "root: .."))
    res = cli(["ls"], populated.repo_root)
    assert res.code == 1
    assert res.stderr.splitlines() == [
        "error: stemma.yaml at /root: root '..' lies outside the repository;"
        " name a folder inside it"
    ]


def test_a_data_path_outside_is_a_violation(populated: Registry, cli) -> None:
    write(populated.root / "datasets" / "far" / "spec.yaml", "source: file:../../x.npz\n")
    res = cli(["validate"], populated.root)
    assert res.code == 1
    assert "datasets/far/spec.yaml at /source" in res.stderr
    assert "[path-escape]" in res.stderr
