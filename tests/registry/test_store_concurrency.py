"""The one-file derived store under attack: processes at once, threads, odd files, ranks.

Several `stemma` processes run at once on one registry (a check writing facts while others
list, query and check the pipeline, and the files change under them): each answers as a run
alone does, within a bound, and the store is usable after. Then the ways a fact could be
read from the wrong place or hold things up: a write-ahead log that is a named pipe or a
link, a thread that waited for the lock while another opened the index, a query's copy of
the index, and the ranks of a distributed build (`held()`), which write nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import dataset_manifest, model_manifest
from stemma.registry import Registry
from stemma.registry.query.sql import query
from stemma.registry.store import _checkcache, _snapshot, index
from stemma.registry.store import derived as _store

STEMMA = str(Path(sys.executable).parent / "stemma")
COMMANDS = (
    ["ls"],
    ["validate"],
    ["query", "SELECT name, status FROM models ORDER BY name"],
    ["pipeline", "--check"],
)
# A lone run takes under a second; three at once on two busy cores, a few. A run that waits
# on a pipe or a lock for ever is stopped here and fails the test.
RUN_TIMEOUT_S = 60.0


def _stemma(args: list[str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [STEMMA, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=RUN_TIMEOUT_S,
    )
    return proc.returncode, proc.stdout


@pytest.fixture
def checked(populated: Registry, monkeypatch: pytest.MonkeyPatch, cli: Any) -> Registry:
    """`populated` with manifests and its pipeline written; no store yet."""
    monkeypatch.setattr(_checkcache, "RACY_NS", 0)
    reg = populated
    dataset_manifest(reg, "digits-0to4")
    model_manifest(reg, "base", accuracy=0.8)
    assert cli(["pipeline"], reg.repo_root).code == 0
    return reg


# Another process holding the index open, as a long query does, three times.
_READER = """
import sys, time
from stemma.registry import Registry
from stemma.registry.store import index
for _ in range(3):
    with index.open_index(Registry.open(sys.argv[1])):
        time.sleep(0.7)
    time.sleep(0.3)
