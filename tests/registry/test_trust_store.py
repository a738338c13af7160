"""The derived store under `.stemma/` is a cache: whatever is damaged there is a miss.

A link, a pipe, a device, a folder, garbage, a huge file or another DuckDB database in the
place of the store (`index.duckdb`: the query index and every derived fact), its write-ahead
log or its lock (or of `.stemma` itself), and damaged facts in a sound store, must leave
every read command answering as it does with a clean store: never hanging,
never reading without bound, never following a link out of the repository. A manifest
swapped for another of the same size with the old mtime is seen, and a store that cannot
be written (a full disk) still gets the read its answer. Commands run in subprocesses with
a timeout: a hang fails the test within seconds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SPECS, write
from factories import dataset_manifest, model_manifest
from stemma.registry import Registry
from stemma.registry.query.sql import query
from stemma.registry.store import _checkcache, _ingest, _snapshot
from stemma.registry.store import derived as _store

# Runs stemma commands in one process (a process start per command would cost seconds),
# after damaging the store as told: prints, per case and command, [exit code, stdout].
DRIVER = r"""
import json, os, random, resource, shutil, signal, sys
from pathlib import Path

repo, template, outside = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
plan = json.loads(sys.argv[4])
memory = 3 << 30  # reading /dev/zero whole must fail here, not take the machine's memory
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past RLIMIT_FSIZE a write fails (EFBIG)
_soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
import duckdb
from typer.testing import CliRunner
from stemma.cli.app import app
from stemma.registry.store import derived

os.chdir(repo)
store = repo / ".stemma"


def remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


