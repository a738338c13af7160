"""Finding, stating and reading the spec and manifest files that the query index holds.

Paths are POSIX and relative to the registry root: `models/NAME/spec.yaml`,
`datasets/NAME/manifest.json`. Manifests are read as text (DuckDB parses the JSON); specs
are parsed here (YAML) and handed over as canonical JSON, the same text `files.digest` hashes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType, ModuleType
from typing import TYPE_CHECKING, Any

from .errors import ParseError, SchemaError, StemmaError

if TYPE_CHECKING:
    import threading

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
# Below this many specs a process pool costs more than it saves.
POOL_MIN = 4000
# Below this many folders of one kind a second process to stat files costs more than it saves.
SPLIT_MIN = 10_000
# The native listing and stat loop (`_statfolders`): ... until its import is tried, None where
# it is not built (set it to None to list and stat in Python).
_native: ModuleType | EllipsisType | None = ...


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


def snapshot(root: Path) -> Snapshot:
    """Stat every models/*/{spec.yaml,manifest.json} and datasets/*/... under `root`."""
    return PendingSnapshot(root).result()


class PendingSnapshot:
    """A snapshot under way: the files are stat-ed while the caller opens the index, and
    `result()` collects them. Where the native loop (`_statfolders`) is built, a helper
    thread lists the folders and stats their files, with the GIL released; elsewhere the
    folders are listed here and, on large registries, two child processes per kind stat
    the files. `prefix` is the registry root relative to the repository (for messages)."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        self._done: Snapshot | None = None
        self._failed: BaseException | None = None
        folders: list[tuple[str, _Folder]] = []
        for kind in KINDS:
            try:
                folders.append((kind, _Folder(root, kind, prefix)))
            except (FileNotFoundError, NotADirectoryError):
                continue
        # per kind: (kind, folder, names, children as (lo, hi, pid, pipe)); names None until
        # the helper thread listed them
        self._kinds: list[tuple[str, _Folder, list[str] | None, list[tuple[int, int, int, int]]]]
        self._kinds = []
        self._native = _native_loop() if all(fd.fd >= 0 for _, fd in folders) else None
        # kind -> (names, numbers, first failed folder) from the helper thread
        self._found: dict[str, tuple[list[str], bytes, int]] = {}
        self._thread: threading.Thread | None = None
        self._thread_failed: BaseException | None = None
        if self._native is not None:
            import threading

            self._kinds = [(kind, fd, None, []) for kind, fd in folders]
            self._thread = threading.Thread(target=self._list_and_stat, daemon=True)
            try:
                self._thread.start()
            except RuntimeError:  # no thread to be had: `result()` does it
                self._thread = None
            return
        for kind, fd in folders:
            names = fd.names()
            children: list[tuple[int, int, int, int]] = []
            if len(names) >= SPLIT_MIN and _can_fork():
                half = len(names) // 2
                for lo, hi in ((0, half), (half, len(names))):
                    child = _fork_stat(fd, names[lo:hi])
                    if child is not None:
                        children.append((lo, hi, *child))
            self._kinds.append((kind, fd, names, children))

    def _list_and_stat(self) -> None:
        """List and stat every kind with the native loop (on the helper thread)."""
        native, threads = self._native, _usable_cpus()
        assert native is not None
        try:
            for kind, fd, _names, _children in self._kinds:
                names = fd.names(native)
                self._found[kind] = (names, *native.stat_folders(fd.fd, names, FILES, threads))
        except BaseException as exc:
            self._thread_failed = exc

    def _join(self) -> None:
        """Wait for the helper thread until the system has let it go: processes are forked
        only where no other thread is left (`_can_fork`)."""
        thread = self._thread
        if thread is None:
            return
        thread.join()
        self._thread = None
        task, deadline = f"/proc/self/task/{thread.native_id}", time.monotonic() + 1
        while os.path.exists(task) and time.monotonic() < deadline:
            time.sleep(0)  # the thread has finished its Python code and is exiting

    def result(self) -> Snapshot:
        """The snapshot (waits for the helper thread or the children the first time)."""
        if self._failed is not None:
            raise self._failed
        if self._done is not None:
            return self._done
        out = Snapshot({}, array("q"))
        try:
            self._join()
            if self._thread_failed is not None:
                raise self._thread_failed
            if self._native is not None and len(self._found) < len(self._kinds):
                self._list_and_stat()  # no helper thread could be started
            while self._kinds:
                kind, fd, names, children = self._kinds[0]
                if names is None:
                    names = self._native_into(out.numbers, kind, fd)
                else:
                    done = 0
                    while children:
                        lo, hi, pid, pipe = children[0]
                        _stat_into(out.numbers, fd, names[done:lo])
                        children.pop(0)  # `_collect` reaps it, whatever happens
                        _collect(out.numbers, fd, names[lo:hi], pid, pipe)
                        done = hi
                    _stat_into(out.numbers, fd, names[done:])
                fd.check_names(names)
                out.names[kind] = names
                self._kinds.pop(0)
                fd.close()
        except BaseException as exc:
            self._failed = exc
            self.close()
            raise
        self._done = out
        return out

    def _native_into(self, numbers: array[int], kind: str, fd: _Folder) -> list[str]:
        """Append what the native loop found for `kind`; the folder names."""
        names, data, failed = self._found[kind]
        if failed >= 0:
            _stat_into(array("q"), fd, names[failed : failed + 1])  # raises the located error
            _stat_into(numbers, fd, names)  # fixed since: stat them all again
        else:
            numbers.frombytes(data)
        return names

    def close(self) -> None:
        """Stop and reap children whose result is not wanted (after an error), and wait for
        the helper thread (which cannot be stopped: it stats for a fraction of a second)."""
        import signal

        self._join()
        kinds, self._kinds = self._kinds, []
        for _kind, fd, _names, children in kinds:
            for _lo, _hi, pid, pipe in children:
                with contextlib.suppress(OSError):
                    os.close(pipe)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            with contextlib.suppress(OSError):
                fd.close()


