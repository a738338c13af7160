"""The commit point of a build's outputs, as readers see it: one rule for every command.

A build stages its outputs in ``.stemma-staging/`` inside the output folder and commits by
renaming that folder to ``.stemma-commit/``; it then moves each file into place, the
manifest last (`stemma.migration.commit`). A build killed after the commit point leaves the
new weights beside the old manifest until the switch is finished. Every reader that decides
what is built (the index behind `ls`, `query` and `repro`; `verify`) first finishes such a
switch here, so none of them reads the half-moved folder: the committed set is complete, and
finishing it is what the next build would do first.

Finishing is safe beside a live build switching the same folder: both move files from the
same complete set in the same order, a file already moved by the other is skipped, and the
manifest goes last in each, so whoever moves it has seen every other file in place. A
staging folder (no commit point yet) is never touched here: it may be a live build's, and
the previous outputs are whole while it exists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from stemma.registry.rules.layout import COMMITTING_DIR, KINDS, MANIFEST_FILE, STAGING_DIR

STAGING = STAGING_DIR
COMMITTING = COMMITTING_DIR
LAST = MANIFEST_FILE
"""Switched last: a reader that trusts the manifest sees the old build until the very end."""


def order(names: list[str]) -> list[str]:
    """The order files are switched in: the manifest last."""
    return sorted(names, key=lambda n: (n == LAST, n))


def pending(folder: Path) -> bool:
    """True when an interrupted switch waits in `folder`."""
    done = folder / COMMITTING
    return done.is_dir() and not done.is_symlink()


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames into it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clear_way(folder: Path, target: Path) -> None:
    """Remove what the committed layout replaces by another kind of entry: a file (or link)
    where the new outputs need a folder, a folder where they need a file (sharded weights
    are a folder named like the single file they replace, and the other way round)."""
    parent = target.parent
    if parent != folder and (parent.is_symlink() or (parent.exists() and not parent.is_dir())):
        parent.unlink()
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)


def finish(folder: Path) -> bool:
    """Move a committed folder's files into `folder`, the manifest last; True when there was
    one. A file another process moved first is skipped (see the module's note)."""
    if not pending(folder):
        return False
    done = folder / COMMITTING
    names = [str(p.relative_to(done)) for p in done.rglob("*") if not p.is_dir()]
    for name in order(names):
        target = folder / name
        _clear_way(folder, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(done / name, target)
    fsync_dir(folder)
    shutil.rmtree(done, ignore_errors=True)
    return True


def settle(root: Path) -> list[Path]:
    """Finish every interrupted switch under the registry `root` (its models and datasets
    folders); the folders that still hold one because it could not be finished here (a
    read-only checkout). One stat per folder."""
    left: list[Path] = []
    for kind in KINDS:
        base = root / kind
        try:
            with os.scandir(base) as entries:
                folders = [e.name for e in entries if not e.name.startswith(".")]
        except OSError:
            continue
        for name in folders:
            folder = base / name
            if not os.path.isdir(folder / COMMITTING) or os.path.islink(folder):
                continue
            try:
                finish(folder)
            except OSError:
                left.append(folder)
    return left