"""


def test_commands_at_once_answer_as_alone_and_leave_the_store_usable(checked: Registry) -> None:
    """Three workers run the read and check commands in turn while the files' stamps
    change, another process holds the index open now and then (a long query), and the
    lock is held for 2 s (a long refresh elsewhere): every run answers as a run alone."""
    root = checked.repo_root
    alone = {tuple(args): _stemma(args, root) for args in COMMANDS}
    assert all(code == 0 for code, _ in alone.values()), alone
    touched = [checked.root / "models/base/manifest.json", checked.root / "models/ft/spec.yaml"]
    failures: list[str] = []
    done = threading.Event()

    def worker(k: int) -> None:
        order = COMMANDS[k:] + COMMANDS[:k]  # each worker meets the others mid-command
        for args in order + order[:2]:
            started = time.monotonic()
            try:
                got = _stemma(list(args), root)
            except subprocess.TimeoutExpired:
                failures.append(f"{args} ran past {RUN_TIMEOUT_S} s")
                continue
            if got != alone[tuple(args)]:
                failures.append(f"{args} after {time.monotonic() - started:.1f} s: {got}")

    def toucher() -> None:
        """New mtimes, the same content: every open refreshes the index, every check
        reads the folder again, and the answers stay the same."""
        while not done.wait(0.3):
            for path in touched:
                os.utime(path)

    def holder() -> None:
        if not done.wait(1.0):
            with _lock_held(root):
                done.wait(2.0)

    reader = subprocess.Popen([sys.executable, "-c", _READER, str(root)])
    workers = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    sides = [threading.Thread(target=toucher), threading.Thread(target=holder)]
    for thread in (*workers, *sides):
        thread.start()
    for thread in workers:
        thread.join()
    done.set()
    for thread in sides:
        thread.join()
    assert reader.wait(timeout=RUN_TIMEOUT_S) == 0
    assert not failures, failures
    # The store is usable after: a lone run answers the same, and writes the facts.
    assert all(_stemma(list(args), root) == alone[args] for args in alone)
    assert sorted(os.listdir(root / ".stemma")) == ["index.duckdb", "index.lock"]
    with index.open_index(checked) as opened:
        assert not opened.stats.private
    for name in ("snapshot", "valid", "checked", "pipeline"):
        assert _store.load(root, name), name
    assert query(checked, "SELECT count(*) FROM models").rows == ((3,),)


@pytest.fixture
def stored(checked: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """`checked` with its index built and a fact stored (the test's files count as old
    enough to trust their stamps: an index that matches them stays matched)."""
    monkeypatch.setattr(_snapshot, "RACY_NS", 0)
    index.refresh(checked)
    assert _store.save(checked.repo_root, "probe", b"kept")
    return checked


def _load_in_a_process(root: Path) -> subprocess.CompletedProcess[str]:
    """`derived.load` of the fact `probe` in a process of its own, stopped if it hangs."""
    code = (
        "import sys; from pathlib import Path; from stemma.registry.store import derived;"
        f"print(repr(derived.load(Path({str(root)!r}), 'probe')))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)


def test_a_log_that_is_a_named_pipe_is_a_miss_not_a_hang(stored: Registry) -> None:
    """DuckDB opens the log of a store it attaches, read-only too: on a named pipe that open
    never returns, and the lock stays held for every other process."""
    root = stored.repo_root
    wal = root / ".stemma" / "index.duckdb.wal"
    os.mkfifo(wal)
    started = time.monotonic()
    proc = _load_in_a_process(root)
    assert proc.returncode == 0 and proc.stdout.strip() == "None", proc.stderr
    assert time.monotonic() - started < 15
    # The next open of the index removes it, and the fact reads again.
    with index.open_index(stored) as opened:
        assert not opened.stats.private
    assert _store.kind(wal) == "missing" and _store.load(root, "probe") == b"kept"


def test_a_log_that_is_a_link_is_not_followed(stored: Registry, tmp_path: Path) -> None:
    """A log linked out of the registry would be opened and replayed from there."""
    root = stored.repo_root
    outside = tmp_path / "outside.wal"
    outside.write_bytes(b"not a log")
    (root / ".stemma" / "index.duckdb.wal").symlink_to(outside)
    assert _store.load(root, "probe") is None
    assert outside.read_bytes() == b"not a log"


@contextlib.contextmanager
def _lock_held(root: Path) -> Iterator[None]:
    import fcntl

    with open(root / ".stemma" / _store.LOCK_FILE, "rb+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.mark.parametrize("op", ["load", "save"])
def test_a_thread_that_waited_for_the_lock_sees_the_index_opened_meanwhile(
    stored: Registry, op: str
) -> None:
    """Thread B asks for a fact, and waits for the lock, while thread A opens the index.
    DuckDB's lock on the file belongs to the process: B attaching and closing the store
    (or writing it) after A opened it would drop A's lock, or change the file under A."""
    root = stored.repo_root
    path = _store.store_path(root)
    result: list[object] = []

    def other_thread() -> None:
        if op == "load":
            result.append(_store.load(root, "probe"))
        else:
            result.append(_store.save(root, "probe", b"changed"))

    with _lock_held(root):
        thread = threading.Thread(target=other_thread)
        thread.start()
        time.sleep(0.2)  # B is waiting for the lock (FACT_WAIT_S)
        import duckdb

        con = duckdb.connect()
        con.execute(f"ATTACH '{path}' AS store (READ_ONLY)")
        _store.opened(path, con)  # as `open_index` does, in thread A
    try:
        thread.join()
        assert result == [None] if op == "load" else result == [False]
    finally:
        _store.closed(path)
        con.close()
    assert _store.load(root, "probe") == b"kept"


def test_a_busy_store_is_waited_for_once_per_process(stored: Registry) -> None:
    """While another process holds the store (a long refresh), the first read waits its
    bound and misses; the command's other reads and writes do not wait again (they would
    add up). Once the store is free, it is used again."""
    root = stored.repo_root
    with _lock_held(root):
        started = time.monotonic()
        assert _store.load(root, "probe") is None
        assert not _store.save(root, "probe", b"changed")
        assert _store.load(root, "other") is None
        assert not _store.save(root, "other", b"changed")
        assert time.monotonic() - started < _store.FACT_WAIT_S + 1.0
    assert _store.load(root, "probe") == b"kept"
    with index.open_index(stored) as opened:
        assert not opened.stats.private