def _native_loop() -> ModuleType | None:
    """The native listing and stat loop, `_statfolders`, or None where it is not built (the
    import is tried once; tests set `_native` to None to use the Python path)."""
    global _native
    if _native is ...:
        try:
            from . import _statfolders
        except ImportError:
            _native = None
        else:
            _native = _statfolders
    return _native


def _usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Folder:
    """An open folder whose files are stat-ed by relative path: shorter lookups, a third
    faster than absolute paths (by path where the platform cannot)."""

    def __init__(self, root: Path, kind: str, prefix: str = "") -> None:
        self.kind, self.path, self.prefix = kind, f"{root}/{kind}", prefix
        self.fd = -1
        if os.path.islink(self.path):
            from .files import confined

            confined(self.path, root, _display(prefix, kind))
        if os.stat in os.supports_dir_fd and os.scandir in os.supports_fd:
            self.fd = os.open(self.path, os.O_RDONLY)
        elif not os.path.isdir(self.path):
            raise NotADirectoryError(self.path)

    def names(self, native: ModuleType | None = None) -> list[str]:
        """Sub-folders, in directory order, hidden ones left out (listed by the `native`
        loop when given)."""
        try:
            if native is not None:
                return list(native.list_folders(self.fd))
            with os.scandir(self.fd if self.fd >= 0 else self.path) as entries:
                return [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
        except OSError as exc:
            where = _display(self.prefix, self.kind)
            raise ParseError(where, f"cannot read: {exc.strerror}") from None

    def check_names(self, names: list[str]) -> None:
        """Raise the located error of a name that is not UTF-8 (the index holds text)."""
        if all(map(str.isascii, names)):
            return
        for name in names:
            try:
                name.encode()
            except UnicodeEncodeError:
                where = _display(self.prefix, f"{self.kind}/{name}")
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
                path = _display(folder.prefix, f"{folder.kind}/{name}/{fname}")
                raise ParseError(path, f"cannot read: {exc.strerror}") from None
            append(st.st_size)
            append(st.st_mtime_ns)


def _fork_stat(fd: _Folder, names: list[str]) -> tuple[int, int] | None:
    """Start a child that stats `names` and sends the numbers down a pipe; (pid, pipe)."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid:
        os.close(write_end)
        return pid, read_end
    code = 1
    try:
        os.close(read_end)
        numbers: array[int] = array("q")
        _stat_into(numbers, fd, names)
        view = memoryview(numbers.tobytes())
        while view:
            view = view[os.write(write_end, view) :]
        code = 0
    finally:
        os._exit(code)


def _collect(numbers: array[int], fd: _Folder, names: list[str], pid: int, pipe: int) -> None:
    """Append what the child of `_fork_stat` found (or stat `names` here if it failed)."""
    with os.fdopen(pipe, "rb") as stream:
        data = stream.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or len(data) != 32 * len(names):
        _stat_into(numbers, fd, names)
    else:
        numbers.frombytes(data)


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

    return read_text_file(f"{root}/{path}", _display(prefix, path), root=root)


def parse_spec(path: str, text: str) -> dict[str, Any]:
    """A spec's YAML as a mapping (the fast subset reader first, PyYAML for the rest)."""
    from . import _fastyaml

    doc: Any = _fastyaml.load(text)
    if doc is None:
        doc = _yaml_mapping(path, text)
    return dict(doc)


def _yaml_mapping(path: str, text: str) -> dict[str, Any]:
    from .yamlio import load_yaml_text

    doc = load_yaml_text(text, path)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SchemaError(path, "expected a mapping at the top level", pointer="/", line=1)
    return doc


def spec_json(display: str, text: str) -> str:
    """A spec's compact, key-sorted JSON (what `files.digest` hashes); located errors for
    files that are not YAML mappings of plain data."""
    from . import _fastyaml

    compact = _fastyaml.canonical(text)
    if compact is not None:
        return compact
    doc = _yaml_mapping(display, text)
    try:
        return json.dumps(
            doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError):
        raise _schema_error(display, doc, text) from None


def _schema_error(display: str, doc: dict[str, Any], text: str) -> StemmaError:
    """The schema's own located error for a spec the index cannot take, else a plain one."""
    from .records import DATASET_SPEC, MODEL_SPEC, validate_document

    schema = DATASET_SPEC if "datasets/" in f"/{display}" else MODEL_SPEC
    validate_document(doc, schema, display, text)  # raises, with pointer and line
    return SchemaError(display, "cannot index this spec: a value is not plain data")


# (path, canonical JSON, digest, source, relation, train, eval, family, description)
SpecRow = tuple[Any, ...]
SPEC_COLUMNS = (
    "path",
    "spec",
    "digest",
    "source",
    "relation",
    "train",
    "eval",
    "family",
    "description",
)


class _Unindexable(Exception):
    """A spec whose fields the index needs are missing or of the wrong type."""


def spec_row(path: str, compact: str, display: str, text: str) -> SpecRow:
    """The fields the index stores for one spec, picked in Python: the reference for the SQL
    that picks them in bulk, used for the specs that SQL flags. Raises located errors."""
    import hashlib

    doc = json.loads(compact)
    try:
        fields = _fields(path, doc)
    except _Unindexable:
        raise _schema_error(display, doc, text) from None
    return (path, compact, "sha256:" + hashlib.sha256(compact.encode()).hexdigest(), *fields)


def _fields(path: str, doc: dict[str, Any]) -> tuple[str | None, ...]:
    description = _opt_str(doc.get("description"))
    tags = doc.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise _Unindexable
    source = relation = train = eval_ = family = None
    if path.startswith("models/"):
        src, data, arch = doc.get("source"), doc.get("data"), doc.get("architecture")
        if src:
            if not isinstance(src, dict):
                raise _Unindexable
            source = _req_str(src.get("model"))
            relation = _req_str(src.get("relation", "finetune"))
        if not isinstance(data, dict):
            raise _Unindexable
        train = _req_str(data.get("train"))
        eval_ = _req_str(data.get("eval", train))
        if arch is not None:
            if not isinstance(arch, dict):
                raise _Unindexable
            family = _opt_str(arch.get("family"))
    else:
        source = _req_str(doc.get("source"))
    return (source, relation, train, eval_, family, description)


def _req_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Unindexable
    return value


def _opt_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _Unindexable
    return value


def _read_specs(
    root: str, prefix: str, paths: Sequence[str], sizes: Sequence[int]
) -> list[str | None] | str:
    """Canonical JSON of each spec (None for a file that vanished); on the first bad file,
    its path instead (the caller re-reads it for the error)."""
    out: list[str | None] = []
    try:
        for path, size in zip(paths, sizes, strict=True):
            text = read_text(root, path, size, prefix)
            out.append(None if text is None else spec_json(_display(prefix, path), text))
    except StemmaError:
        # Errors cross the process boundary as plain data: located errors do not pickle.
        return path
    return out


def _display(prefix: str, path: str) -> str:
    return path if prefix in ("", ".") else f"{prefix}/{path}"


def spec_workers() -> int:
    """Worker processes for specs: every core but the one that indexes manifests."""
    return min((os.cpu_count() or 1) - 1, 4)


class SpecReader:
    """Reads specs into canonical JSON, in worker processes when there are many (turning
    YAML into JSON is the slow part of indexing).

    Work starts at construction, in parts, so the caller indexes manifests meanwhile and
    takes each part as it is done (`ready`), then the rest (`rest`). `prefix` is the
    registry root relative to the repository (for messages).
    """

    def __init__(self, root: Path, prefix: str, paths: Sequence[str], sizes: Sequence[int]) -> None:
        self.root, self.prefix, self.paths, self.sizes = root, prefix, paths, sizes
        self._pool: Any = None
        self.workers = spec_workers() if len(paths) >= POOL_MIN and _can_fork() else 0
        if not self.workers:
            self._parts: list[tuple[int, int, Any]] = [(0, len(paths), None)]
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork: the workers inherit the imported modules and start in milliseconds. The
        # caller creates this before opening DuckDB, so no engine threads are forked.
        self._pool = ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("fork")
        )
        step = -(-len(paths) // (4 * self.workers))
        self._parts = [
            (
                lo,
                lo + step,
                self._pool.submit(_read_specs, str(root), prefix, *self._part(lo, lo + step)),
            )
            for lo in range(0, len(paths), step)
        ]

    def _part(self, lo: int, hi: int) -> tuple[Sequence[str], Sequence[int]]:
        return self.paths[lo:hi], self.sizes[lo:hi]

    def ready(self) -> Iterator[tuple[list[str], list[str | None]]]:
        """(paths, canonical JSON or None where the file vanished) of each part done so
        far, in order, without waiting."""
        while self._parts and self._parts[0][2] is not None and self._parts[0][2].done():
            yield self._take()

    def rest(self) -> Iterator[tuple[list[str], list[str | None]]]:
        """The parts not taken yet, in order, waiting for each; raises the located error of
        the first bad spec."""
        try:
            while self._parts:
                yield self._take()
        finally:
            self.close()

    def _take(self) -> tuple[list[str], list[str | None]]:
        lo, hi, future = self._parts.pop(0)
        texts = future.result() if future is not None else None
        # A spec a worker could not read is read again here: it may have been fixed
        # meanwhile, and if not, the error is raised with its location.
        return list(self.paths[lo:hi]), texts if isinstance(texts, list) else self._read(lo, hi)

    def _read(self, lo: int, hi: int) -> list[str | None]:
        """Read specs lo:hi in this process, raising the located error of a bad one."""
        part = _read_specs(str(self.root), self.prefix, *self._part(lo, hi))
        if isinstance(part, str):
            display = _display(self.prefix, part)
            text = read_text(self.root, part, 1 << 16, self.prefix)
            if text is not None:
                spec_json(display, text)  # raises the located error
            raise StemmaError(f"{display} changed while it was being indexed; run it again")
        return part

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _can_fork() -> bool:
    """Whether forking is safe: from a process with no other thread, DuckDB's engine threads
    included (which `threading` cannot see, but Linux lists)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False  # elsewhere, do without worker processes rather than risk a deadlock


def now_ns() -> int:
    """The wall clock in nanoseconds (the same clock file mtimes use)."""
    return time.time_ns()
