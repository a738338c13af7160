"""The snapshot of the files the query index holds: the stamp of every spec, manifest and
dvc.lock of the model and dataset folders.

Paths are POSIX and relative to the registry root: `models/NAME/spec.yaml`,
`datasets/NAME/manifest.json`, `models/NAME/dvc.lock`. Comparing a snapshot with the one the
index last matched tells which files to read again; `read_text` reads a file as the snapshot
saw it. At 10,000 models listing the folders and stat-ing their 30,000 files in Python takes
tens of milliseconds, a small part of a refresh.

A file's stamp is git's stat data: size, mtime, ctime and inode (`stamp`). Size and mtime
alone miss a file replaced by another of the same size with the old mtime kept (`cp -p`,
`rsync -a`, `tar -x`): the ctime is set by the system on every write, rename and `utime`,
and cannot be set back, and a file put in place by rename has another inode. A file whose
mtime or ctime lies within RACY_NS of the moment it is read may still change unseen (the
"racy git" rule, `racy`): it is read again until it is older. This is the one stamp rule of
the store: `_checkcache` stamps model folders with it too.

Why every file is stat-ed on every refresh (and what was measured instead). A folder's
mtime changes when an entry is added, removed or renamed in it, never when a file in it is
written in place: `echo x >> models/a/spec.yaml` leaves `models/a/` and `models/` as they
were. Nor can the ctime of a file be inferred from anything but a call on that file (or its
inode, through a hard link elsewhere). So a check that stats only the folders whose mtime
moved misses in-place edits, and one that trusts git's index trusts stat data git itself
refreshes by stat-ing every file (or by an fsmonitor daemon, which needs a process that runs
all the time and is not assumed here). Without such a daemon, one stat per watched file is
the least a correct check does; what is cheap is everything else: the walk stats by name
relative to an open folder (no path building, no `pathlib`), appends the four numbers in
one call, and finds an interrupted build switch (`commits.COMMITTING`) with one `lstat` per
folder in the same pass instead of a second walk. At 10,000 models on the 2-core reference
machine the walk is ~45 ms, against ~110 ms for the walk plus the separate settle pass it
replaces.
"""

from __future__ import annotations

import json
import os
import stat as _stat
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stemma.registry.errors import ParseError, StemmaError
from stemma.registry.rules.commits import COMMITTING
from stemma.registry.rules.layout import KINDS, LOCK_FILE, MANIFEST_FILE, SPEC_FILE
from stemma.registry.store.files import MAX_TEXT_BYTES, confined, decode_text, read_text_file

SPEC = SPEC_FILE
MANIFEST = MANIFEST_FILE
LOCK = LOCK_FILE  # what DVC recorded of the folder's stage (the status rule's lock case)
FILES = (SPEC, MANIFEST, LOCK)  # the files of a folder, in snapshot order
MISSING = -1  # the size of a file that is not there (its other numbers too)
RACY = -2  # the size recorded for a file read too soon after it changed: read it again
# A file modified this recently may change again within the file system's timestamp
# granularity without its size or mtime changing; it is re-read until it is older (the
# "racy git" rule), so the index never keeps a stale copy of it.
RACY_NS = 2_000_000_000
# The numbers of a file in a snapshot: size, mtime_ns, ctime_ns and inode (see `stamp`).
PER_FILE = 4
PER_FOLDER = PER_FILE * len(FILES)
# Inodes are unsigned 64-bit numbers, snapshot numbers signed: the top bit is dropped.
_INODE_MASK = (1 << 63) - 1

Stamp = tuple[int, ...]


def stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """The numbers a file is compared by: size, mtime, ctime (nanoseconds) and inode."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino & _INODE_MASK


def changed_ns(numbers: Stamp) -> int:
    """When the file of a `stamp` last changed: the later of its mtime and ctime."""
    return max(numbers[1], numbers[2])


@dataclass
class Snapshot:
    """The stamp of the spec, the manifest and the dvc.lock in every model and dataset folder.

    `names[kind]` lists the folders in directory order. `numbers` holds a slot per file of
    FILES per folder (models first, then datasets, each in that order), each slot the
    PER_FILE numbers of a `stamp`, all MISSING where there is no such file. The index stores the
    snapshot it last matched (`pack`): equal digests mean nothing changed; with the same
    folders, comparing two byte strings finds the changed files; only added or removed
    folders need a match by name.
    """

    names: dict[str, list[str]]
    numbers: array[int]
    # The names as the index stores them (JSON) and their digest, kept once made: the names
    # of a snapshot do not change.
    names_json: str | None = field(default=None, compare=False, repr=False)
    names_digest: str | None = field(default=None, compare=False, repr=False)
    # Folders ("models/NAME") that hold an interrupted build switch (`commits.COMMITTING`,
    # a folder): the caller finishes them and takes the snapshot again.
    pending: list[str] = field(default_factory=list, compare=False, repr=False)

    def size(self, slot: int) -> int:
        """The size of the file in `slot` (MISSING, or RACY in a stored snapshot)."""
        return int(self.numbers[PER_FILE * slot])

    def files(self) -> Iterator[tuple[str, Stamp]]:
        """(path, stamp) of every file there is."""
        numbers, at = self.numbers, 0
        for kind in KINDS:
            for name in self.names.get(kind, ()):
                for fname in FILES:
                    if numbers[at] != MISSING:
                        yield f"{kind}/{name}/{fname}", tuple(numbers[at : at + PER_FILE])
                    at += PER_FILE

    def paths(self) -> list[str]:
        """The path of every file there is, in `files` order (what a new index reads: no
        stamps made, a third of the cost of `files` at 10,000 models)."""
        sizes, at, out = self.numbers[::PER_FILE], 0, []
        for kind in KINDS:
            for name in self.names.get(kind, ()):
                for fname in FILES:
                    if sizes[at] != MISSING:
                        out.append(f"{kind}/{name}/{fname}")
                    at += 1
        return out

    def by_path(self) -> dict[str, Stamp]:
        """path -> stamp of every file there is, built anew on each call."""
        return dict(self.files())

    def slots(self, paths: Iterable[str]) -> dict[str, int]:
        """The slot of each of `paths` (which must be files of a listed folder)."""
        offsets, at = {}, 0
        for kind in KINDS:
            offsets[kind] = at
            at += len(FILES) * len(self.names.get(kind, ()))
        wanted: dict[str, list[str]] = {}
        for path in paths:
            wanted.setdefault(path.split("/", 1)[0], []).append(path)
        out: dict[str, int] = {}
        for kind, mine in wanted.items():
            names = self.names[kind]
            # A few paths: search the list; many: index it once.
            where = {n: i for i, n in enumerate(names)} if len(mine) > 8 else None
            for path in mine:
                _kind, name, fname = path.split("/")
                i = where[name] if where is not None else names.index(name)
                out[path] = offsets[kind] + len(FILES) * i + FILES.index(fname)
        return out

    def with_sizes(self, sizes: dict[str, int]) -> Snapshot:
        """A copy in which the files of `sizes` have those sizes: RACY (the rest of the
        stamp is kept), or MISSING (all of it, as a snapshot records a missing file)."""
        numbers = array("q", self.numbers)
        for path, slot in self.slots(sizes).items():
            numbers[PER_FILE * slot] = sizes[path]
            if sizes[path] == MISSING:
                numbers[PER_FILE * slot : PER_FILE * (slot + 1)] = array("q", [MISSING] * PER_FILE)
        return Snapshot(self.names, numbers, self.names_json, self.names_digest)

    def digests(self) -> tuple[str, str]:
        """Digests of the folder names and of the numbers: equal digests, equal snapshots."""
        import hashlib

        if self.names_digest is None:
            listing = hashlib.sha256()
            for kind in KINDS:  # names hold no NUL; the counts tell where each kind ends
                names = self.names.get(kind, [])
                joined = "\0".join(names)
                listing.update(f"{kind}\0{len(names)}\0{joined}\0".encode())
            self.names_digest = listing.hexdigest()
        return self.names_digest, hashlib.sha256(self.numbers).hexdigest()

    def pack(self) -> tuple[str, str, str, bytes]:
        """What the index stores: the two digests, the folder names and the numbers."""
        if self.names_json is None:  # JSON: names may hold any character but "/" and NUL
            listed = [self.names.get(kind, []) for kind in KINDS]
            self.names_json = json.dumps(listed, ensure_ascii=False)
        return (*self.digests(), self.names_json, self.numbers.tobytes())

    @classmethod
    def unpack(
        cls,
        names_json: str,
        numbers: bytes | memoryview,
        names: dict[str, list[str]] | None = None,
    ) -> Snapshot:
        """The snapshot `pack` stored (with `names`, when given, for what `names_json` holds,
        which is then not parsed)."""
        values: array[int] = array("q")
        values.frombytes(numbers)
        if names is None:
            names = dict(zip(KINDS, json.loads(names_json), strict=True))
        return cls(names, values, names_json)

    def diff(self, before: Snapshot) -> tuple[list[str], list[str], int]:
        """(files new or changed since `before`, files gone, how many of the first are new)."""
        if before.names is self.names:  # the same folders: what `before` made of them holds
            self.names_json = self.names_json or before.names_json
            self.names_digest = self.names_digest or before.names_digest
        read: list[str] = []
        removed: list[str] = []
        added = 0
        mine, old, at_mine, at_old = self.numbers, before.numbers, 0, 0
        for kind in KINDS:
            names, old_names = self.names.get(kind, []), before.names.get(kind, [])
            pairs: list[tuple[int | None, int | None]]
            if names == old_names:  # the common case: compare the numbers as bytes
                count = PER_FOLDER * len(names)
                pairs = [(i, i) for i in _differing(mine, at_mine, old, at_old, count)]
            else:  # folders added or removed: match them by name
                where = {name: i for i, name in enumerate(old_names)}
                pairs = [(i, where.pop(name, None)) for i, name in enumerate(names)]
                pairs += [(None, i) for i in where.values()]
            for i, j in pairs:
                name = names[i] if i is not None else old_names[j or 0]
                for f, fname in enumerate(FILES):
                    new = _numbers(mine, at_mine, i, f)
                    was = _numbers(old, at_old, j, f)
                    if new == was:
                        continue
                    path = f"{kind}/{name}/{fname}"
                    if new[0] != MISSING:
                        read.append(path)
                        added += was[0] == MISSING
                    elif was[0] != MISSING:
                        removed.append(path)
            at_mine += PER_FOLDER * len(names)
            at_old += PER_FOLDER * len(old_names)
        return read, removed, added

    def stamps(self, paths: Iterable[str]) -> dict[str, Stamp]:
        """path -> stamp for `paths`."""
        numbers = self.numbers
        return {
            p: tuple(numbers[PER_FILE * s : PER_FILE * (s + 1)])
            for p, s in self.slots(paths).items()
        }


_GONE: Stamp = (MISSING,) * PER_FILE


def _numbers(numbers: array[int], base: int, i: int | None, f: int) -> Stamp:
    """The stamp of file `f` of folder `i` of a kind starting at `base` (MISSING if none)."""
    if i is None:
        return _GONE
    at = base + PER_FOLDER * i + PER_FILE * f
    return tuple(numbers[at : at + PER_FILE])


def _differing(mine: array[int], at: int, old: array[int], old_at: int, count: int) -> list[int]:
    """Folders whose numbers differ (`count` numbers from `at` and `old_at`), comparing
    blocks as bytes, and folders only where a block differs."""
    a = memoryview(mine)[at : at + count].tobytes()  # bytes compare with memcmp
    b = memoryview(old)[old_at : old_at + count].tobytes()
    out: list[int] = []
    width = 8 * PER_FOLDER  # bytes per folder
    block = width * 2048
    for lo in range(0, len(a) if a != b else 0, block):
        if a[lo : lo + block] != b[lo : lo + block]:
            for x in range(lo, min(lo + block, len(a)), width):
                if a[x : x + width] != b[x : x + width]:
                    out.append(x // width)
    return out


def snapshot(root: Path, prefix: str = "") -> Snapshot:
    """Stat every models/*/{spec.yaml,manifest.json,dvc.lock} and datasets/*/... under `root`.
    `prefix` is the registry root relative to the repository (for messages)."""
    out = Snapshot({}, array("q"))
    for kind in KINDS:
        try:
            folder = _Folder(root, kind, prefix)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            names = folder.names()
            folder.check_names(names)
            out.pending += _stat_into(out.numbers, folder, names)
        finally:
            folder.close()
        out.names[kind] = names
    return out


class _Folder:
    """An open folder whose files are stat-ed by relative path: shorter lookups, a third
    faster than absolute paths (by path where the platform cannot)."""

    def __init__(self, root: Path, kind: str, prefix: str = "") -> None:
        self.kind, self.path, self.prefix = kind, f"{root}/{kind}", prefix
        self.fd = -1
        if os.path.islink(self.path):
            confined(self.path, root, display(prefix, kind))
        if os.stat in os.supports_dir_fd and os.scandir in os.supports_fd:
            self.fd = os.open(self.path, os.O_RDONLY)
        elif not os.path.isdir(self.path):
            raise NotADirectoryError(self.path)

    def names(self) -> list[str]:
        """Sub-folders, in directory order, hidden ones left out."""
        try:
            with os.scandir(self.fd if self.fd >= 0 else self.path) as entries:
                return [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
        except OSError as exc:
            where = display(self.prefix, self.kind)
            raise ParseError(where, f"cannot read: {exc.strerror}") from None

    def check_names(self, names: list[str]) -> None:
        """Raise the located error of a name that is not UTF-8 (the index holds text)."""
        if all(map(str.isascii, names)):
            return
        for name in names:
            try:
                name.encode()
            except UnicodeEncodeError:
                where = display(self.prefix, f"{self.kind}/{name}")
                raise ParseError(where, "the folder name is not valid UTF-8") from None

    def close(self) -> None:
        """Close the descriptor."""
        if self.fd >= 0:
            os.close(self.fd)


def _stat_into(numbers: array[int], folder: _Folder, names: list[str]) -> list[str]:
    """Append the stamp of each file of FILES in each of `names` (MISSING for none);
    the folders among them that hold an interrupted switch (`COMMITTING`)."""
    stat, extend, fd, mask = os.stat, numbers.extend, folder.fd, _INODE_MASK
    base = "" if fd >= 0 else folder.path + "/"
    dir_fd = fd if fd >= 0 else None
    pending: list[str] = []
    for name in names:
        at = f"{base}{name}/"
        for fname in FILES:
            try:
                st = stat(at + fname, dir_fd=dir_fd)
            except (FileNotFoundError, NotADirectoryError):
                extend(_GONE)
                continue
            except OSError as exc:  # a looping link, a file this user may not read, ...
                if fname == LOCK:  # DVC's to report: a lock that cannot be read is none
                    extend(_GONE)
                    continue
                path = display(folder.prefix, f"{folder.kind}/{name}/{fname}")
                raise ParseError(path, f"cannot read: {exc.strerror}") from None
            # `stamp`, inlined: this loop runs for every file of the registry.
            extend((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino & mask))
        try:  # `commits.pending`, in this pass: one lstat, almost always of nothing
            mode = stat(at + COMMITTING, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            continue
        if _stat.S_ISDIR(mode):
            pending.append(f"{folder.kind}/{name}")
    return pending


def racy(changed: int, now_ns: int, window: int | None = None) -> bool:
    """True when a file that changed at `changed` (`changed_ns`) is too recent to trust for
    change detection at `now_ns`: within `window` (RACY_NS unless given)."""
    return now_ns - changed < (RACY_NS if window is None else window)


def read_text(root: Path | str, path: str, size: int, prefix: str = "") -> str | None:
    """A file's UTF-8 text, or None when it vanished since the snapshot (`size` is what the
    snapshot saw; `prefix`, the registry root in the repository, is for messages). The
    snapshot's stat is what the index records: a file changed later differs at the next
    snapshot and is read again. Files are read as `files.read_text_file` reads them:
    bounded, regular, inside the registry root."""
    return read_text_file(f"{root}/{path}", display(prefix, path), root=root)


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = (
    os.O_RDONLY
    | os.O_NONBLOCK  # a named pipe opens at once instead of waiting for a writer
    | os.O_CLOEXEC
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NOCTTY", 0)
)


def read_texts(
    root: Path | str, paths: list[str], prefix: str = "", lenient: str | None = None
) -> list[str | None]:
    """`read_text` of each of `paths` (files of model and dataset folders), in one pass.

    The plain case (no link anywhere from the kind's folder down, a regular file within the
    size bound) is read relative to open folders, each opened without following a link:
    a fifth of the cost of `read_text`'s checks, which must hold for any path; a file
    such a folder does not hold is None, as `read_text` has it. Anything else (a link, a
    pipe, a file too large, an error) is handed to `read_text`, which refuses or reads it
    as it always does. A file named `lenient` that it refuses reads as "" instead of
    raising (a dvc.lock is DVC's to report)."""
    out: list[str | None] = []
    fds: dict[str, int] = {}  # "models" and "models/NAME": open folder, or -1 (not plain)
    try:
        for path in paths:
            kind, name, fname = path.split("/")
            data: bytes | None = None
            folder = _open_folder(fds, root, kind, name)
            if folder >= 0:
                data = _read_plain(folder, fname, MAX_TEXT_BYTES)
                if data is _ABSENT:  # no such file in a folder reached without a link
                    out.append(None)
                    continue
            try:
                if data is None:  # not the plain case: the careful reader decides
                    out.append(read_text(root, path, -1, prefix))
                    continue
                # `decode_text`, its message path made only for a file it refuses: a BOM
                # of UTF-16 is no UTF-8, and a NUL byte is a NUL character.
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    text = "\x00"
                out.append(text if "\x00" not in text else decode_text(data, display(prefix, path)))
            except StemmaError:
                if fname != lenient:
                    raise
                out.append("")
    finally:
        for fd in fds.values():
            if fd >= 0:
                os.close(fd)
    return out


def _open_folder(fds: dict[str, int], root: Path | str, kind: str, name: str) -> int:
    """The descriptor of `kind/name`, opened without following a link (-1 where it cannot
    be: a link, missing, not a folder)."""
    key = f"{kind}/{name}"
    if key in fds:
        return fds[key]
    if kind not in fds:
        try:
            fds[kind] = os.open(f"{root}/{kind}", _DIR_FLAGS)
        except OSError:
            fds[kind] = -1
    for old in [k for k in fds if "/" in k]:  # paths come folder by folder: keep one open
        old_fd = fds.pop(old)
        if old_fd >= 0:
            os.close(old_fd)
    fd = -1
    if fds[kind] >= 0:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=fds[kind])
        except OSError:
            fd = -1
    fds[key] = fd
    return fd


