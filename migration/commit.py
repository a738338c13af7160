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
from collections.abc import Mapping
from pathlib import Path

from stemma.registry.commits import COMMITTING, LAST, STAGING, finish, pending
from stemma.registry.commits import order as _order

__all__ = ["COMMITTING", "LAST", "STAGING", "commit", "pending", "recover"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same(path: Path, blob: bytes) -> bool:
    """True when `path` is a plain file holding exactly `blob`."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size != len(blob):
            return False
        return path.read_bytes() == blob
    except OSError:
        return False


def recover(folder: Path) -> bool:
    """Finish or discard an interrupted commit in `folder`; True when one was finished.
    Only a build does this: a staging folder may be a live build's (readers only finish a
    commit, `stemma.registry.commits.settle`)."""
    staging = folder / STAGING
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging)
    elif staging.exists() or staging.is_symlink():
        staging.unlink()
    return finish(folder)


def commit(folder: Path, files: Mapping[str, bytes]) -> list[str]:
    """Make `files` (relative name -> bytes) the folder's outputs in one commit.

    Returns the names written; files already holding the same bytes are left untouched
    (their times too), and with nothing changed nothing is written at all.
    """
    folder.mkdir(parents=True, exist_ok=True)
    recover(folder)
    changed = {n: b for n, b in files.items() if not _same(folder / n, b)}
    if not changed:
        return []
    staging = folder / STAGING
    staging.mkdir()
    try:
        for name in _order(list(changed)):
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666
            )  # umask applies
            with os.fdopen(fd, "wb") as fh:
                fh.write(changed[name])
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(staging)
        os.rename(staging, folder / COMMITTING)  # the commit point
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(folder)
    finish(folder)
    return _order(list(changed))
