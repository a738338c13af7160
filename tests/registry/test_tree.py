"""The files of a git revision (`GitTree`): listed without sizes, read in one process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from stemma.registry.errors import UnsafeFile
from stemma.registry.store import tree as tree_mod
from stemma.registry.store.tree import GitTree


def _repo(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "files"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def test_a_blob_past_the_limit_is_refused_and_the_others_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path, {"a/big.yaml": "x" * 40, "a/small.yaml": "ok\n", "b/c.yaml": "c\n"})
    monkeypatch.setattr(tree_mod, "MAX_TEXT_BYTES", 16)
    tree = GitTree(repo, "HEAD")
    tree.prefetch(["a/big.yaml", "a/small.yaml", "b/c.yaml"])  # the big one between
    with pytest.raises(UnsafeFile, match="is 40 bytes, more than the 16 allowed"):
        tree.read_text("a/big.yaml")
    assert tree.read_text("a/small.yaml") == "ok\n"
    assert tree.read_text("b/c.yaml") == "c\n"
    assert tree.read_text("a/none.yaml") is None


def test_listing_and_lookups(tmp_path: Path) -> None:
    repo = _repo(tmp_path, {"models/m/spec.yaml": "a\n", "models/n/x/y.json": "{}", "top": ""})
    tree = GitTree(repo, "HEAD")
    assert tree.files() == ["models/m/spec.yaml", "models/n/x/y.json", "top"]
    assert tree.exists("models/m/spec.yaml") and tree.exists("models//m/./spec.yaml")
    assert not tree.exists("models/m/manifest.json") and not tree.exists("models/m/")
    first = tree.subdirs("models")
    first.append("changed by the caller")
    assert tree.subdirs("models") == tree.subdirs("models/") == ["m", "n"]
    assert tree.subdirs(".") == ["models"] and tree.subdirs("models/n") == ["x"]
