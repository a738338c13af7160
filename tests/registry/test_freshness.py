"""The cost of knowing the index is fresh, and that it stays right: one walk of the folders
per refresh (the interrupted-switch check rides along), every in-place edit and every
same-size, same-mtime copy still seen; pipeline files written with one flush per batch."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from stemma.registry import Registry
from stemma.registry.pipeline import pipefiles
from stemma.registry.query.sql import query

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import synth


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-model synthetic registry (a git repository), shared by the module's tests."""
    root = tmp_path_factory.mktemp("fresh") / "reg"
    synth.generate(root, 30, shape="mixed", seed=3, family_size=10)
    git(root, "init", "-q")
    return root


@pytest.fixture
def reg(synthetic: Path, tmp_path: Path) -> Registry:
    """A private copy of the synthetic registry."""
    shutil.copytree(synthetic, tmp_path / "reg", symlinks=True)
    return Registry.open(tmp_path / "reg")


def _counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    """Count the calls of `module.name` (still made) and return the list of their args."""
    calls: list[Any] = []
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_refresh_lists_each_folder_once(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    query(reg, "SELECT 1")
    listings = _counting(monkeypatch, os, "scandir")
    # A new handle: a handle's second query also lists the folders to place its watches.
    assert len(query(Registry.open(reg.repo_root), "SELECT name FROM models")) == 30
    # models/ and datasets/ once each: the interrupted-switch check is part of the same walk
    listed = sorted(Path(str(a[0])).name for a in listings if a and "/.stemma" not in str(a[0]))
    assert listed == ["datasets", "models"], listings


def test_an_interrupted_switch_is_finished_before_indexing(reg: Registry) -> None:
    from stemma.registry.rules.commits import COMMITTING

    folder = reg.root / "models" / synth.model_name(4)
    manifest = json.loads((folder / "manifest.json").read_text())
    new = dict(manifest, id="sha256:" + "ab" * 32)
    query(reg, "SELECT 1")
    (folder / COMMITTING).mkdir()
    (folder / COMMITTING / "manifest.json").write_text(json.dumps(new))
    rows = query(reg, f"SELECT id FROM models WHERE name = '{synth.model_name(4)}'")
    assert rows.rows == ((new["id"],),)
    assert not (folder / COMMITTING).exists()


def _relation(reg: Registry, name: str) -> Any:
    return query(reg, f"SELECT relation FROM models WHERE name = '{name}'").rows[0][0]


def _swapped(text: str) -> tuple[str, str]:
    """`text` with the spec's relation changed, at the same length; the new relation."""
    match = re.search(r"relation: (\w+)", text)
    assert match is not None
    new = "adapter" if match.group(1) != "adapter" else "distill"
    width = len(match.group(0))  # padding before the flow mapping's "}" keeps the size
    out = text[: match.start()] + f"relation: {new}".ljust(width) + text[match.end() :]
    assert len(out) == len(text) and out != text
    return out, new


def test_an_in_place_edit_is_seen_at_once(reg: Registry) -> None:
    name = synth.model_name(7)
    spec = reg.root / "models" / name / "spec.yaml"
    assert _relation(reg, name) is not None
    edited, new = _swapped(spec.read_text())
    st = spec.stat()
    with open(spec, "r+") as fh:  # the same inode; no folder's mtime moves
        fh.write(edited)
    os.utime(spec, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime put back
    assert spec.stat().st_ino == st.st_ino
    assert _relation(reg, name) == new


def test_a_same_size_same_mtime_copy_is_seen(reg: Registry, tmp_path: Path) -> None:
    name = synth.model_name(8)
    spec = reg.root / "models" / name / "spec.yaml"
    assert _relation(reg, name) is not None
    edited, new = _swapped(spec.read_text())
    staged = tmp_path / "spec.yaml"
    staged.write_text(edited)
    st = spec.stat()
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.copy2(staged, spec)  # `cp -p`: same size, same mtime, the same inode
    assert (spec.stat().st_mtime_ns, spec.stat().st_size) == (st.st_mtime_ns, st.st_size)
    assert _relation(reg, name) == new


def test_pipeline_files_are_flushed_once_per_batch(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs = _counting(monkeypatch, os, "fsync")
    syncs = _counting(monkeypatch, os, "sync")
    changes = pipefiles.write(reg)
    assert len(changes.written) > 30
    assert len(fsyncs) + len(syncs) <= 2, (len(fsyncs), len(syncs))
    assert pipefiles.differences(reg) == []
    assert not list(reg.root.glob("models/*/.dvc.yaml.*.tmp"))


def test_a_cold_index_checks_links_per_folder_not_per_file(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.rmtree(reg.repo_root / ".stemma", ignore_errors=True)
    lstats = _counting(monkeypatch, os, "lstat")
    assert len(query(reg, "SELECT name FROM models")) == 30
    files = sum(1 for _ in reg.root.glob("*/*/*.yaml")) + sum(
        1 for _ in reg.root.glob("*/*/manifest.json")
    )
    # Folders and files are opened without following links: no lstat of each file's path.
    assert len(lstats) < files // 2, len(lstats)


@pytest.mark.parametrize("case", ["outside", "inside", "fifo", "huge", "utf16"])
def test_a_cold_index_refuses_or_reads_the_unusual_file(
    reg: Registry, tmp_path: Path, case: str
) -> None:
    from stemma.registry.errors import StemmaError
    from stemma.registry.store.files import MAX_TEXT_BYTES

    shutil.rmtree(reg.repo_root / ".stemma", ignore_errors=True)
    name = synth.model_name(5)
    manifest = reg.root / "models" / name / "manifest.json"
    if case == "outside":
        (tmp_path / "out.json").write_bytes(manifest.read_bytes())
        manifest.unlink()
        manifest.symlink_to(tmp_path / "out.json")
    elif case == "inside":  # a link that stays inside the registry is read
        (reg.root / "kept.json").write_bytes(manifest.read_bytes())
        manifest.unlink()
        manifest.symlink_to(reg.root / "kept.json")
        rows = query(reg, f"SELECT id FROM models WHERE name = '{name}'").rows
        assert rows[0][0] is not None
        return
    elif case == "fifo":
        manifest.unlink()
        os.mkfifo(manifest)
    elif case == "huge":
        with open(manifest, "ab") as fh:
            fh.truncate(MAX_TEXT_BYTES + 1)
    else:
        manifest.write_bytes(manifest.read_text().encode("utf-16"))
    with pytest.raises(StemmaError) as err:
        query(reg, "SELECT 1")
    assert f"models/{name}/manifest.json" in str(err.value)
