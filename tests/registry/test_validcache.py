"""Documents known to pass their schema are not validated again; failing ones always are."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import yaml
from conftest import write
from factories import Fact
from stemma.registry import Registry
from stemma.registry.check.consistency import check
from stemma.registry.store import _checkcache, _validcache


def messages(root: Path) -> list[str]:
    return [str(v) for v in check(Registry.open(root))]


def test_check_gives_the_same_messages_with_and_without_the_cache(populated: Registry) -> None:
    root = populated.repo_root
    cache = Fact(root, _validcache.FACT)
    assert messages(root) == [] and cache.is_file()
    stored = cache.read_bytes()
    assert len(stored) == len(_validcache.MAGIC) + _validcache.KEY_BYTES * 5  # five specs
    assert messages(root) == [] and cache.read_bytes() == stored  # nothing new to record
    spec = populated.root / "models/ft/spec.yaml"
    good = spec.read_text()
    write(spec, good.replace("data:", "bogus: 1\ndata:", 1))
    first = messages(root)
    assert first and "unknown key 'bogus'" in first[0]
    assert cache.read_bytes() == stored  # a failing check writes nothing
    cache.unlink()
    assert messages(root) == first  # the same message without the cache
    assert not cache.exists()
    write(spec, good)
    assert messages(root) == []
    cache.write_bytes(b"damaged")
    assert messages(root) == [] and cache.read_bytes().startswith(_validcache.MAGIC)


def test_a_recorded_document_skips_its_schema(populated: Registry) -> None:
    root = populated.repo_root
    spec = populated.root / "models/ft/spec.yaml"
    write(spec, spec.read_text().replace("data:", "bogus: 1\ndata:", 1))
    parsed = yaml.safe_load(spec.read_text())
    with _validcache.remembering(root):
        key = _validcache.known("model-spec", parsed)
        _validcache.record(key)
    assert messages(root) == []  # trusted: the cache is consulted before the schema
    (Fact(root, _validcache.FACT)).unlink()
    assert messages(root) != []


def test_a_check_from_kept_folder_facts_keeps_what_was_recorded(
    populated: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_checkcache, "RACY_NS", 0)  # the test's files count as old enough
    root = populated.repo_root
    cache = Fact(root, _validcache.FACT)
    assert messages(root) == []
    stored = cache.read_bytes()
    # The model folders now come from the kept facts, unvalidated: their specs stay recorded
    # for the readers that still validate them (the pipeline's render).
    assert messages(root) == [] and cache.read_bytes() == stored
    monkeypatch.setattr(_validcache, "MAX_KEYS", 1)  # past the cap: this run's documents only
    assert messages(root) == []
    assert len(cache.read_bytes()) < len(stored)


def test_the_cache_belongs_to_its_block_its_repository_and_its_thread(
    populated: Registry, tmp_path: Path
) -> None:
    root = populated.repo_root
    assert messages(root) == []  # records every spec
    other = tmp_path / "other"
    shutil.copytree(root, other, symlinks=True, ignore=shutil.ignore_patterns(".stemma"))
    doc = yaml.safe_load((populated.root / "models/ft/spec.yaml").read_text())
    seen: list[object] = []
    with _validcache.remembering(root):
        assert _validcache.known("model-spec", doc) is True  # recorded by that check
        worker = threading.Thread(target=lambda: seen.append(_validcache.known("model-spec", doc)))
        worker.start()
        worker.join()
        with _validcache.remembering(other):  # another repository: its own, empty cache
            key = _validcache.known("model-spec", doc)
            assert isinstance(key, bytes)
            _validcache.record(key)
        assert _validcache.known("model-spec", doc) is True  # the outer block's again
    assert seen == [None]  # another thread is outside the block
    assert _validcache.known("model-spec", doc) is None
    assert Fact(other, _validcache.FACT).read_bytes() == _validcache.MAGIC + key
