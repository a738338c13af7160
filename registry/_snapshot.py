"""The snapshot of the files the query index holds: size and mtime of every spec and manifest.

Paths are POSIX and relative to the registry root: `models/NAME/spec.yaml`,
`datasets/NAME/manifest.json`. Comparing a snapshot with the one the index last matched
tells which files to read again; `read_text` reads a file as the snapshot saw it. At 10,000
models listing the folders and stat-ing their 20,000 files in Python takes tens of
milliseconds, a small part of a refresh.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ParseError

KINDS = ("models", "datasets")
SPEC = "spec.yaml"
MANIFEST = "manifest.json"
FILES = (SPEC, MANIFEST)  # the files of a folder, in snapshot order
MISSING = -1  # the size of a file that is not there
RACY = -2  # the size recorded for a file read too soon after it changed: read it again
# A file modified this recently may change again within the file system's timestamp
# granularity without its size or mtime changing; it is re-read until it is older (the
# "racy git" rule), so the index never keeps a stale copy of it.
RACY_NS = 2_000_000_000


@dataclass
class Snapshot:
    """Size and mtime of the spec and the manifest in every model and dataset folder.

    `names[kind]` lists the folders in directory order. `numbers` holds two slots per folder
    (models first, then datasets, each in that order): spec then manifest, each slot a size
    and an mtime, with size MISSING where there is no such file. The index stores the
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

    def size(self, slot: int) -> int:
        """The size of the file in `slot` (MISSING, or RACY in a stored snapshot)."""
        return int(self.numbers[2 * slot])

    def files(self) -> Iterator[tuple[str, int, int]]:
        """(path, size, mtime_ns) of every file there is."""
        numbers, slot = self.numbers, 0
        for kind in KINDS:
            for name in self.names.get(kind, ()):
                for fname in FILES:
                    if numbers[2 * slot] != MISSING:
                        yield f"{kind}/{name}/{fname}", numbers[2 * slot], numbers[2 * slot + 1]
                    slot += 1

    def by_path(self) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) of every file there is, built anew on each call."""
        return {p: (size, mtime) for p, size, mtime in self.files()}

    def slots(self, paths: Iterable[str]) -> dict[str, int]:
        """The slot of each of `paths` (which must be files of a listed folder)."""
        offsets, at = {}, 0
        for kind in KINDS:
            offsets[kind] = at
            at += 2 * len(self.names.get(kind, ()))
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
                out[path] = offsets[kind] + 2 * i + FILES.index(fname)
        return out

    def with_sizes(self, sizes: dict[str, int]) -> Snapshot:
        """A copy in which the files of `sizes` have those sizes: RACY (the mtime is kept),
        or MISSING (the mtime too, as a snapshot records a missing file)."""
        numbers = array("q", self.numbers)
        for path, slot in self.slots(sizes).items():
            numbers[2 * slot] = sizes[path]
            if sizes[path] == MISSING:
                numbers[2 * slot + 1] = MISSING
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
                pairs = [(i, i) for i in _differing(mine, at_mine, old, at_old, 4 * len(names))]
            else:  # folders added or removed: match them by name
                where = {name: i for i, name in enumerate(old_names)}
                pairs = [(i, where.pop(name, None)) for i, name in enumerate(names)]
                pairs += [(None, i) for i in where.values()]
            for i, j in pairs:
                name = names[i] if i is not None else old_names[j or 0]
                for f, fname in enumerate(FILES):
                    new = _pair(mine, at_mine, i, f)
                    was = _pair(old, at_old, j, f)
                    if new == was:
                        continue
                    path = f"{kind}/{name}/{fname}"
                    if new[0] != MISSING:
                        read.append(path)
                        added += was[0] == MISSING
                    elif was[0] != MISSING:
                        removed.append(path)
            at_mine += 4 * len(names)
            at_old += 4 * len(old_names)
        return read, removed, added

    def stamps(self, paths: Iterable[str]) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) for `paths`."""
        numbers = self.numbers
        return {p: (numbers[2 * s], numbers[2 * s + 1]) for p, s in self.slots(paths).items()}


def _pair(numbers: array[int], base: int, i: int | None, f: int) -> tuple[int, int]:
    """(size, mtime) of file `f` of folder `i` of a kind starting at `base` (MISSING if none)."""
    if i is None:
        return MISSING, MISSING
    at = base + 4 * i + 2 * f
    return numbers[at], numbers[at + 1]


def _differing(mine: array[int], at: int, old: array[int], old_at: int, count: int) -> list[int]:
    """Folders whose four numbers differ (`count` numbers from `at` and `old_at`), comparing
    blocks as bytes, and folders only where a block differs."""
    a = memoryview(mine)[at : at + count].tobytes()  # bytes compare with memcmp
    b = memoryview(old)[old_at : old_at + count].tobytes()
    out: list[int] = []
    block = 32 * 2048  # bytes: 2048 folders
    for lo in range(0, len(a) if a != b else 0, block):
        if a[lo : lo + block] != b[lo : lo + block]:
            for x in range(lo, min(lo + block, len(a)), 32):
                if a[x : x + 32] != b[x : x + 32]:
                    out.append(x // 32)
    return out


def snapshot(root: Path, prefix: str = "") -> Snapshot:
    """Stat every models/*/{spec.yaml,manifest.json} and datasets/*/... under `root`.
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
            _stat_into(out.numbers, folder, names)
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
            from .files import confined

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


def _stat_into(numbers: array[int], folder: _Folder, names: list[str]) -> None:
    """Append size and mtime of the spec and manifest of each of `names` (MISSING sizes)."""
    stat, append, fd = os.stat, numbers.append, folder.fd
    base = "" if fd >= 0 else folder.path + "/"
    for name in names:
        for fname in FILES:
            try:
                st = (
                    stat(f"{base}{name}/{fname}", dir_fd=fd)
                    if fd >= 0
                    else stat(f"{base}{name}/{fname}")
                )
            except (FileNotFoundError, NotADirectoryError):
                append(MISSING)
                append(MISSING)
                continue
            except OSError as exc:  # a looping link, a file this user may not read, ...
                path = display(folder.prefix, f"{folder.kind}/{name}/{fname}")
                raise ParseError(path, f"cannot read: {exc.strerror}") from None
            append(st.st_size)
            append(st.st_mtime_ns)


def racy(mtime_ns: int, now_ns: int) -> bool:
    """True when a file's mtime is too recent to trust for change detection."""
    return now_ns - mtime_ns < RACY_NS


def read_text(root: Path | str, path: str, size: int, prefix: str = "") -> str | None:
    """A file's UTF-8 text, or None when it vanished since the snapshot (`size` is what the
    snapshot saw; `prefix`, the registry root in the repository, is for messages). The
    snapshot's stat is what the index records: a file changed later differs at the next
    snapshot and is read again. Files are read as `files.read_text_file` reads them:
    bounded, regular, inside the registry root."""
    from .files import read_text_file

    return read_text_file(f"{root}/{path}", display(prefix, path), root=root)


def display(prefix: str, path: str) -> str:
    """`path` as the repository sees it (the registry root may be a sub-folder)."""
    return path if prefix in ("", ".") else f"{prefix}/{path}"


def now_ns() -> int:
    """The wall clock in nanoseconds (the same clock file mtimes use)."""
    return time.time_ns()
