"""The query index: every spec and manifest in DuckDB, at <repo>/.stemma/index.duckdb.

The index is a cache, never a source of truth. Each open compares the size and mtime of
every spec and manifest with the snapshot the index last matched (`index.snapshot`, beside
it), re-reads only the files that changed, drops the ones that are gone, all in one
transaction: a query always sees the files as they are. Processes coordinate with a lock
file; a process that cannot get the index (another one is rebuilding it, or holds it open for
a long query) builds a private copy instead of waiting.
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

from . import _snapshot
from ._ingest import (
    SNAPSHOT_SUFFIX,
    Attached,
    Changes,
    Clock,
    IndexBusy,
    StaleIndex,
    StoredSnapshot,
    apply,
    matches,
)
from .commits import settle
from .errors import QueryError, StemmaError

if TYPE_CHECKING:
    import duckdb

    from .registry import Registry

INDEX_DIR = ".stemma"
INDEX_NAME = "index.duckdb"
LOCK_NAME = "index.lock"
# How long to wait for another process's refresh before building a private index instead.
LOCK_WAIT_S = 5.0
# How many times this process has each shared index open. DuckDB's lock on the file belongs
# to the process: a second instance on it would drop the first one's lock when it closes, so
# a second open in one process gets a private index.
_IN_USE: dict[Path, int] = {}


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


class Index:
    """A read-only DuckDB connection to an index that matches the files."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        stats: RefreshStats,
        private_dir: Path | None = None,
        shared: Path | None = None,
    ) -> None:
        self.con = con
        self.stats = stats
        self._private_dir = private_dir
        self._shared = shared
        if shared is not None:
            _IN_USE[shared] = _IN_USE.get(shared, 0) + 1

    def close(self) -> None:
        """Close the connection (and delete a private index)."""
        shared, self._shared = self._shared, None
        if shared is not None:
            _IN_USE[shared] -= 1
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
    settle(reg.root)  # a build killed while switching its outputs in is never indexed half-moved
    clock = Clock()
    path = index_path(reg)
    try:
        if _IN_USE.get(path):
            raise IndexBusy(f"{path} is open in this process")
        path.parent.mkdir(exist_ok=True)
        with _file_lock(path.parent / LOCK_NAME, LOCK_WAIT_S):
            con, stats = _fresh(reg, path, clock)
        return Index(con, stats, shared=path)
    except IndexBusy:
        pass  # another process is writing it, or reading it while we need to write
    except OSError as exc:
        if isinstance(exc, StemmaError):
            raise
        # .stemma/ cannot be written (a read-only checkout): fall through to a private index
    import tempfile

    private = Path(tempfile.mkdtemp(prefix="stemma-index-"))
    try:
        con, stats = _fresh(reg, private / INDEX_NAME, clock)
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


def _fresh(reg: Registry, path: Path, clock: Clock) -> tuple[Any, RefreshStats]:
    """A connection with the index at `path` attached read-only, after bringing the index
    in step with the files."""
    from ._engine import duckdb

    db = Attached(path)
    try:
        return _refresh(db, reg, clock)
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            db.close()
        raise


def _refresh(db: Attached, reg: Registry, clock: Clock) -> tuple[Any, RefreshStats]:
    from ._engine import duckdb

    path = db.path
    side = path.with_suffix(SNAPSHOT_SUFFIX)
    stored = StoredSnapshot.read(side) if path.exists() else None
    clock.lap("open")
    snap = _snapshot.snapshot(reg.root, reg.rel_root)
    digests = snap.digests()
    clock.lap("snapshot")
    changes: Changes | None = None
    if stored is not None and stored.digests == digests:  # the common case: nothing changed
        with contextlib.suppress(duckdb.Error):
            con = db.attach(read_only=True)
            if matches(con, digests):
                clock.lap("compare")
                return con, RefreshStats(0, 0, 0, clock.total(), phases=clock.phases)
    elif stored is not None:
        changes = _diff(stored, snap, digests)
        clock.lap("compare")
    if changes is not None:
        try:
            apply(reg, db, snap, changes, side, stored.digests if stored else None, clock)
        except StaleIndex:
            changes = None  # the index does not match its snapshot file, or is damaged
    rebuilt = changes is None
    if changes is None:
        with contextlib.suppress(duckdb.Error):
            db.close()
        for stale in (side, path, *path.parent.glob(f"{path.name}.wal*")):
            stale.unlink(missing_ok=True)
        stamps = snap.by_path()
        changes = Changes(read=list(stamps), removed=[], added=len(stamps), stamps=stamps)
        apply(reg, db, snap, changes, side, None, clock)
    db.detach()
    clock.lap("close")
    con = db.attach(read_only=True)
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


def _diff(
    stored: StoredSnapshot, snap: _snapshot.Snapshot, digests: tuple[str, str]
) -> Changes | None:
    """Files that are new, changed or gone since the stored snapshot (None: unreadable)."""
    # The same folders: the stored names need not be parsed.
    before = stored.snapshot(snap.names if stored.digests[0] == digests[0] else None)
    if before is None:
        return None
    read, removed, added = snap.diff(before)
    return Changes(read=read, removed=removed, added=added, stamps=snap.stamps(read))
