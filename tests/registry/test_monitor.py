"""A kept-open handle's repeated queries: SQL alone while nothing changed (no stat walk),
and every change seen at once (in-place edits with the old stamp put back, copies with the
same size and mtime, writes through a hard link elsewhere, folders added, removed or
swapped, links among the watched names)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from stemma.registry import Registry
from stemma.registry.query import _watched
from stemma.registry.query.sql import query
from stemma.registry.store._monitor import Monitor

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import synth

ROWS = "SELECT name, relation, id FROM models ORDER BY name"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-model synthetic registry (a git repository), shared by the module's tests."""
    root = tmp_path_factory.mktemp("mon") / "reg"
    synth.generate(root, 30, shape="mixed", seed=5, family_size=10)
    git(root, "init", "-q")
    return root


@pytest.fixture
def reg(synthetic: Path, tmp_path: Path) -> Registry:
    """A private copy of the synthetic registry, already watched (queried twice)."""
    shutil.copytree(synthetic, tmp_path / "reg", symlinks=True)
    handle = Registry.open(tmp_path / "reg")
    query(handle, "SELECT 1")
    query(handle, "SELECT 1")
    return handle


def _fresh(reg: Registry, sql: str = ROWS) -> Any:
    """The answer of a new handle (the full check, no monitor)."""
    return query(Registry.open(reg.repo_root), sql).rows


def _relation(reg: Registry, name: str) -> Any:
    return query(reg, f"SELECT relation FROM models WHERE name = '{name}'").rows[0][0]


def _swapped(text: str) -> tuple[str, str]:
    """`text` with the spec's relation changed, at the same length; the new relation."""
    match = re.search(r"relation: (\w+)", text)
    assert match is not None
    new = "adapter" if match.group(1) != "adapter" else "distill"
    out = (
        text[: match.start()] + f"relation: {new}".ljust(len(match.group(0))) + text[match.end() :]
    )
    assert len(out) == len(text) and out != text
    return out, new


def _spec(reg: Registry, i: int) -> Path:
    return reg.root / "models" / synth.model_name(i) / "spec.yaml"


def test_repeated_queries_stat_no_file(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Monitor.start(reg.root) is not None
    calls: list[Any] = []
    real = os.stat

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "stat", counted)
    assert len(query(reg, "SELECT name FROM models")) == 30
    assert len(query(reg, "SELECT name FROM models WHERE name = 'm000003'")) == 1
    # The root, its two kinds, the index and its log, once per query: no spec or manifest.
    assert len(calls) <= 10, calls
    assert not [c for c in calls if str(c[0]).endswith((".yaml", ".json"))], calls


