"""The derived store: `.stemma/` beside the registry, where the caches live.

Everything there is derived from the registry's files, and anything may have been put in
its place: a link out of the repository, a named pipe, a device, a folder, a huge or foreign
file. A cache entry is used only when `.stemma` is a real folder (not a link) and the entry
a regular file (not a link) of bounded size; anything else is a miss, never followed, opened
or read. Entries are opened relative to the folder's own descriptor with O_NOFOLLOW, so no
link is followed between the check and the read. A write replaces the entry atomically (a
damaged one with it) or is skipped: a read command answers without the cache when the store
cannot be written (a read-only checkout, a full disk).

The store is one DuckDB file, `.stemma/index.duckdb`, and its lock, `.stemma/index.lock`.
It holds the query index (`index`) and, one table each (`raw."fact/NAME"`), every other
derived fact by name: the snapshot the index matches, the schema-valid digests (`_validcache`), the
folder facts and the verdict of the last check (`_checkcache`), the last render of the pipeline
(`pipeline._pipecache`) and this machine's numerics fingerprint. `load` and `save` read and
write a fact; each fact carries its own format and code key (`codekey`) and is checked by its
reader, so a damaged, foreign or unreadable store or fact is a miss. Work files that are not
facts but arrays (cached features, training checkpoints) stay in folders under `.stemma/`.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from stemma.registry.rules.layout import STATE_DIR
from stemma.registry.store import _engine
from stemma.registry.store.files import write_atomic

if TYPE_CHECKING:
    import duckdb

STORE = STATE_DIR
STORE_FILE = "index.duckdb"  # the one store file
LOCK_FILE = "index.lock"  # its lock
# How long a refresh of the index waits for another process's before building a private one.
LOCK_WAIT_S = 5.0
# How long a read or write of a fact waits for the lock before it is a miss (or skipped).
FACT_WAIT_S = 1.0
# The same, once this process waited for the lock in vain (`locked`, `_GAVE_UP`).
FACT_AFTER_BUSY_S = 0.05
# The fact holding the snapshot the index matches (`_ingest`): written with the index.
SNAPSHOT_FACT = "snapshot"
# Each fact is a table of its own: DuckDB rewrites a changed column segment whole at a
# checkpoint, so facts sharing one table would each be rewritten on every change of any (at
# 10,000 models, a one-file refresh spent 0.13 s rewriting the 12 MB of folder facts).
FACT_PREFIX = "fact/"
# Files earlier versions kept beside the index: removed when the store is rebuilt.
LEGACY_FILES = ("index.snapshot", "checked", "valid", "pipeline.json")
# The caches are a few megabytes on 10,000 models: a file past this is damaged, not read.
MAX_BYTES = 256 << 20
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = (
    os.O_RDONLY
    | os.O_NONBLOCK  # a named pipe opens at once instead of waiting for a writer
    | os.O_CLOEXEC
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NOCTTY", 0)
)


def folder(repo_root: Path, create: bool = False) -> Path | None:
    """`.stemma` of the repository when it is a real folder (made first when `create`),
    else None: a link, a file or anything else there leaves the caches unused."""
    path = repo_root / STORE
    if create:
        with contextlib.suppress(OSError):
            os.mkdir(path)
    return path if is_folder(path) else None


def is_folder(path: Path) -> bool:
    """True when `path` is a folder itself, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def kind(path: Path) -> str:
    """What `path` is, without following a link: "missing", "file", "folder" or "other"."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError:  # a name too long, a parent that is a file, no permission: unusable
        return "other"
    if stat.S_ISREG(mode):
        return "file"
    return "folder" if stat.S_ISDIR(mode) else "other"


def read(path: Path, limit: int = MAX_BYTES) -> bytes | None:
    """The bytes of the cache file `path` (in a real folder), or None: missing, a link, not
    a regular file, larger than `limit`, or unreadable."""
    try:
        dir_fd = os.open(path.parent, _DIR_FLAGS)
    except OSError:
        return None
    try:
        fd = os.open(path.name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:  # ELOOP: a link
        return None
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        parts, size = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew while being read
                return None
        return b"".join(parts)
    except OSError:
        return None
    finally:
        os.close(fd)


def clear(path: Path) -> bool:
    """Remove a damaged entry that is not a regular file or a folder (a link is removed, not
    followed); True when `path` is now missing or a regular file."""
    found = kind(path)
    if found == "other" and not _HELD.get():
        with contextlib.suppress(OSError):
            os.unlink(path)
        found = kind(path)
    return found in ("missing", "file")


# Inside a `held()` block: caches are read but never written. A context variable, so the
# block covers the code it wraps and no other thread.
_HELD: contextvars.ContextVar[bool] = contextvars.ContextVar("stemma_held", default=False)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """No cache is written inside the block (reads still hit): the ranks of a distributed
    build other than 0 read the registry as rank 0 does and write nothing."""
    token = _HELD.set(True)
    try:
        yield
    finally:
        _HELD.reset(token)


def write(path: Path, data: bytes | str) -> bool:
    """Replace the cache file `path` atomically, making its folder (`.stemma`) when missing;
    False, with nothing written, when the store cannot hold it (not a real folder, a folder
    in the file's place, a read-only or full disk) or inside `held()`."""
    if _HELD.get():
        return False
    with contextlib.suppress(OSError):
        os.mkdir(path.parent)
    if not is_folder(path.parent):
        return False
    if not clear(path):
        return False
    try:
        write_atomic(path, data, sync=False)  # a cache: checked when read, so no fsync
    except OSError:
        return False
    return True


def store_path(repo_root: Path) -> Path:
    """The store file of the repository at `repo_root`."""
    return repo_root / STORE / STORE_FILE


class StoreBusy(Exception):
    """The store is being written or read by another process (or cannot be locked)."""


class StoreInUse(StoreBusy):
    """Another process has the store file open: DuckDB's own lock on it (one writer, or
    readers), held for that process's query or command."""


class StoreUnusable(Exception):
    """Something that is not the store's own file or folder is in the place of one."""


# The store opened by this process (the index's read-only connection, `index.Index`), by
# path (`_key`), with the thread that uses it. DuckDB's lock on the file belongs to the
# process: a second attach that closes would drop the first one's lock, so facts are read
# through that connection while it is open, and written only once it is closed.
_OPEN: dict[str, tuple[duckdb.DuckDBPyConnection, int]] = {}


def _key(path: Path) -> str:
    """The store file `path` as `_OPEN` knows it: its folder with links and relative parts
    resolved, so a store named another way (a linked or relative repository path: the
    numerics fingerprint's caller passes one) is still found open."""
    return os.path.join(os.path.realpath(path.parent), path.name)


def opened(path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Record that this process holds the store at `path` open through `con`."""
    _OPEN[_key(path)] = (con, threading.get_ident())


def closed(path: Path) -> None:
    """The store at `path` is no longer open in this process."""
    _OPEN.pop(_key(path), None)


def is_open(path: Path) -> bool:
    """True while this process holds the store at `path` open."""
    return _key(path) in _OPEN


def is_held() -> bool:
    """True inside `held()`: nothing under the registry is to be written."""
    return _HELD.get()


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file `path`, made when missing (except inside `held()`,
    which writes nothing: no lock file is then `StoreUnusable`); a link, a pipe or a device
    there is removed first (never followed: a dangling link would make its target). Where
    it cannot be opened for writing (a read-only checkout, another user's registry), it is
    opened for reading: flock needs no write access, and the facts and a matching index are
    still read (a write then fails on the store itself and is skipped)."""
    reading = os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    flags = os.O_RDWR | reading
    if not _HELD.get():
        flags |= os.O_CREAT
    for _attempt in range(2):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:  # a link (ELOOP), a folder, a device, no write access
            fd = -1
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                with contextlib.suppress(OSError):
                    fd = os.open(path, os.O_RDONLY | reading)
        if fd >= 0:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
            os.close(fd)
        if not clear(path):
            break
    raise StoreUnusable(f"{path} is not a regular file")


# Lock files this process waited for in vain, until it next gets one. A command reads and
# writes several facts and opens the index: while another process holds the store (a long
# refresh), each would wait its full bound in turn (`stemma validate` 4 s instead of 0.4,
# `pipeline --check` 10 s instead of 6). After one wait ran out, a fact waits only
# `after_busy_s`: a command waits for a busy store about once. An open of the index still
# waits its full bound (giving up there costs a private index, far more than a fact).
_GAVE_UP: set[Path] = set()


@contextlib.contextmanager
def locked(path: Path, wait_s: float, after_busy_s: float | None = None) -> Iterator[None]:
    """An exclusive lock on the lock file `path`; `StoreBusy` when another process holds it
    longer than `wait_s`, or than `after_busy_s` (when given) once this process's last wait
    for it ran out."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here: DuckDB's own file lock still protects it
        yield
        return
    fd = _open_lock(path)
    try:
        if after_busy_s is not None and path in _GAVE_UP:
            wait_s = min(wait_s, after_busy_s)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    _GAVE_UP.add(path)
                    raise StoreBusy(f"{path} is held by another process") from None
                time.sleep(0.02)
        _GAVE_UP.discard(path)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _attached(path: Path, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection with the store file `path` attached as its default database."""
    engine = _engine.duckdb()
    con = engine.connect(config={"temp_directory": ""})  # a fact never spills
    try:
        mode = " (READ_ONLY)" if read_only else ""
        literal = "'" + str(path).replace("'", "''") + "'"
        try:
            con.execute(f"ATTACH {literal} AS store{mode}")
        except engine.Error as exc:
            if "lock" in str(exc).lower() or type(exc).__name__ == "ResourceInUseException":
                raise StoreInUse(f"{path} is open in another process") from None
            raise
        con.execute("USE store")
        yield con
    finally:
        con.close()


def fact_table(name: str) -> str:
    """The table of the fact `name`, quoted."""
    return 'raw."' + (FACT_PREFIX + name).replace('"', '""') + '"'


def fact_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The name of every fact of the store attached as `con`'s default database."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        " AND schema_name = 'raw' AND starts_with(table_name, ?) ORDER BY 1",
        [FACT_PREFIX],
    ).fetchall()
    return [str(table)[len(FACT_PREFIX) :] for (table,) in rows]


def fact(con: duckdb.DuckDBPyConnection, name: str, limit: int = MAX_BYTES) -> bytes | None:
    """The fact `name` through `con` (the store attached), or None: missing, not bytes, or
    larger than `limit`."""
    if name not in fact_names(con):
        return None
    rows = con.execute(
        f"SELECT body FROM {fact_table(name)} WHERE octet_length(body) <= ?", [limit]
    ).fetchall()
    body = rows[0][0] if len(rows) == 1 else None
    return bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else None


def put_fact(con: duckdb.DuckDBPyConnection, name: str, body: bytes) -> None:
    """Store `body` as the fact `name` through `con`, in the caller's transaction."""
    table = fact_table(name)
    con.execute(f"CREATE TABLE IF NOT EXISTS {table}(body BLOB)")
    con.execute(f"DELETE FROM {table}")
    con.execute(f"INSERT INTO {table} VALUES (?)", [body])


def all_facts(con: duckdb.DuckDBPyConnection) -> list[tuple[str, bytes]]:
    """Every fact but the snapshot (kept across a rebuild of the index)."""
    found = ((name, fact(con, name)) for name in fact_names(con) if name != SNAPSHOT_FACT)
    return [(name, body) for name, body in found if body is not None]


def _through_open(path: Path, name: str, limit: int) -> tuple[bool, bytes | None]:
    """(True, the fact) when this process holds the store at `path` open: read through that
    connection by its own thread, a miss for any other (one DuckDB connection serves one
    thread at a time). (False, None) when the store is not open here."""
    held_here = _OPEN.get(_key(path))
    if held_here is None:
        return False, None
    con, thread = held_here
    return True, (fact(con, name, limit) if thread == threading.get_ident() else None)


def _wal_is_safe(path: Path) -> bool:
    """True when the store's write-ahead log is missing or a regular file. DuckDB opens and
    replays the log of a store it attaches, even read-only: a named pipe there would block
    the open for ever (with the lock held), and a link would be read from outside the
    registry. `open_index` removes such a thing; a read of a fact only misses."""
    return kind(Path(f"{path}.wal")) in ("missing", "file")


def load(repo_root: Path, name: str, limit: int = MAX_BYTES) -> bytes | None:
    """The fact `name` of the repository's store, or None: no store, a damaged or foreign
    one (its log not a regular file included), one held by another process for longer than
    FACT_WAIT_S, no such fact."""
    engine = _engine.duckdb()
    path = store_path(repo_root)
    try:
        through, body = _through_open(path, name, limit)
        if through:
            return body
        if folder(repo_root) is None or kind(path) != "file":
            return None
        with locked(path.parent / LOCK_FILE, FACT_WAIT_S, FACT_AFTER_BUSY_S):
            # Looked at again under the lock: another thread of this process may have
            # opened the index while this one waited, and closing a second attach here
            # would drop that one's lock on the file.
            through, body = _through_open(path, name, limit)
            if through:
                return body
            if kind(path) != "file" or not _wal_is_safe(path):
                return None
            with _attached(path, read_only=True) as con:
                return fact(con, name, limit)
    except (StoreBusy, StoreUnusable, OSError, engine.Error):
        return None


def save(repo_root: Path, name: str, body: bytes | str) -> bool:
    """Store `body` as the fact `name`; False, with nothing written, where the store cannot
    hold it (not a real folder, a read-only or full disk, another process holding it for
    longer than FACT_WAIT_S, this process holding it open for reading) or inside `held()`."""
    if _HELD.get():
        return False
    engine = _engine.duckdb()
    path = store_path(repo_root)
    if is_open(path) or folder(repo_root, create=True) is None:
        return False
    data = body.encode() if isinstance(body, str) else body
    # Another process reading the store (`stemma ls`, a query) holds DuckDB's lock on the
    # file for its run, mostly a fraction of a second: a write that met it is tried again,
    # letting go of our lock in between, until FACT_WAIT_S. Once such a wait ran out, the
    # process's next writes try once (`_GAVE_UP`, by the store's path).
    deadline = time.monotonic() + (0.0 if path in _GAVE_UP else FACT_WAIT_S)
    while True:
        try:
            with locked(path.parent / LOCK_FILE, FACT_WAIT_S, FACT_AFTER_BUSY_S):
                if is_open(path):  # opened by another thread while this one waited (`load`)
                    return False
                if not all(clear(p) for p in (path, Path(f"{path}.wal"))):
                    return False
                with _attached(path, read_only=False) as con:
                    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
                    con.execute("BEGIN TRANSACTION")
                    put_fact(con, name, data)
                    con.execute("COMMIT")
            _GAVE_UP.discard(path)
            return True
        except StoreInUse:
            if time.monotonic() >= deadline:
                _GAVE_UP.add(path)
                return False
            time.sleep(0.05)
        except (StoreBusy, StoreUnusable, OSError, engine.Error):
            return False