_ABSENT = b"\x00absent"  # `_read_plain`: no such file (compared by identity)


def _read_plain(folder: int, fname: str, limit: int) -> bytes | None:
    """The bytes of the regular file `fname` of the open `folder` (not a link, at most
    `limit` bytes), `_ABSENT` when the folder has no such entry, or None for anything
    else."""
    try:
        fd = os.open(fname, _FILE_FLAGS, dir_fd=folder)
    except FileNotFoundError:
        return _ABSENT
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not _stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        # One read of one byte more than the stat saw: a file as large as it was comes
        # whole and short, and only a short read (a file that shrank, or a read the system
        # cut) asks for the rest, up to the end of the file.
        want = info.st_size + 1
        data = os.read(fd, want)
        if len(data) < info.st_size:
            parts = [data]
            size = len(data)
            while chunk := os.read(fd, want - size):
                parts.append(chunk)
                size += len(chunk)
            data = b"".join(parts)
        if len(data) > info.st_size:
            return None  # it grew while being read: the careful reader bounds it
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


def display(prefix: str, path: str) -> str:
    """`path` as the repository sees it (the registry root may be a sub-folder)."""
    return path if prefix in ("", ".") else f"{prefix}/{path}"


def now_ns() -> int:
    """The wall clock in nanoseconds (the same clock file mtimes use)."""
    return time.time_ns()