def test_in_place_edit_with_the_old_stamp_is_seen(reg: Registry) -> None:
    spec = _spec(reg, 7)
    edited, new = _swapped(spec.read_text())
    st = spec.stat()
    with open(spec, "r+") as fh:
        fh.write(edited)
    os.utime(spec, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _relation(reg, synth.model_name(7)) == new


def test_a_dvc_lock_written_and_rewritten_in_place_is_seen(reg: Registry) -> None:
    """The lock case of the status: a dvc.lock appearing, then edited in place with its old
    stamp put back, changes what a kept-open handle answers."""
    name = synth.model_name(6)
    md5 = json.loads((reg.root / "models" / name / "manifest.json").read_text())["weights"]["md5"]
    lock = reg.root / "models" / name / "dvc.lock"
    text = (
        f"schema: '2.0'\nstages:\n  model-{name}:\n    cmd: stemma build {name}\n    outs:\n"
        f"    - path: models/{name}/weights.safetensors\n      md5: {md5}\n      size: 1\n"
    )
    sql = f"SELECT status FROM models WHERE name = '{name}'"
    assert list(query(reg, sql).rows) == [("built",)]
    lock.write_text(text.replace(md5, "f" * 32))
    assert list(query(reg, sql).rows) == [("stale",)]
    st = lock.stat()
    with open(lock, "r+") as fh:
        fh.write(text)  # the same length
    os.utime(lock, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert list(query(reg, sql).rows) == [("built",)] == list(_fresh(reg, sql))


def test_same_size_same_mtime_copy_is_seen(reg: Registry, tmp_path: Path) -> None:
    spec = _spec(reg, 8)
    edited, new = _swapped(spec.read_text())
    staged = tmp_path / "spec.yaml"
    staged.write_text(edited)
    st = spec.stat()
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.copy2(staged, spec)
    assert _relation(reg, synth.model_name(8)) == new


def test_a_write_through_a_hard_link_elsewhere_is_seen(reg: Registry, tmp_path: Path) -> None:
    spec = _spec(reg, 9)
    elsewhere = tmp_path / "linked.yaml"
    os.link(spec, elsewhere)
    assert _relation(reg, synth.model_name(9)) is not None  # the link is a doubt: re-checked
    edited, new = _swapped(spec.read_text())
    st = spec.stat()
    with open(elsewhere, "r+") as fh:  # neither the model's folder nor models/ sees this name
        fh.write(edited)
    os.utime(elsewhere, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _relation(reg, synth.model_name(9)) == new


def test_folders_added_removed_and_a_switch_are_seen(reg: Registry) -> None:
    from stemma.registry.rules.commits import COMMITTING

    models = reg.root / "models"
    shutil.copytree(models / synth.model_name(3), models / "zz-new")
    assert query(reg, ROWS).rows == _fresh(reg)
    shutil.rmtree(models / synth.model_name(4))
    assert query(reg, ROWS).rows == _fresh(reg)
    folder = models / synth.model_name(5)
    manifest = json.loads((folder / "manifest.json").read_text())
    new = dict(manifest, id="sha256:" + "cd" * 32)
    (folder / COMMITTING).mkdir()
    (folder / COMMITTING / "manifest.json").write_text(json.dumps(new))
    rows = query(reg, f"SELECT id FROM models WHERE name = '{synth.model_name(5)}'")
    assert rows.rows == ((new["id"],),)


def test_the_models_folder_swapped_is_seen(reg: Registry, tmp_path: Path) -> None:
    models = reg.root / "models"
    other = tmp_path / "other-models"
    shutil.copytree(models, other)
    shutil.rmtree(other / synth.model_name(6))
    os.rename(models, tmp_path / "old-models")
    os.rename(other, models)
    assert query(reg, ROWS).rows == _fresh(reg)
    assert len(query(reg, ROWS)) == 29


def test_a_linked_spec_keeps_the_full_check(reg: Registry, tmp_path: Path) -> None:
    spec = _spec(reg, 2)
    target = reg.root / "models" / synth.model_name(2) / "spec.real"
    os.rename(spec, target)
    os.symlink("spec.real", spec)
    assert Monitor.start(reg.root) is None  # a link among the watched names: no monitor
    query(reg, "SELECT 1")
    edited, new = _swapped(target.read_text())
    st = target.stat()
    target.write_text(edited)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _relation(reg, synth.model_name(2)) == new


def test_bad_input_after_watching_is_refused_and_the_copy_kept(reg: Registry) -> None:
    from stemma.registry.errors import StemmaError

    spec = _spec(reg, 1)
    before = spec.read_text()
    spec.write_text("relation: [unclosed\n")
    with pytest.raises(StemmaError) as err:
        query(reg, "SELECT 1")
    assert "spec.yaml" in str(err.value)
    spec.write_text(before)
    assert query(reg, ROWS).rows == _fresh(reg)


def test_seeded_random_changes_match_a_fresh_handle(reg: Registry, tmp_path: Path) -> None:
    rng = random.Random(31)
    models = reg.root / "models"
    for step in range(8):
        names = sorted(p.name for p in models.iterdir())
        name = rng.choice(names)
        spec = models / name / "spec.yaml"
        action = rng.choice(("edit", "touch", "copy", "remove", "restore"))
        if action == "edit" and spec.exists() and "relation:" in spec.read_text():
            edited, _new = _swapped(spec.read_text())
            st = spec.stat()
            spec.write_text(edited)
            os.utime(spec, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif action == "touch" and spec.exists():
            os.utime(spec)
        elif action == "copy":
            shutil.copytree(models / name, models / f"copy-{step}")
        elif action == "remove" and (models / name / "manifest.json").exists():
            os.unlink(models / name / "manifest.json")
        assert query(reg, ROWS).rows == _fresh(reg), (step, action, name)


def test_a_released_handle_still_answers(reg: Registry) -> None:
    _watched.release(reg)
    assert query(reg, ROWS).rows == _fresh(reg)


def test_threads_of_one_handle_share_its_copy_safely(reg: Registry) -> None:
    from concurrent.futures import ThreadPoolExecutor

    expected = _fresh(reg)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _i: query(reg, ROWS).rows, range(16)))
    assert all(a == expected for a in answers)
    assert query(reg, ROWS).rows == expected  # the copy is still there, and still right


def test_no_monitor_on_a_network_or_fuse_file_system(tmp_path: Path) -> None:
    from stemma.registry.store import _monitor

    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /mnt/share rw - nfs4 server:/export rw\n"
        "41 22 0:51 / /mnt/fuse\\040dir rw - fuse.sshfs host: rw\n"
    )
    assert _monitor._local(Path("/srv/reg"), str(info))
    assert not _monitor._local(Path("/mnt/share/reg"), str(info))
    assert not _monitor._local(Path("/mnt/fuse dir/reg"), str(info))
    assert not _monitor._local(Path("/srv/reg"), str(tmp_path / "missing"))


def test_a_query_on_the_copy_stops_at_its_time_limit_and_the_copy_stays(reg: Registry) -> None:
    from stemma.registry.errors import QueryError

    endless = (
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"
    )
    for _ in range(2):  # the watchdog thread serves one query after another
        with pytest.raises(QueryError, match=r"stopped after 0.3 s"):
            query(reg, endless, timeout=0.3)
    assert query(reg, ROWS, timeout=0.3).rows == _fresh(reg)