# Put the store back as the template has it, then `kind` in the place of `name` (of
# `.stemma` itself when empty); "clean" with no name leaves the store as it is, "none"
# removes it.
def damage(name, kind, seed):
    if name.startswith("fact:"):  # the store as the template has it, one fact damaged
        remove(store)
        shutil.copytree(template, store, symlinks=True)
        fact = name.split(":", 1)[1]
        kept = derived.load(repo, fact)
        assert kept, fact
        body = {
            "garbage": random.Random(seed).randbytes(random.Random(seed).randrange(1, 9000)),
            "truncated": kept[: len(kept) // 2],
            "foreign": b'{"header": "another", "format": 3, "models": {"x": 1}}',
        }[kind]
        assert derived.save(repo, fact, body)
        return
    target = store / name if name else store
    if name:
        remove(store)
        shutil.copytree(template, store, symlinks=True)
        remove(target)
    elif kind != "clean":
        remove(store)
    if kind == "fifo":
        os.mkfifo(target)
    elif kind in ("devzero", "devfull"):
        os.symlink("/dev/zero" if kind == "devzero" else "/dev/full", target)
    elif kind == "dangling":
        os.symlink(outside / f"made-{seed}", target)
    elif kind == "outside":
        os.symlink(outside / ("folder" if not name else "file"), target)
    elif kind == "folder":
        os.mkdir(target)
    elif kind == "garbage":
        target.write_bytes(random.Random(seed).randbytes(random.Random(seed).randrange(1, 9000)))
    elif kind == "huge":
        with open(target, "wb") as fh:
            fh.truncate(300 << 20)  # sparse: costs no disk
    elif kind == "database":  # a sound DuckDB database of something else
        con = duckdb.connect(str(target))
        con.execute("CREATE SCHEMA raw; CREATE TABLE raw.meta(key INT); CREATE TABLE t(x INT)")
        con.close()
    elif kind not in ("clean", "none"):
        raise ValueError(kind)


runner = CliRunner()
out = []
for seed, (name, kind, commands) in enumerate(plan["cases"]):
    damage(name, kind, seed)
    got = []
    if plan.get("fsize") is not None:  # a full disk for the commands, not for the damage
        resource.setrlimit(resource.RLIMIT_FSIZE, (plan["fsize"], hard))
    for args in commands:
        res = runner.invoke(app, args)
        got.append([res.exit_code, res.stdout])
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    out.append(got)
print(json.dumps(out))
"""

# What each store file is read by.
INDEX_COMMANDS = [
    ["ls"],
    ["query", "SELECT name, status, accuracy FROM models ORDER BY name"],
    ["lineage", "ancestors", "ft"],
    ["repro", "--dry"],
    ["pipeline", "--check"],
]
CHECK_COMMANDS = [["validate"], ["pipeline", "--check"]]
ALL_COMMANDS = [*INDEX_COMMANDS, ["validate"], ["show", "base"]]
FILES = {
    "index.duckdb": [*INDEX_COMMANDS[:4], *CHECK_COMMANDS],
    "index.duckdb.wal": INDEX_COMMANDS[:1],
    "index.lock": [INDEX_COMMANDS[0], *CHECK_COMMANDS],
    "fact:snapshot": INDEX_COMMANDS[:2],
    "fact:checked": [*CHECK_COMMANDS[:1], INDEX_COMMANDS[0]],
    "fact:verdict": CHECK_COMMANDS[:1],
    "fact:valid": CHECK_COMMANDS,
    "fact:pipeline": CHECK_COMMANDS[1:],
}
KINDS = ["fifo", "devzero", "devfull", "dangling", "outside", "folder", "garbage", "huge"]
FACT_KINDS = ["garbage", "truncated", "foreign"]
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def built(registry_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with built datasets and models, its pipeline rendered, a clean store
    kept as `store-template`, and an `outside` folder beside it that nothing may touch."""
    top = tmp_path_factory.mktemp("built")
    shutil.copytree(registry_template, top / "repo", symlinks=True)
    for rel, text in SPECS.items():
        write(top / "repo" / rel, text)
    reg = Registry.open(top / "repo")
    dataset_manifest(reg, "digits-0to4")
    dataset_manifest(reg, "digits-5to9")
    model_manifest(reg, "base", accuracy=0.8)
    model_manifest(reg, "ft", accuracy=0.7)
    (top / "outside" / "folder").mkdir(parents=True)
    (top / "outside" / "file").write_bytes(b"not a cache of this registry\n")
    root = reg.repo_root
    result = drive(root, [("", "clean", [["pipeline"]])])
    # files changed within RACY_NS (the pipeline files just written among them) are read
    # again, not kept (`_checkcache`): let them age, or a fast run keeps no folder facts
    time.sleep(_snapshot.RACY_NS / 1e9)
    result += drive(root, [("", "clean", [*ALL_COMMANDS, ["validate"]])])
    assert all(code == 0 for got in result for code, _out in got), result
    shutil.copytree(root / ".stemma", top / "store-template", symlinks=True)
    return top


@pytest.fixture
def repo(built: Path, tmp_path: Path) -> Path:
    """A copy of `built` of the test's own (the store, the outside folder and the template
    with it)."""
    for name in ("repo", "outside", "store-template"):
        shutil.copytree(built / name, tmp_path / name, symlinks=True)
    return tmp_path / "repo"


def drive(root: Path, cases: list[Any], fsize: int | None = None) -> list[list[list[Any]]]:
    """Run the driver on `cases` [(store file, damage, commands)] in a subprocess."""
    template, outside = root.parent / "store-template", root.parent / "outside"
    plan = json.dumps({"cases": cases, "fsize": fsize})
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(root), str(template), str(outside), plan],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found: list[list[list[Any]]] = json.loads(proc.stdout.splitlines()[-1])
    return found


def outside_state(root: Path) -> list[tuple[str, bytes]]:
    """Everything in the folder beside the repository that the commands must not touch."""
    outside = root.parent / "outside"
    return sorted(
        (str(p.relative_to(outside)), p.read_bytes() if p.is_file() else b"/")
        for p in outside.rglob("*")
    )


