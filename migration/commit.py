"""Switch a build's outputs into its folder as one unit: all of them or none.

A build's outputs (weights, manifest, metrics, curve, a dataset's data) live at fixed paths
that DVC and git track, so they cannot be replaced by one rename. Two alternatives:

- write the manifest last and have every reader check it against the weights: a reader then
  detects a torn build, but the previous outputs are already gone (new weights, old manifest);
- stage every output in a folder inside the output folder and commit with one rename of that
  folder: the previous outputs stay whole until the commit point, and after it the staged
  set is complete, so an interrupted switch can always be finished.

This module does the second (and keeps the manifest last while switching, so the first
alternative's readers still see a torn switch). The steps:

1. `recover`: remove a leftover staging folder (a killed build that never committed) and finish
   a leftover commit folder (a build killed while switching).
2. Write each output that differs from the file in place into ``.stemma-staging/``, fsync it.
3. Rename ``.stemma-staging`` to ``.stemma-commit``: the commit point.
4. Move each file into place (``os.replace``), the manifest last, then remove the folder.

A kill before step 3 leaves every previous output as it was; a kill in step 4 leaves a complete
``.stemma-commit`` that the next build of that folder switches in before it does anything
else. A build that fails before step 2 (bad input, NaN after training) writes nothing. Files
whose bytes equal the new ones are never rewritten, so an identical rebuild changes nothing.
The two folder names are git-ignored (`stemma init`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TypeVar

from stemma.registry.rules.commits import COMMITTING, LAST, STAGING, finish, fsync_dir, pending
from stemma.registry.rules.commits import order as _order

__all__ = ["COMMITTING", "LAST", "STAGING", "Stage", "commit", "pending", "recover"]

T = TypeVar("T")
COMPARE = 8 << 20  # bytes compared at a time when a streamed output meets the file in place


def _same(path: Path, blob: bytes) -> bool:
    """True when `path` is a plain file holding exactly `blob`."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size != len(blob):
            return False
        return path.read_bytes() == blob
    except OSError:
        return False


def _same_file(path: Path, staged: Path) -> bool:
    """True when `path` is a plain file with exactly the bytes of `staged` (compared in
    chunks: a streamed output may be larger than memory)."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        if path.stat().st_size != staged.stat().st_size:
            return False
        with path.open("rb") as a, staged.open("rb") as b:
            while chunk := a.read(COMPARE):
                if chunk != b.read(COMPARE):
                    return False
        return True
    except OSError:
        return False


def _create(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)  # umask applies
    return os.fdopen(fd, "wb")


class Stage:
    """A build's staging folder, opened before outputs too large to hold are streamed in.

    `write` streams one output into the staging folder; `commit(folder, files, stage)` then
    adds the small outputs and commits them all. Leaving the `with` block by an exception
    removes the folder: a failed build writes nothing."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        recover(folder)
        self.folder = folder
        self.path = folder / STAGING
        self.path.mkdir()
        self.names: list[str] = []

    def write(self, name: str, writer: Callable[[IO[bytes]], T]) -> T:
        """Stream one output: `writer` writes it to the file handle it is given."""
        with _create(self.path / name) as fh:
            result = writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        self.names.append(name)
        return result

    def discard(self) -> None:
        """Remove the staging folder and everything streamed into it."""
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self.discard()


def recover(folder: Path) -> bool:
    """Finish or discard an interrupted commit in `folder`; True when one was finished.
    Only a build does this: a staging folder may be a live build's (readers only finish a
    commit, `stemma.registry.rules.commits.settle`)."""
    staging = folder / STAGING
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging)
    elif staging.exists() or staging.is_symlink():
        staging.unlink()
    return finish(folder)


def commit(folder: Path, files: Mapping[str, bytes], stage: Stage | None = None) -> list[str]:
    """Make `files` (relative name -> bytes), and the outputs streamed into `stage`, the
    folder's outputs in one commit.

    Returns the names written; files already holding the same bytes are left untouched
    (their times too), and with nothing changed nothing is written at all.
    """
    if stage is None:
        folder.mkdir(parents=True, exist_ok=True)
        recover(folder)
    staging = folder / STAGING
    streamed = []
    for name in stage.names if stage is not None else ():
        if _same_file(folder / name, staging / name):
            (staging / name).unlink()
        else:
            streamed.append(name)
    changed = {n: b for n, b in files.items() if not _same(folder / n, b)}
    if not changed and not streamed:
        if stage is not None:
            stage.discard()
        return []
    staging.mkdir(exist_ok=stage is not None)
    try:
        for name in _order(list(changed)):
            with _create(staging / name) as fh:
                fh.write(changed[name])
                fh.flush()
                os.fsync(fh.fileno())
        for sub in {staging, *((staging / n).parent for n in [*changed, *streamed])}:
            fsync_dir(sub)
        os.rename(staging, folder / COMMITTING)  # the commit point
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(folder)
    finish(folder)
    return _order([*changed, *streamed])
