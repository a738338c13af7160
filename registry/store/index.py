"""The query index: every spec and manifest in DuckDB, at <repo>/.stemma/index.duckdb.

The index is a cache, never a source of truth. Each open compares the size and mtime of
every spec and manifest with the snapshot the index last matched (`index.snapshot`, beside
it), re-reads only the files that changed, drops the ones that are gone, all in one
transaction: a query always sees the files as they are. Processes coordinate with a lock
file; a process that cannot get the index (another one is rebuilding it, or holds it open for
a long query) builds a private copy instead of waiting.

The files under `.stemma/` are a cache (`_store`): a link, a pipe, a device or a folder in
the place of the index, its snapshot, its write-ahead log or its lock is removed and the
index rebuilt, never followed or opened. Where the index cannot be written (a read-only
checkout, a full disk) a read builds a private index in a temporary folder, and where that
cannot be written either, one in memory: it answers without writing anything.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from stemma.registry.errors import QueryError, StemmaError
from stemma.registry.rules.commits import finish
from stemma.registry.rules.layout import STATE_DIR as INDEX_DIR
from stemma.registry.store import _engine, _snapshot
from stemma.registry.store import derived as _store
from stemma.registry.store._ingest import (
    DATABASE,
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
from stemma.registry.store.tree import WorkTree

if TYPE_CHECKING:
    import duckdb
    from stemma.registry.store.handle import Registry

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
        self._owned = True  # False once the caller took the connection (`take_copy`)
        if shared is not None:
            _IN_USE[shared] = _IN_USE.get(shared, 0) + 1

    def take_copy(self) -> duckdb.DuckDBPyConnection:
        """This connection with the index copied into its own memory and the index file
        detached: the caller owns it (`close` leaves it open) and holds no lock on the file.
        `models` is a table there, computed once, instead of the view's join."""
        con = self.con
        con.execute(f"COPY FROM DATABASE {DATABASE} TO memory")
        con.execute("USE memory")
        con.execute(f"DETACH {DATABASE}")
        con.execute("CREATE TABLE main.models_copy AS SELECT * FROM main.models")
        con.execute("DROP VIEW main.models")
        con.execute("ALTER TABLE main.models_copy RENAME TO models")
        self._owned = False
        return con

    def close(self) -> None:
        """Close the connection (and delete a private index)."""
        shared, self._shared = self._shared, None
        if shared is not None:
            _IN_USE[shared] -= 1
        if self._owned:
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
    """Refresh the index from the files and open it read-only: the shared index in
    `.stemma/` where it can be used, else a private one (see the module doc)."""
    duckdb = _engine.duckdb()

    if not isinstance(reg.tree, WorkTree):
        raise QueryError(f"queries read the working tree, not {reg.tree.label}")
    clock = Clock()
    path = index_path(reg)
    try:
        if _IN_USE.get(path):
            raise IndexBusy(f"{path} is open in this process")
        if _store.folder(reg.repo_root, create=True) is None:
            raise _Unusable(f"{path.parent} is not a folder")
        with _file_lock(path.parent / LOCK_NAME, LOCK_WAIT_S):
            _clear_damaged(path)
            con, stats = _fresh(reg, path, clock)
        return Index(con, stats, shared=path)
    except (IndexBusy, _Unusable):
        pass  # another process is writing it, or reading it while we need to write
    except (OSError, duckdb.Error) as exc:
        if isinstance(exc, StemmaError):
            raise
        # .stemma/ cannot be written (a read-only checkout, a full disk): a private index
    return _private(reg, path, clock)


class _Unusable(Exception):
    """Something that is not the store's own file or folder is in the place of one."""


def _private(reg: Registry, shared: Path, clock: Clock) -> Index:
    """An index of this process alone: in a temporary folder, or where nothing can be
    written there either, in memory."""
    import tempfile

    duckdb = _engine.duckdb()

    try:
        private: Path | None = Path(tempfile.mkdtemp(prefix="stemma-index-"))
    except OSError:
        private = None
    if private is not None:
        try:
            con, stats = _fresh(reg, private / INDEX_NAME, clock)
            return Index(con, replace(stats, private=True), private)
        except (OSError, duckdb.Error) as exc:
            _remove_tree(private)
            if isinstance(exc, StemmaError):
                raise
        except BaseException:
            _remove_tree(private)
            raise
    try:
        con, stats = _fresh(reg, None, clock)
    except duckdb.Error as exc:
        reason = _engine.one_line(exc)
        raise QueryError(
            f"{shared}: cannot be written, and an index in memory failed too: {reason}"
        ) from None
    return Index(con, replace(stats, private=True))


def refresh(reg: Registry) -> RefreshStats:
    """Bring the on-disk index in step with the files; what it did."""
    with open_index(reg) as index:
        return index.stats


def _clear_damaged(path: Path) -> None:
    """Remove whatever is in the place of the index's own files and is not one (a link, a
    pipe, a device): the index is then rebuilt. `_Unusable` where that cannot be done."""
    files = [path, path.with_suffix(SNAPSHOT_SUFFIX), *path.parent.glob(f"{path.name}.wal*")]
    if not all(_store.clear(f) for f in files):
        raise _Unusable(f"{path} or a file beside it is a folder")
    spills = Path(f"{path}.tmp")  # DuckDB's temporary folder: a folder or nothing
    if _store.kind(spills) not in ("missing", "folder"):
        with contextlib.suppress(OSError):
            os.unlink(spills)
        if _store.kind(spills) != "missing":
            raise _Unusable(f"{spills} is not a folder")


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file `path`, made when missing; a link, a pipe or a device
    there is removed first (never followed: a dangling link would make its target)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    for _attempt in range(2):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError:  # a link (ELOOP), a folder, a device without a reader
            fd = -1
        if fd >= 0:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
            os.close(fd)
        if not _store.clear(path):
            break
    raise _Unusable(f"{path} is not a regular file")


@contextlib.contextmanager
def _file_lock(path: Path, wait_s: float) -> Iterator[None]:
    """An exclusive lock on `path`; `IndexBusy` when another process holds it too long."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here: DuckDB's own file lock still protects it
        yield
        return
    fd = _open_lock(path)
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


def _fresh(reg: Registry, path: Path | None, clock: Clock) -> tuple[Any, RefreshStats]:
    """A connection with the index at `path` (None: in memory) attached read-only, after
    bringing the index in step with the files."""
    duckdb = _engine.duckdb()

    db = Attached(path)
    try:
        return _refresh(db, reg, clock)
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            db.close()
        raise


def _refresh(db: Attached, reg: Registry, clock: Clock) -> tuple[Any, RefreshStats]:
    duckdb = _engine.duckdb()

    path = db.path
    side = path.with_suffix(SNAPSHOT_SUFFIX) if path is not None else None
    has_index = path is not None and _store.kind(path) == "file"
    stored = StoredSnapshot.read(side) if side is not None and has_index else None
    clock.lap("open")
    snap = _snapshot.snapshot(reg.root, reg.rel_root)
    if snap.pending:  # a build killed while switching its outputs in is never indexed half-moved
        for folder in snap.pending:
            if not os.path.islink(reg.root / folder):
                with contextlib.suppress(OSError):  # a read-only checkout: indexed as it is
                    finish(reg.root / folder)
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
        if path is not None and side is not None:
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