@pytest.mark.parametrize(
    "names",
    [
        ["index.duckdb", "index.duckdb.wal", "index.lock"],
        ["fact:snapshot", "fact:checked", "fact:verdict", "fact:valid", "fact:pipeline"],
    ],
)
def test_a_damaged_store_file_is_a_miss(repo: Path, names: list[str]) -> None:
    """Each damage in the place of each store file (or of each fact in a sound store), then
    the commands that read it."""
    before = outside_state(repo)
    clean = drive(repo, [("index.lock", "clean", ALL_COMMANDS)])[0]
    assert all(code == 0 for code, _out in clean), clean
    expect = {tuple(args): result for args, result in zip(ALL_COMMANDS, clean, strict=True)}
    cases = [
        (name, kind, FILES[name])
        for name in names
        for kind in (FACT_KINDS if name.startswith("fact:") else [*KINDS, "database"])
    ]
    results = drive(repo, cases)
    for (name, kind, commands), got in zip(cases, results, strict=True):
        for args, result in zip(commands, got, strict=True):
            assert result == expect[tuple(args)], f".stemma/{name} as {kind}: {args}"
    assert outside_state(repo) == before  # nothing made, written or read out there


def test_a_damaged_store_folder_is_a_miss(repo: Path) -> None:
    before = outside_state(repo)
    kinds = ["fifo", "devzero", "dangling", "outside", "garbage"]
    results = drive(repo, [("", "clean", ALL_COMMANDS)] + [("", k, ALL_COMMANDS) for k in kinds])
    for kind, got in zip(kinds, results[1:], strict=True):
        assert got == results[0], f".stemma as {kind}"
    assert outside_state(repo) == before


def test_a_dangling_lock_link_makes_nothing_outside(repo: Path) -> None:
    store = repo / ".stemma"
    target = repo.parent / "outside" / "made-by-lock"
    (store / "index.lock").unlink()
    (store / "index.lock").symlink_to(target)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "stemma"), "ls"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    assert "model    base" in proc.stdout
    assert not os.path.lexists(target)
    assert _store.kind(store / "index.lock") == "file"


def test_a_full_disk_still_answers_reads(repo: Path) -> None:
    """A fresh store and one whose index needs a change written: the read answers from a
    private index (in memory, where nothing can be written) and leaves no error."""
    clean = drive(repo, [("", "clean", INDEX_COMMANDS[:2])])[0]
    manifest = repo / "models/ft/manifest.json"
    doc = json.loads(manifest.read_text())
    doc["metrics"]["accuracy"] = 0.75
    manifest.write_text(json.dumps(doc, indent=2))
    changed = drive(repo, [("index.lock", "clean", INDEX_COMMANDS[:2])])[0]
    assert changed != clean and all(code == 0 for code, _out in changed)
    cases = [
        ("index.lock", "clean", INDEX_COMMANDS[:2]),  # the store as it was: index out of date
        ("", "none", [*INDEX_COMMANDS[:2], ["validate"]]),  # no store at all
    ]
    for fsize in (0, 4096, 1 << 20):  # no byte, a header, a few pages
        full = drive(repo, cases, fsize=fsize)
        assert full[0] == changed, fsize
        assert full[1][:2] == changed and full[1][2][0] == 1  # the edited manifest's id is off


# -- stamps ------------------------------------------------------------------------------


