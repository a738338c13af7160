"""The query index: every spec and manifest in DuckDB, at <repo>/.stemma/index.duckdb.

The index is a cache, never a source of truth. Each open compares the size and mtime of
every spec and manifest with what the index recorded, re-reads only the files that changed,
drops the ones that are gone, all in one transaction: a query always sees the files as they
are. Processes coordinate with a lock file; a process that cannot get the index (another one
is rebuilding it, or holds it open for a long query) builds a private copy instead of waiting.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _scan, _sql
from ._ingest import Changes, Clock, apply, int_column, text_column
from .errors import QueryError, StemmaError

if TYPE_CHECKING:
    import duckdb

    from .registry import Registry

INDEX_DIR = ".stemma"
INDEX_NAME = "index.duckdb"
LOCK_NAME = "index.lock"
# How long to wait for another process's refresh before building a private index instead.
LOCK_WAIT_S = 5.0
# Above this many files the snapshot is compared inside DuckDB rather than in Python.
DIFF_IN_SQL = 20_000


@dataclass(frozen=True)
class RefreshStats:
    """What one refresh did."""

    added: int
    changed: int
    removed: int
    seconds: float
    rebuilt: bool = False
    private: bool = False
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step, for benchmarks

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = dict(self.__dict__)
        out["phases"] = {k: round(v, 4) for k, v in self.phases.items()}
        return out


class IndexBusy(StemmaError):
    """The shared index is being written or read by another process."""


class Index:
    """A read-only DuckDB connection to an index that matches the files."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, stats: RefreshStats, private_dir: Path | None = None
    ) -> None:
        self.con = con
        self.stats = stats
        self._private_dir = private_dir

    def close(self) -> None:
        """Close the connection (and delete a private index)."""
        self.con.close()
        if self._private_dir is not None:
            _remove_tree(self._private_dir)

    def __enter__(self) -> Index:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def index_path(reg: Registry) -> Path:
    """Where the registry's index lives."""
    return reg.repo_root / INDEX_DIR / INDEX_NAME


def open_index(reg: Registry) -> Index:
    """Refresh the index from the files and open it read-only."""
    from .tree import WorkTree

    if not isinstance(reg.tree, WorkTree):
        raise QueryError(f"queries read the working tree, not {reg.tree.label}")
    clock = Clock()
    snap = _scan.snapshot(reg.root)
    clock.lap("snapshot")
    path = index_path(reg)
    try:
        path.parent.mkdir(exist_ok=True)
        with _file_lock(path.parent / LOCK_NAME, LOCK_WAIT_S):
            con, stats = _fresh(reg, path, snap, clock)
        return Index(con, stats)
    except IndexBusy:
        pass  # another process is writing it, or reading it while we need to write
    except OSError as exc:
        if isinstance(exc, StemmaError):
            raise
        # .stemma/ cannot be written (a read-only checkout): fall through to a private index
    import tempfile

    private = Path(tempfile.mkdtemp(prefix="stemma-index-"))
    try:
        con, stats = _fresh(reg, private / INDEX_NAME, snap, clock)
    except BaseException:
        _remove_tree(private)
        raise
    return Index(con, replace(stats, private=True), private)


def refresh(reg: Registry) -> RefreshStats:
    """Bring the on-disk index in step with the files; what it did."""
    with open_index(reg) as index:
        return index.stats


@contextlib.contextmanager
def _file_lock(path: Path, wait_s: float) -> Iterator[None]:
    """An exclusive lock on `path`; `IndexBusy` when another process holds it too long."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here: DuckDB's own file lock still protects it
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise IndexBusy(f"{path} is held by another process") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    import duckdb

    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise IndexBusy(f"{path} is open in another process") from None
        raise


def _fresh(
    reg: Registry, path: Path, snap: _scan.Snapshot, clock: Clock
) -> tuple[Any, RefreshStats]:
    """A read-only connection to `path` after bringing it in step with `snap`."""
    import duckdb

    changes: Changes | None = None
    if path.exists():
        try:
            con = _connect(path, read_only=True)
        except duckdb.Error:
            con = None  # unreadable: rebuilt below
        if con is not None:
            if _format(con) == _sql.FORMAT:
                changes = _diff(con, snap)
                clock.lap("compare")
                if not changes.read and not changes.removed:
                    return con, RefreshStats(0, 0, 0, clock.total(), phases=clock.phases)
            con.close()
    rebuilt = changes is None
    if rebuilt:
        for stale in (path, path.with_name(path.name + ".wal")):
            stale.unlink(missing_ok=True)
        changes = Changes(read=list(snap.paths), removed=[], added=len(snap.paths))
    assert changes is not None
    apply(reg, lambda: _connect(path, read_only=False), snap, changes, rebuilt, clock)
    con = _connect(path, read_only=True)
    clock.lap("reopen")
    stats = RefreshStats(
        changes.added,
        len(changes.read) - changes.added,
        len(changes.removed),
        clock.total(),
        rebuilt,
        phases=clock.phases,
    )
    return con, stats


def _format(con: duckdb.DuckDBPyConnection) -> str | None:
    import duckdb

    try:
        rows = con.execute("SELECT value FROM raw.meta WHERE key = 'format'").fetchall()
    except duckdb.Error:
        return None
    return str(rows[0][0]) if rows else None


def _diff(con: duckdb.DuckDBPyConnection, snap: _scan.Snapshot) -> Changes:
    """Paths that are new, changed or gone since the index recorded them."""
    packed = con.execute("SELECT paths_digest, numbers_digest FROM raw.snapshot").fetchall()
    if packed:

        def numbers() -> bytes:
            return bytes(con.execute("SELECT numbers FROM raw.snapshot").fetchall()[0][0])

        changed = snap.changed_since(str(packed[0][0]), str(packed[0][1]), numbers)
        if changed is not None:  # the same files as last time: compare sizes and mtimes only
            return Changes(read=changed, removed=[], added=0)
    stats = snap.stats
    if len(stats) < DIFF_IN_SQL:
        # Small registries: comparing in Python avoids importing NumPy (a third of a
        # `stemma query` budget) just to hand the snapshot to DuckDB.
        stored = {
            p: (s, m)
            for p, s, m in con.execute("SELECT path, size, mtime_ns FROM raw.files").fetchall()
        }
        read = sorted(p for p, st in stats.items() if stored.get(p) != st)
        removed = sorted(p for p in stored if p not in stats)
        return Changes(read, removed, added=sum(1 for p in read if p not in stored))
    paths = list(stats)
    con.register(
        "current_files",
        {
            "path": text_column(paths),
            "size": int_column([stats[p][0] for p in paths]),
            "mtime_ns": int_column([stats[p][1] for p in paths]),
        },
    )
    try:
        rows = con.execute("""
            SELECT coalesce(c.path, f.path), c.path IS NULL, f.path IS NULL
            FROM current_files c FULL OUTER JOIN raw.files f ON f.path = c.path
            WHERE c.path IS NULL OR f.path IS NULL
               OR c.size <> f.size OR c.mtime_ns <> f.mtime_ns""").fetchall()
    finally:
        con.unregister("current_files")
    read = sorted(p for p, gone, _new in rows if not gone)
    removed = sorted(p for p, gone, _new in rows if gone)
    return Changes(read=read, removed=removed, added=sum(1 for _p, _g, new in rows if new))
