"""The derived store is one DuckDB file (and its lock): the query index and every fact.

Every cache a read or a check keeps (the snapshot the index matches, the schema-valid
digests, the folder facts, the last render of the pipeline) is a fact in `.stemma/index.duckdb`;
nothing else is written under `.stemma/` by those commands. A rebuild of the index keeps the
facts, and removes the files earlier versions kept beside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from factories import Fact, dataset_manifest, model_manifest
from stemma.registry import Registry
from stemma.registry.query.sql import query
from stemma.registry.store import _checkcache, _sql, index
from stemma.registry.store import derived as _store


@pytest.fixture
def checked(populated: Registry, monkeypatch: pytest.MonkeyPatch, cli: Any) -> Registry:
    """`populated` with manifests, its pipeline written, listed and checked (the test's files
    count as old enough to keep facts of)."""
    monkeypatch.setattr(_checkcache, "RACY_NS", 0)
    reg = populated
    dataset_manifest(reg, "digits-0to4")
    model_manifest(reg, "base", accuracy=0.8)
    for args in (["pipeline"], ["ls"], ["validate"], ["pipeline", "--check"]):
        res = cli(args, reg.repo_root)
        assert res.code == 0, (args, res.stdout)
    return reg


def test_the_store_is_one_file_and_its_lock(checked: Registry) -> None:
    root = checked.repo_root
    assert sorted(os.listdir(root / ".stemma")) == ["index.duckdb", "index.lock"]
    names = set(Fact(root, "").names())
    assert {"snapshot", "valid", "checked", "pipeline"} <= names


def test_a_rebuilt_index_keeps_the_facts_and_drops_old_files(
    checked: Registry, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> None:
    root = checked.repo_root
    kept = {name: Fact(root, name).read_bytes() for name in ("valid", "checked", "pipeline")}
    for name in _store.LEGACY_FILES:  # what an earlier version left beside the index
        (root / ".stemma" / name).write_text("old")
    monkeypatch.setattr(_sql, "FORMAT", _sql.FORMAT + "-next")  # the index is rebuilt
    with index.open_index(checked) as opened:
        assert opened.stats.rebuilt and not opened.stats.private
    assert {name: Fact(root, name).read_bytes() for name in kept} == kept
    assert sorted(os.listdir(root / ".stemma")) == ["index.duckdb", "index.lock"]
    assert query(checked, "SELECT count(*) FROM models").rows == ((3,),)


def test_facts_are_read_through_the_index_a_process_holds_open(checked: Registry) -> None:
    """While this process holds the store open, a fact is read through that connection and
    none is written (a second attach would drop the process's lock on the file)."""
    root = checked.repo_root
    valid = Fact(root, "valid").read_bytes()
    with index.open_index(checked) as opened:
        assert not opened.stats.private
        assert _store.load(root, "valid") == valid
        assert not _store.save(root, "valid", b"other")
    assert _store.load(root, "valid") == valid
    assert _store.save(root, "valid", b"other") and _store.load(root, "valid") == b"other"


def test_a_store_held_by_another_writer_is_a_miss(checked: Registry) -> None:
    """A store another process holds for writing: a fact reads as missing, a write is
    skipped, and neither waits longer than the lock's bound."""
    import fcntl

    root = checked.repo_root
    lock = root / ".stemma" / _store.LOCK_FILE
    with open(lock, "rb+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert _store.load(root, "valid") is None
        assert not _store.save(root, "valid", b"x")
    assert _store.load(root, "valid") not in (None, b"x")


def test_a_fact_is_bounded(tmp_path: Path) -> None:
    assert _store.save(tmp_path, "big", b"x" * 1000)
    assert _store.load(tmp_path, "big") == b"x" * 1000
    assert _store.load(tmp_path, "big", limit=999) is None
    assert _store.load(tmp_path, "missing") is None
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".stemma").symlink_to(tmp_path / ".stemma")  # the folder is a link: unused
    assert _store.load(linked, "big") is None and not _store.save(linked, "big", b"y")
    assert _store.load(tmp_path, "big") == b"x" * 1000
