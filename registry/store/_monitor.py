"""A file-system monitor of the files the query index holds (inotify, on Linux).

A kept-open registry handle that queries again and again need not stat every spec and
manifest before each query (`_snapshot`): a monitor that watched them since the last full
check says whether anything may have changed. The monitor answers only "quiet" (no event
since the last look: the files are as the last full check saw them) or "doubt" (any event,
a lost event, a watch it could not place): a doubt means a full check, never a guess.

What is watched, and why each watch is needed:
- `models/` and `datasets/`: folders added, removed or renamed;
- each model and dataset folder: its spec, manifest and dvc.lock (`_snapshot.FILES`) created,
  removed or renamed over (a build's atomic switch), and the interrupted-switch folder
  appearing;
- each of those files itself (its inode): a write through any name, a hard link elsewhere
  included, and a change of its metadata (`touch`, `chmod`, the same-size same-mtime copy,
  whose write is an event whatever the stamp says afterwards).
A link anywhere among them (a folder, a spec or a manifest that is a symbolic link) could
change through a name outside the watched folders: the monitor declines to start, and the
handle keeps the full check. The watches are placed BEFORE the full check they guard, so
a change during that check is an event and the next look doubts.

A long-running watcher (the monitor daemon, `fsmonitor`) asks `changed` instead of `quiet`:
it reads the events and keeps the watches up to date (a folder or file that appears is
watched at once, as the whole set would be by a new start), and gives up only where that
cannot be done: a lost event, a kinds' folder or the root replaced, a link appearing.

The reader is a small ctypes binding of three libc calls (no dependency): where they are
missing (not Linux), the kernel refuses a watch (`fs.inotify.max_user_watches`), or the
registry lies on a file system that others can change without this kernel seeing it (NFS,
SMB, FUSE: only the local file systems of LOCAL_FILE_SYSTEMS qualify), there is no monitor.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stemma.registry.rules.layout import KINDS
from stemma.registry.store._snapshot import FILES

if TYPE_CHECKING:
    import ctypes

# inotify(7) flags.
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_DONT_FOLLOW = 0x02000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
# Every change of a folder's entries and of the folder itself.
_FOLDER_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_DONT_FOLLOW
)
# The registry root: its kinds' folders made, removed or renamed, the root itself moved.
_ROOT_MASK = (
    _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_DONT_FOLLOW
)
_KIND_NAMES = {kind.encode() for kind in KINDS}
_FILE_NAMES = {fname.encode() for fname in FILES}
_APPEARED = _IN_CREATE | _IN_MOVED_TO
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows
# Every change of a file's data or metadata, and its removal.
_FILE_MASK = (
    _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_DONT_FOLLOW
)

_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL | None:
    """libc with the inotify calls, or None where there are none."""
    global _LIBC
    if _LIBC is None:
        import ctypes  # here: `stemma query` in a fresh process never starts a monitor
        import ctypes.util

        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        except (OSError, AttributeError):
            return None
        _LIBC = lib
    return _LIBC


class Monitor:
    """inotify watches on every folder and file a snapshot of `root` holds."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.root_wd = -1
        self.doubt = False  # sticky: once in doubt, the monitor is replaced
        self.kinds: dict[int, bytes] = {}  # watch -> path of a kinds' folder (`models/`)
        self.folders: dict[int, bytes] = {}  # watch -> path of a model or dataset folder

    @classmethod
    def start(cls, root: Path) -> Monitor | None:
        """Watch everything under `root` the index reads; None where no monitor can run
        (no inotify, too many watches, a link among the watched names)."""
        lib = _libc()
        if lib is None or not _local(root):
            return None
        fd = lib.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return None
        monitor = cls(fd)
        try:
            if monitor._watch_all(lib, os.fsencode(root)):
                return monitor
        except OSError:
            pass
        monitor.close()
        return None

    def _watch_all(self, lib: Any, root: bytes) -> bool:
        """Place every watch; False where one cannot be placed or a link is found."""
        add, fd = lib.inotify_add_watch, self.fd
        self.root_wd = add(fd, root, _ROOT_MASK)
        if self.root_wd < 0:
            return False
        for kind in KINDS:
            top = b"%s/%s" % (root, kind.encode())
            if os.path.islink(top):
                return False
            wd = add(fd, top, _FOLDER_MASK)
            if wd < 0:
                if not os.path.lexists(top):
                    continue  # no such folder: the root's watch sees it appear
                return False
            self.kinds[wd] = top
            try:
                entries = os.scandir(top)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    if entry.name.startswith(b".") or not entry.is_dir():
                        continue
                    if entry.is_symlink() or not self._watch_folder(add, entry.path):
                        return False
        return True

    def _watch_folder(self, add: Callable[[int, bytes, int], int], folder: bytes) -> bool:
        """Watch a model or dataset folder and its spec and manifest (no link among them)."""
        wd = add(self.fd, folder, _FOLDER_MASK)
        if wd < 0:
            return False
        self.folders[wd] = folder
        return all(self._watch_file(add, b"%s/%s" % (folder, name)) for name in _FILE_NAMES)

    def _watch_file(self, add: Callable[[int, bytes, int], int], path: bytes) -> bool:
        """Watch a spec, manifest or dvc.lock; False for a link or a watch refused."""
        if add(self.fd, path, _FILE_MASK) < 0:
            # Missing is fine (the folder's watch sees it appear); anything else is not.
            return _errno() == 2 and not os.path.lexists(path)
        return not os.path.islink(path)

    def changed(self) -> bool | None:
        """Read every event queued and keep the watches up to date: False when nothing the
        index reads may have changed, True when it may have (what appeared is watched now),
        None when the watches cannot be kept (a lost event, a kinds' folder or the root
        made, removed or replaced, a link or a watch that cannot be placed): start anew."""
        lib = _libc()
        if self.doubt or lib is None:
            return None
        changed = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            except OSError:
                data = b""
            if not data:
                self.doubt = True
                return None
            for event in _events(data):
                found = self._follow(lib.inotify_add_watch, *event)
                if found is None:
                    self.doubt = True
                    return None
                changed = changed or found

    def _follow(
        self, add: Callable[[int, bytes, int], int], wd: int, mask: int, name: bytes
    ) -> bool | None:
        """What one event means (see `changed`), watching a folder or file it made appear."""
        if mask & _IN_Q_OVERFLOW or wd < 0:
            return None
        if wd == self.root_wd:
            return None if not name or name in _KIND_NAMES else False
        if mask & _IN_IGNORED:
            return True  # a watch the kernel removed: its file or folder is gone
        top = self.kinds.get(wd)
        if top is not None:
            if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF):
                return None
            if mask & _APPEARED and name and not name.startswith(b"."):
                path = b"%s/%s" % (top, name)
                if os.path.islink(path):
                    return None
                if os.path.isdir(path) and not self._watch_folder(add, path):
                    return None
            return True
        folder = self.folders.get(wd)
        appeared = folder is not None and mask & _APPEARED and name in _FILE_NAMES
        if appeared and not self._watch_file(add, b"%s/%s" % (folder, name)):
            return None
        return True  # a file's or folder's own event, or one of an unknown watch

    def quiet(self) -> bool:
        """True when no event came since the watches were placed: nothing the index reads
        changed. Any event, a lost one (queue overflow) included, is a doubt for good."""
        if self.doubt:
            return False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                break
            if not data or any(self._matters(event) for event in _events(data)):
                break
        self.doubt = True
        return False

    def _matters(self, event: tuple[int, int, bytes]) -> bool:
        """False only for an entry of the root other than the kinds' folders (a `.stemma`
        or `dvc.yaml` written there): every other event, an overflow included, matters."""
        wd, _mask, name = event
        return wd != self.root_wd or not name or name in _KIND_NAMES

    def close(self) -> None:
        """Remove every watch."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


# File systems whose every change is made through this kernel, so inotify sees it. On a
# network or FUSE file system another machine (or a daemon) changes files unseen: no monitor.
LOCAL_FILE_SYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "reiserfs", "jfs", "bcachefs"}
)


def _local(root: Path, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """True when `root` lies on a local file system of LOCAL_FILE_SYSTEMS (the mount with
    the longest mount point above it); False where that cannot be told."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
        real = os.path.realpath(root)
    except OSError:
        return False
    best, kind = "", ""
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        point = fields[4].replace("\\040", " ")  # mountinfo escapes spaces
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[fields.index("-") + 1]
    return kind in LOCAL_FILE_SYSTEMS


def _errno() -> int:
    """The errno of the last libc call."""
    import ctypes

    return ctypes.get_errno()


def _events(data: bytes) -> list[tuple[int, int, bytes]]:
    """(watch, mask, name) of each inotify event in `data`."""
    out, at = [], 0
    while at + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, at)
        at += _EVENT.size
        out.append((wd, mask, data[at : at + length].rstrip(b"\0")))
        at += length
    return out
