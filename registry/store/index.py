"""The query index: every spec and manifest in DuckDB, at <repo>/.stemma/index.duckdb.

The index is a cache, never a source of truth. Each open compares the stamp of every spec
and manifest with the snapshot the index last matched (kept in the store as the fact
`snapshot`, written in the same transaction), re-reads only the files that changed, drops
the ones that are gone, all in one transaction: a query always sees the files as they are.
Processes coordinate with a lock file; a process that cannot get the index (another one is
rebuilding it, or holds it open for a long query) builds a private copy instead of waiting.

The files under `.stemma/` are a cache (`_store`): a link, a pipe, a device or a folder in
the place of the store, its write-ahead log or its lock is removed and the
index rebuilt, never followed or opened. Where the index cannot be written (a read-only
checkout, a full disk) a read builds a private index in a temporary folder, and where that
cannot be written either, one in memory: it answers without writing anything.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from stemma.registry.errors import QueryError, StemmaError
from stemma.registry.rules.commits import finish
from stemma.registry.store import _engine, _snapshot, fsmonitor
from stemma.registry.store import derived as _store
from stemma.registry.store._ingest import (
    DATABASE,
    Attached,
    Changes,
    Clock,
    IndexBusy,
    StaleIndex,
    StoredSnapshot,
    apply,
    matches,
    record_watched,
    watched,
)
from stemma.registry.store.tree import WorkTree

if TYPE_CHECKING:
    import duckdb
    from stemma.registry.store.handle import Registry

INDEX_NAME = _store.STORE_FILE
LOCK_NAME = _store.LOCK_FILE
LOCK_WAIT_S = _store.LOCK_WAIT_S


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
            _store.opened(shared, con)

    def take_copy(self) -> duckdb.DuckDBPyConnection:
        """This connection with the index copied into its own memory and the index file
        detached: the caller owns it (`close` leaves it open) and holds no lock on the file.
        `models` is a table there, computed once, instead of the view's join."""
        con = self.con
        con.execute(f"COPY FROM DATABASE {DATABASE} TO memory")
        con.execute("USE memory")
        con.execute(f"DETACH {DATABASE}")
        # The file is no longer open here: a fact is read from the store itself (not from
        # this copy), and may be written, while the caller runs its query on the copy.
        shared, self._shared = self._shared, None
        if shared is not None:
            _store.closed(shared)
        con.execute("CREATE TABLE main.models_copy AS SELECT * FROM main.models")
        con.execute("DROP VIEW main.models")
        con.execute("ALTER TABLE main.models_copy RENAME TO models")
        self._owned = False
        return con

    def close(self) -> None:
        """Close the connection (and delete a private index)."""
        shared, self._shared = self._shared, None
        try:
            if self._owned:
                self.con.close()
        finally:
            # Only once the file is closed: until then, a fact another thread reads or
            # writes must not attach the store a second time (see `derived._OPEN`).
            if shared is not None:
                _store.closed(shared)
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
    return _store.store_path(reg.repo_root)


def open_index(reg: Registry) -> Index:
    """Refresh the index from the files and open it read-only: the shared index in
    `.stemma/` where it can be used, else a private one (see the module doc)."""
    duckdb = _engine.duckdb()

    if not isinstance(reg.tree, WorkTree):
        raise QueryError(f"queries read the working tree, not {reg.tree.label}")
    clock = Clock()
    path = index_path(reg)
    try:
        if _store.is_open(path):
            raise IndexBusy(f"{path} is open in this process")
        if _store.is_held():
            return _as_it_is(reg, path, clock)
        if _store.folder(reg.repo_root, create=True) is None:
            raise _store.StoreUnusable(f"{path.parent} is not a folder")
        with _store.locked(path.parent / LOCK_NAME, LOCK_WAIT_S):
            _busy_here(path)
            _clear_damaged(path)
            con, stats = _fresh(reg, path, clock, ask=True)
            # Recorded before the lock is let go: a fact read or written by another thread
            # once it has the lock must see that this process holds the file open.
            return Index(con, stats, shared=path)
    except (IndexBusy, _store.StoreBusy, _store.StoreUnusable):
        pass  # another process is writing it, or reading it while we need to write
    except (OSError, duckdb.Error) as exc:
        if isinstance(exc, StemmaError):
            raise
        # .stemma/ cannot be written (a read-only checkout, a full disk): a private index
    return _private(reg, path, clock)


