"""The derived store: `.stemma/` beside the registry, where the caches live.

Everything there is derived from the registry's files, and anything may have been put in
its place: a link out of the repository, a named pipe, a device, a folder, a huge or foreign
file. A cache entry is used only when `.stemma` is a real folder (not a link) and the entry
a regular file (not a link) of bounded size; anything else is a miss, never followed, opened
or read. Entries are opened relative to the folder's own descriptor with O_NOFOLLOW, so no
link is followed between the check and the read. A write replaces the entry atomically (a
damaged one with it) or is skipped: a read command answers without the cache when the store
cannot be written (a read-only checkout, a full disk).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from stemma.registry.rules.layout import STATE_DIR
from stemma.registry.store.files import write_atomic

STORE = STATE_DIR
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
    if found == "other" and not _HELD:
        with contextlib.suppress(OSError):
            os.unlink(path)
        found = kind(path)
    return found in ("missing", "file")


# Depth of `held()` blocks: inside one, caches are read but never written.
_HELD: list[None] = []


@contextlib.contextmanager
def held() -> Iterator[None]:
    """No cache is written inside the block (reads still hit): the ranks of a distributed
    build other than 0 read the registry as rank 0 does and write nothing."""
    _HELD.append(None)
    try:
        yield
    finally:
        _HELD.pop()


def write(path: Path, data: bytes | str) -> bool:
    """Replace the cache file `path` atomically, making its folder (`.stemma`) when missing;
    False, with nothing written, when the store cannot hold it (not a real folder, a folder
    in the file's place, a read-only or full disk) or inside `held()`."""
    if _HELD:
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