def swap_same_size(path: Path, how: str, old: str, accuracy: str) -> None:
    """Replace `path` by a copy of the same size with another accuracy and its old mtime,
    as `cp -p` (in place), `rsync -a` (renamed into place) or `tar -x` (made anew) do."""
    st = path.stat()
    text = path.read_text()
    new = text.replace(f'"accuracy": {old}', f'"accuracy": {accuracy}')
    assert new != text and len(new) == len(text)
    other = path.parent / ".incoming"
    other.write_text(new)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    if how == "cp -p":
        shutil.copy2(other, path)
        other.unlink()
    elif how == "rsync -a":
        os.replace(other, path)
    else:
        path.unlink()
        shutil.copy2(other, path)
        other.unlink()
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("how", ["cp -p", "rsync -a", "tar -x"])
def test_a_same_size_copy_with_the_old_mtime_is_seen(
    populated: Registry, monkeypatch: pytest.MonkeyPatch, cli: Any, how: str
) -> None:
    monkeypatch.setattr(_snapshot, "RACY_NS", 0)  # the files count as old: no re-read
    reg = populated
    dataset_manifest(reg, "digits-0to4")
    path = reg.root / "models/base/spec.yaml"
    model_manifest(reg, "base", accuracy=0.8)
    sql = "SELECT accuracy FROM models WHERE name = 'base'"
    assert query(reg, sql).rows == ((0.8,),)
    manifest = reg.root / "models/base/manifest.json"
    swap_same_size(manifest, how, "0.8", "0.3")
    assert query(reg, sql).rows == ((0.3,),)
    res = cli(["ls"], reg.repo_root)
    assert res.code == 0 and "0.3000" in res.stdout, res.stdout
    swap_same_size(manifest, how, "0.3", "0.8")  # and back: the store follows every swap
    res = cli(["show", "base", "--json"], reg.repo_root)
    assert res.code == 0 and json.loads(res.stdout)["manifest"]["metrics"]["accuracy"] == 0.8
    assert query(reg, sql).rows == ((0.8,),) and path.exists()


def test_the_folder_facts_use_the_snapshot_stamp(populated: Registry) -> None:
    """One stamp rule: `_checkcache` stamps each file with `_snapshot.stamp`."""
    root = populated.root
    spec = root / "models/base/spec.yaml"
    st = spec.stat()
    old = st.st_mtime_ns - 3600 * 10**9
    for path in root.glob("models/base/*"):
        os.utime(path, ns=(old, old))
    stamps = _checkcache.work_stamps(root)
    numbers = _snapshot.stamp(os.lstat(spec))
    want = ".".join(map(str, numbers))
    # The ctime is now, so the folder is racy by the shared rule: left out; trusted once the
    # window is zero, with the snapshot's numbers.
    assert "base" not in stamps
    assert _snapshot.racy(_snapshot.changed_ns(numbers), _snapshot.now_ns())
    window = _checkcache.RACY_NS
    try:
        _checkcache.RACY_NS = 0
        assert want in _checkcache.work_stamps(root)["base"].split()
    finally:
        _checkcache.RACY_NS = window


def test_a_snapshot_that_only_matches_its_digests_is_refused() -> None:
    """A stored snapshot made to match its own digests, with numbers for other folders."""
    snap = _snapshot.Snapshot({"models": ["a", "b"]}, _snapshot.array("q", [1] * 8))
    stored = _ingest.StoredSnapshot.parse(_ingest.pack_snapshot(snap.pack()))
    assert stored is not None and stored.snapshot(None) is None
    for seed in range(20):  # and garbage of every length reads as nothing
        data = random.Random(seed).randbytes(seed * 37)
        found = _ingest.StoredSnapshot.parse(_ingest.SNAPSHOT_MAGIC + b" " + data)
        assert found is None or found.snapshot(None) is None


def test_store_reads_refuse_what_is_not_a_regular_file(tmp_path: Path) -> None:
    store = tmp_path / ".stemma"
    store.mkdir()
    write(store / "plain", "text")
    assert _store.read(store / "plain") == b"text"
    assert _store.read(store / "plain", limit=2) is None
    os.mkfifo(store / "fifo")
    (store / "link").symlink_to(store / "plain")
    for name in ("fifo", "link", "missing"):
        assert _store.read(store / name) is None
    assert _store.write(store / "link", b"new") and _store.kind(store / "link") == "file"
    assert (store / "plain").read_bytes() == b"text"  # the link was replaced, not followed
    linked = tmp_path / "linked"
    linked.symlink_to(store)
    assert _store.read(linked / "plain") is None  # the folder itself is a link
    assert not _store.write(linked / "x", b"x") and not (store / "x").exists()
