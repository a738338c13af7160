"""Queries of a kept-open registry handle: a monitor of the files and a copy of the index.

A handle (a `Registry` object) that asks a second query starts watching: the monitor's
watches are placed (`_monitor`), THEN the usual full check brings the index in step with the
files, and the index as checked is copied into memory, where the handle's later queries
run. While the monitor stays quiet nothing the index reads has changed, so a query costs
its SQL alone: no stat of 20,000 files, no attach of the index file, no lock held on it
between queries (other processes refresh the shared index as usual). Any doubt (an event,
a lost event, the registry's folders replaced, a query with other limits or with history)
goes the usual way: the full check, then a new copy. The watches stay through an event they
could follow (`Monitor.changed`: what appeared is watched), so that check is made under them
as before; a lost event, a replaced folder or a link removes them, and they are placed anew.
Where no monitor can run, every query keeps the full check.

The copy holds `models` as a table rather than the view's join: the same rows and types,
computed once per copy instead of on every query.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stemma.registry.rules.layout import KINDS
from stemma.registry.store import _snapshot
from stemma.registry.store._monitor import Monitor
from stemma.registry.store.index import index_path
from stemma.registry.store.tree import WorkTree

if TYPE_CHECKING:
    import duckdb
    from stemma.registry.store.handle import Registry


@dataclass
class _Watch:
    """What one handle keeps between queries."""

    queries: int = 0
    monitor: Monitor | None = None
    con: duckdb.DuckDBPyConnection | None = None
    identity: tuple[tuple[int, ...], ...] = ()  # see `_identity`
    memory_limit: str = ""
    # Held while a query runs on the copy or a check makes it: one DuckDB connection serves
    # one thread at a time; another thread of the handle checks the files its own way.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def drop(self, watches: bool = True) -> None:
        """Forget the copy, and remove the watches (unless `watches` is False)."""
        con, self.con = self.con, None
        if con is not None:
            with contextlib.suppress(Exception):
                con.close()
        monitor, self.monitor = self.monitor, (None if watches else self.monitor)
        if watches and monitor is not None:
            monitor.close()


_WATCHES: weakref.WeakKeyDictionary[Registry, _Watch] = weakref.WeakKeyDictionary()


def _identity(reg: Registry) -> tuple[tuple[int, ...], ...]:
    """Which folders the root and its kinds are (one that was replaced is not watched), and
    the stamp of the shared index and its log: an index another process wrote or damaged
    is checked (and repaired) the usual way."""
    shared = index_path(reg)
    out: list[tuple[int, ...]] = []
    for path in (reg.root, *(reg.root / kind for kind in KINDS)):
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            out.append((-1, -1))
            continue
        out.append((st.st_dev, st.st_ino))
    for path in (shared, Path(f"{shared}.wal")):
        try:
            out.append(_snapshot.stamp(os.stat(path, follow_symlinks=False)))
        except OSError:
            out.append((-1,))
    return tuple(out)


def acquire(reg: Registry, memory_limit: str) -> tuple[duckdb.DuckDBPyConnection | None, bool]:
    """(the handle's copy of the index, False) when nothing changed since it was made: the
    caller runs its query and calls `done`. (None, True) while another thread of the handle
    holds it (that caller checks the files without touching the copy); (None, False) when
    there is no usable copy (the caller checks the files, with `prepare` and `keep`)."""
    watch = _WATCHES.get(reg)
    if watch is None or watch.con is None or watch.monitor is None:
        return None, False
    if not watch.lock.acquire(blocking=False):
        return None, True
    # Events the watches could follow keep them: the next check is made under them. A lost
    # event, a folder replaced or a link removes them (`Monitor.changed`).
    changed = watch.monitor.changed() if watch.memory_limit == memory_limit else True
    if changed is False and _identity(reg) == watch.identity:
        return watch.con, False
    watch.drop(watches=changed is None)
    watch.lock.release()
    return None, False


def done(reg: Registry) -> None:
    """The query on the copy `acquire` gave is over."""
    _WATCHES[reg].lock.release()


def prepare(reg: Registry) -> bool:
    """Before a full check: start watching when this handle queried before; True when the
    copy made after the check is to be kept: the caller then calls `keep` or `abandon`."""
    if not isinstance(reg.tree, WorkTree):
        return False  # a revision from git: queries refuse it anyway
    watch = _WATCHES.get(reg)
    if watch is None:
        watch = _WATCHES.setdefault(reg, _Watch())
        weakref.finalize(reg, watch.drop)
    if not watch.lock.acquire(blocking=False):
        return False  # another thread of the handle is using or making the copy
    watch.queries += 1
    watch.drop(watches=False)
    if watch.queries >= 2:
        if watch.monitor is None:
            watch.monitor = Monitor.start(reg.root)
        if watch.monitor is not None:
            return True
    watch.lock.release()
    return False


def keep(reg: Registry, con: duckdb.DuckDBPyConnection, memory_limit: str) -> None:
    """Keep `con` (a copy of the index as checked after `prepare`, locked down with
    `memory_limit`) for the handle's next queries."""
    watch = _WATCHES[reg]
    watch.con, watch.memory_limit = con, memory_limit
    # After the check: the folders as watched (a swap since the watches were placed is an
    # event), the index as this check left it.
    watch.identity = _identity(reg)
    watch.lock.release()


def abandon(reg: Registry) -> None:
    """The check after `prepare` failed: no copy, no watches."""
    watch = _WATCHES[reg]
    watch.drop()
    watch.lock.release()


def release(reg: Registry) -> None:
    """Stop watching for this handle (also done when the handle is collected)."""
    watch = _WATCHES.pop(reg, None)
    if watch is not None:
        with watch.lock:
            watch.drop()