def test_open_index_records_the_open_store_before_letting_go_of_the_lock(
    stored: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _store.store_path(stored.repo_root)
    seen: list[bool] = []
    real = _store.locked

    @contextlib.contextmanager
    def watched(lock: Path, wait_s: float) -> Iterator[None]:
        with real(lock, wait_s):
            try:
                yield
            finally:
                seen.append(_store.is_open(path))

    monkeypatch.setattr(_store, "locked", watched)
    with index.open_index(stored) as opened:
        assert not opened.stats.private
    assert seen == [True]
    assert not _store.is_open(path)


def test_a_query_copy_lets_go_of_the_store(stored: Registry) -> None:
    """Once the index is copied into memory the file is no longer open here: a fact is
    read from the store, not from the copy, and can be written."""
    root = stored.repo_root
    path = _store.store_path(root)
    with index.open_index(stored) as opened:
        assert _store.is_open(path)
        con = opened.take_copy()
        assert not _store.is_open(path)
        assert _store.save(root, "probe", b"after the copy")
        assert _store.load(root, "probe") == b"after the copy"
        assert _store.fact(con, "probe") == b"kept"
    con.close()
    assert _store.load(root, "probe") == b"after the copy"


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file of `folder` by name: size and mtime."""
    out = {}
    for name in sorted(os.listdir(folder)):
        info = os.lstat(folder / name)
        out[name] = (info.st_size, info.st_mtime_ns)
    return out


def test_a_rank_that_writes_nothing_uses_a_matching_index_or_a_private_one(
    stored: Registry,
) -> None:
    root = stored.repo_root
    before = _state(root / ".stemma")
    with _store.held():
        with index.open_index(stored) as opened:  # the index matches: used as it is
            assert not opened.stats.private
            assert opened.con.execute("SELECT count(*) FROM models").fetchall() == [(3,)]
        assert _store.load(root, "probe") == b"kept"
        os.utime(stored.root / "models/base/manifest.json", ns=(1, 1))  # now stale
        with index.open_index(stored) as opened:  # refreshed in private, not in the store
            assert opened.stats.private
            assert opened.con.execute("SELECT count(*) FROM models").fetchall() == [(3,)]
        assert not _store.save(root, "probe", b"changed")
    assert _state(root / ".stemma") == before
    assert _store.load(root, "probe") == b"kept"


def test_a_rank_that_writes_nothing_makes_no_store(checked: Registry) -> None:
    root = checked.repo_root
    shutil.rmtree(root / ".stemma", ignore_errors=True)
    with _store.held():
        with index.open_index(checked) as opened:
            assert opened.stats.private
        assert _store.load(root, "probe") is None
    assert not (root / ".stemma").exists()


def test_a_held_block_holds_its_own_code_not_another_thread(stored: Registry) -> None:
    root = stored.repo_root
    written: list[bool] = []
    with _store.held():
        assert not _store.save(root, "probe", b"held")
        worker = threading.Thread(
            target=lambda: written.append(_store.save(root, "probe", b"other"))
        )
        worker.start()
        worker.join()
        assert _store.is_held()
    assert written == [True] and not _store.is_held()
    assert _store.load(root, "probe") == b"other"


def test_an_index_is_recorded_open_until_its_connection_is_closed(tmp_path: Path) -> None:
    """Closing: the connection first, then the record, even when the close fails (else
    another thread could attach the store while the file is still open here, or every
    later read in this process would miss)."""
    path = _store.store_path(tmp_path)
    seen: list[bool] = []

    class Closing:
        def close(self) -> None:
            seen.append(_store.is_open(path))
            raise RuntimeError("close failed")

    opened = index.Index(Closing(), index.RefreshStats(0, 0, 0, 0.0), shared=path)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        opened.close()
    assert seen == [True] and not _store.is_open(path)


def test_a_rebuild_removes_the_old_numerics_files(
    stored: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Earlier versions kept this machine's numerics fingerprint as `numerics-KEY.json`
    beside the index; it is a fact now, and the old files go with the other old files."""
    from stemma.registry.store import _sql

    folder = stored.repo_root / ".stemma"
    (folder / "numerics-0123456789abcdef.json").write_text("{}")
    monkeypatch.setattr(_sql, "FORMAT", _sql.FORMAT + "-next")  # the index is rebuilt
    with index.open_index(stored) as opened:
        assert opened.stats.rebuilt and not opened.stats.private
    assert sorted(os.listdir(folder)) == ["index.duckdb", "index.lock"]
    assert _store.load(stored.repo_root, "probe") == b"kept"


@pytest.mark.parametrize("ranks", [False, True])
def test_a_thread_that_waited_to_open_the_index_sees_it_opened_meanwhile(
    stored: Registry, ranks: bool
) -> None:
    """Thread B opens the index, and waits for the lock, while thread A opens it: B gets a
    private index instead of attaching the file a second time (and of replacing A's record
    of it, which A's close would then remove while B still holds the file)."""
    root = stored.repo_root
    path = _store.store_path(root)
    result: list[index.Index] = []

    def other_thread() -> None:
        with _store.held() if ranks else contextlib.nullcontext():
            result.append(index.open_index(stored))

    with _lock_held(root):
        thread = threading.Thread(target=other_thread)
        thread.start()
        time.sleep(0.3)  # B is waiting for the lock (LOCK_WAIT_S)
        import duckdb

        con = duckdb.connect()
        con.execute(f"ATTACH '{path}' AS store (READ_ONLY)")
        _store.opened(path, con)  # as `open_index` does, in thread A
    try:
        thread.join()
        assert result[0].stats.private
        result[0].close()
        assert _store.is_open(path)  # A's record stays
    finally:
        _store.closed(path)
        con.close()


_HOLDER = """
import sys, time
from stemma.registry import Registry
from stemma.registry.store import index
with index.open_index(Registry.open(sys.argv[1])) as opened:
    assert not opened.stats.private
    print("open", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def _held_open(root: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the index open for `seconds` (a query) once this starts."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        yield proc
    finally:
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0


def test_a_fact_is_written_once_a_short_read_elsewhere_is_over(stored: Registry) -> None:
    """`stemma ls` or a query in another process holds DuckDB's lock on the store for a
    moment: a fact written meanwhile (`stemma validate`'s) waits for it, up to FACT_WAIT_S,
    instead of being lost."""
    root = stored.repo_root
    with _held_open(root, 0.4):
        assert _store.save(root, "probe", b"written")
    assert _store.load(root, "probe") == b"written"


def test_a_fact_write_waits_for_a_long_read_elsewhere_once(stored: Registry) -> None:
    root = stored.repo_root
    with _held_open(root, 2 * _store.FACT_WAIT_S + 2):
        started = time.monotonic()
        assert not _store.save(root, "probe", b"first")
        assert time.monotonic() - started >= _store.FACT_WAIT_S
        started = time.monotonic()
        assert not _store.save(root, "probe", b"second")  # tried once: no second wait
        assert time.monotonic() - started < _store.FACT_WAIT_S
    assert _store.load(root, "probe") == b"kept"
    assert _store.save(root, "probe", b"after")  # free again: written, and waits again
    assert _store.load(root, "probe") == b"after"


def test_a_read_only_checkout_still_reads_its_facts(
    stored: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the lock file cannot be opened for writing (a read-only checkout, another
    user's registry: tests run as root, so the refusal is made here), the lock is taken on
    a descriptor opened for reading, and the facts and the matching index are still read
    (earlier versions read their cache files there; the lock made every fact a miss)."""
    import errno

    root = stored.repo_root
    lock = str(root / ".stemma" / _store.LOCK_FILE)
    real_open = os.open

    def refusing(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path) == lock and flags & (os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, "Read-only file system", lock)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    assert _store.load(root, "probe") == b"kept"
    with index.open_index(stored) as opened:
        assert not opened.stats.private


def test_a_store_named_another_way_is_still_found_open(
    stored: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index is open through the registry's resolved path; a fact asked for through a
    linked or relative path to the same repository is read through that connection, not
    by a second attach (whose close would drop this process's lock on the file)."""
    root = stored.repo_root
    linked = tmp_path / "linked-repo"
    linked.symlink_to(root)
    monkeypatch.chdir(root.parent)
    with index.open_index(stored) as opened:
        assert not opened.stats.private
        monkeypatch.setattr(_store, "_attached", None)  # a second attach would fail loudly
        for other in (linked, Path(root.name)):
            assert _store.is_open(_store.store_path(other))
            assert _store.load(other, "probe") == b"kept"
            assert not _store.save(other, "probe", b"changed")
    monkeypatch.undo()
    assert _store.load(root, "probe") == b"kept"