def _busy_here(path: Path) -> None:
    """`IndexBusy` when another thread of this process opened the index while this one
    waited for the lock: a second attach here would write under it, or, once closed, drop
    its lock on the file (and replace its record in `derived._OPEN`)."""
    if _store.is_open(path):
        raise IndexBusy(f"{path} is open in this process")


def _as_it_is(reg: Registry, path: Path, clock: Clock) -> Index:
    """Inside `held()` (the ranks of a distributed build other than 0, which write nothing):
    the shared index, attached read-only, when it already matches the files; otherwise
    `IndexBusy`, and the caller builds a private index instead of writing the shared one."""
    duckdb = _engine.duckdb()

    if _store.folder(reg.repo_root) is None or _store.kind(path) != "file":
        raise IndexBusy(f"{path} is missing")
    with _store.locked(path.parent / LOCK_NAME, LOCK_WAIT_S):
        _busy_here(path)
        if not all(_store.kind(p) == "missing" for p in path.parent.glob(f"{path.name}.wal*")):
            raise IndexBusy(f"{path} has a log to replay")  # replaying it would write
        if _store.kind(Path(f"{path}.tmp")) not in ("missing", "folder"):
            raise IndexBusy(f"{path}.tmp is not a folder")  # a query could spill through it
        db = Attached(path)
        try:
            con = db.attach(read_only=True)
            snap = _snapshot.snapshot(reg.root, reg.rel_root)
            clock.lap("snapshot")
            if not snap.pending and matches(con, snap.digests()):
                clock.lap("compare")
                stats = RefreshStats(0, 0, 0, clock.total(), phases=clock.phases)
                return Index(con, stats, shared=path)
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                db.close()
            raise
        db.close()
    raise IndexBusy(f"{path} does not match the files")


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
    pipe, a device): the index is then rebuilt. `StoreUnusable` where that cannot be done."""
    files = [path, *path.parent.glob(f"{path.name}.wal*")]
    if not all(_store.clear(f) for f in files):
        raise _store.StoreUnusable(f"{path} or a file beside it is a folder")
    spills = Path(f"{path}.tmp")  # DuckDB's temporary folder: a folder or nothing
    if _store.kind(spills) not in ("missing", "folder"):
        with contextlib.suppress(OSError):
            os.unlink(spills)
        if _store.kind(spills) != "missing":
            raise _store.StoreUnusable(f"{spills} is not a folder")


def _fresh(
    reg: Registry, path: Path | None, clock: Clock, ask: bool = False
) -> tuple[Any, RefreshStats]:
    """A connection with the index at `path` (None: in memory) attached read-only, after
    bringing the index in step with the files; `ask`: the shared index, whose freshness the
    monitor daemon may vouch for (`fsmonitor`)."""
    duckdb = _engine.duckdb()

    db = Attached(path)
    try:
        return _refresh(db, reg, clock, ask)
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            db.close()
        raise


def _refresh(db: Attached, reg: Registry, clock: Clock, ask: bool) -> tuple[Any, RefreshStats]:
    duckdb = _engine.duckdb()

    path = db.path
    clock.lap("open")
    # Asked BEFORE the files are looked at: the token vouches for what the check below sees.
    token = fsmonitor.token(reg.root) if ask and path is not None else None
    if token is not None and path is not None and _store.kind(path) == "file":
        clock.lap("ask")
        with contextlib.suppress(duckdb.Error):  # a damaged or foreign file: the full check
            con = db.attach(read_only=True)
            if watched(con) == token:  # nothing the index reads changed since its check
                clock.lap("compare")
                return con, RefreshStats(0, 0, 0, clock.total(), phases=clock.phases)
    snap = _snapshot.snapshot(reg.root, reg.rel_root)
    # A build killed while switching its outputs in is never indexed half-moved; inside
    # `held()` (a rank of a build that writes nothing) it is indexed as it is.
    if snap.pending and not _store.is_held():
        for folder in snap.pending:
            if not os.path.islink(reg.root / folder):
                with contextlib.suppress(OSError):  # a read-only checkout: indexed as it is
                    finish(reg.root / folder)
        snap = _snapshot.snapshot(reg.root, reg.rel_root)
    digests = snap.digests()
    clock.lap("snapshot")
    stored: StoredSnapshot | None = None
    if path is not None and _store.kind(path) == "file":
        with contextlib.suppress(duckdb.Error):  # a damaged or foreign file: rebuilt
            con = db.attach(read_only=True)
            if matches(con, digests):  # the common case: nothing changed
                if token is not None and watched(con) != token:
                    con = _record(db, token)
                clock.lap("compare")
                return con, RefreshStats(0, 0, 0, clock.total(), phases=clock.phases)
            stored = StoredSnapshot.parse(_store.fact(con, _store.SNAPSHOT_FACT))
    changes: Changes | None = None
    if stored is not None:
        changes = _diff(stored, snap, digests)
        clock.lap("compare")
    if changes is not None:
        try:
            apply(reg, db, snap, changes, stored.digests if stored else None, clock, (), token)
        except StaleIndex:
            changes = None  # the index does not match its snapshot, or is damaged
    rebuilt = changes is None
    if changes is None:
        with contextlib.suppress(duckdb.Error):
            db.close()
        kept = _kept_facts(db)
        if path is not None:
            legacy = [path.parent / name for name in _store.LEGACY_FILES]
            # The numerics fingerprint was a file per machine key (`numerics-KEY.json`).
            legacy += path.parent.glob("numerics-*.json")
            for stale in (path, *path.parent.glob(f"{path.name}.wal*"), *legacy):
                if _store.kind(stale) == "file":
                    stale.unlink(missing_ok=True)
        paths = snap.paths()
        changes = Changes(read=paths, removed=[], added=len(paths))
        apply(reg, db, snap, changes, None, clock, kept, token)
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


def _record(db: Attached, token: str) -> duckdb.DuckDBPyConnection:
    """Record the daemon's token in the index that matched the files, and attach it
    read-only again; where it cannot be written now (another process reads it), it is not."""
    duckdb = _engine.duckdb()

    with contextlib.suppress(IndexBusy, duckdb.Error):
        con = db.attach(read_only=False)
        con.execute("BEGIN TRANSACTION")
        try:
            record_watched(con, token)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return db.attach(read_only=True)


def _kept_facts(db: Attached) -> list[tuple[str, bytes]]:
    """The facts of the store about to be rebuilt, where they can still be read: a new
    format of the index, or a damaged snapshot, need not cost the checks' facts."""
    duckdb = _engine.duckdb()

    if db.path is None or _store.kind(db.path) != "file":
        return []
    try:
        return _store.all_facts(db.attach(read_only=True))
    except duckdb.Error:
        return []
    finally:
        with contextlib.suppress(duckdb.Error):
            db.close()


def _diff(
    stored: StoredSnapshot, snap: _snapshot.Snapshot, digests: tuple[str, str]
) -> Changes | None:
    """Files that are new, changed or gone since the stored snapshot (None: unreadable)."""
    # The same folders: the stored names need not be parsed.
    before = stored.snapshot(snap.names if stored.digests[0] == digests[0] else None)
    if before is None:
        return None
    read, removed, added = snap.diff(before)
    return Changes(read=read, removed=removed, added=added)
