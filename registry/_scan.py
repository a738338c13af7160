"""Finding, stating and reading the spec and manifest files that the query index holds.

Paths are POSIX and relative to the registry root: `models/NAME/spec.yaml`,
`datasets/NAME/manifest.json`. Manifests are read as text (DuckDB parses the JSON); specs
are parsed here (YAML) and handed over as canonical JSON, the same text `files.digest` hashes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ParseError, SchemaError, StemmaError

KINDS = ("models", "datasets")
SPEC = "spec.yaml"
MANIFEST = "manifest.json"
# A file modified this recently may change again within the file system's timestamp
# granularity without its size or mtime changing; it is re-read until it is older (the
# "racy git" rule), so the index never keeps a stale copy of it.
RACY_NS = 2_000_000_000
# Below this many specs a process pool costs more than it saves.
POOL_MIN = 4000


@dataclass
class Snapshot:
    """Size and mtime of every spec and manifest, in directory order.

    The index stores the snapshot it last matched (`pack`): when the next one has the same
    paths in the same order, comparing two byte strings finds the changed files, and nothing
    else is needed when nothing changed; only an added or removed file needs a join.
    """

    paths: list[str]
    sizes: list[int]
    mtimes: list[int]

    @property
    def stats(self) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns)."""
        return dict(zip(self.paths, zip(self.sizes, self.mtimes, strict=True), strict=True))

    def pack(self) -> tuple[str, str, bytes]:
        """Digests of the paths and of the numbers, and the numbers: sizes then mtimes."""
        import hashlib
        from array import array

        numbers = array("q", self.sizes + self.mtimes).tobytes()
        paths = hashlib.sha256("\0".join(self.paths).encode()).hexdigest()
        return paths, hashlib.sha256(numbers).hexdigest(), numbers

    def changed_since(
        self, paths_digest: str, numbers_digest: str, numbers: Callable[[], bytes]
    ) -> list[str] | None:
        """Paths whose size or mtime differ from a packed snapshot of the same paths (whose
        numbers `numbers()` fetches); None when the paths differ (files added or removed)."""
        mine, my_digest, my_numbers = self.pack()
        if mine != paths_digest:
            return None
        if my_digest == numbers_digest:
            return []
        before = numbers()
        n, block = len(self.paths), 4096
        changed: set[int] = set()
        for start in range(0, 2 * n, block):  # compare blocks as bytes, items only where needed
            lo, hi = start * 8, (start + block) * 8
            if my_numbers[lo:hi] != before[lo:hi]:
                for i in range(start, min(start + block, 2 * n)):
                    if my_numbers[i * 8 : i * 8 + 8] != before[i * 8 : i * 8 + 8]:
                        changed.add(i % n)
        return [self.paths[i] for i in sorted(changed)]


def snapshot(root: Path) -> Snapshot:
    """Stat every models/*/{spec.yaml,manifest.json} and datasets/*/... under `root`."""
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    stat = os.stat
    if stat not in os.supports_dir_fd or os.scandir not in os.supports_fd:
        return _snapshot_by_path(root)
    for kind in KINDS:
        try:
            # Paths relative to an open folder: shorter lookups, a third faster than absolute.
            fd = os.open(f"{root}/{kind}", os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            with os.scandir(fd) as entries:
                names = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
            for name in names:
                for fname in (SPEC, MANIFEST):
                    rel = f"{name}/{fname}"
                    try:
                        st = stat(rel, dir_fd=fd)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    paths.append(f"{kind}/{rel}")
                    sizes.append(st.st_size)
                    mtimes.append(st.st_mtime_ns)
        finally:
            os.close(fd)
    return Snapshot(paths, sizes, mtimes)


def _snapshot_by_path(root: Path) -> Snapshot:
    """`snapshot` where stat cannot take a folder descriptor (Windows)."""
    out = Snapshot([], [], [])
    for kind in KINDS:
        base = root / kind
        if not base.is_dir():
            continue
        for entry in os.scandir(base):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            for fname in (SPEC, MANIFEST):
                try:
                    st = os.stat(base / entry.name / fname)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                out.paths.append(f"{kind}/{entry.name}/{fname}")
                out.sizes.append(st.st_size)
                out.mtimes.append(st.st_mtime_ns)
    return out


def racy(mtime_ns: int, now_ns: int) -> bool:
    """True when a file's mtime is too recent to trust for change detection."""
    return now_ns - mtime_ns < RACY_NS


@dataclass(frozen=True)
class FileText:
    """One file read from disk, with the stat taken when it was opened."""

    path: str
    size: int
    mtime_ns: int
    text: str


def read_files(root: Path, paths: Sequence[str], prefix: str = "") -> Iterator[FileText]:
    """Read files as UTF-8 text; a file that vanished since the snapshot is skipped.

    `prefix` (the registry root relative to the repository) is for error messages.
    """
    for path in paths:
        try:
            fd = os.open(f"{root}/{path}", os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            st = os.fstat(fd)
            # One read of the size fstat reported (plus one byte, to notice growth).
            data = os.read(fd, st.st_size + 1)
            if len(data) > st.st_size:
                parts = [data]
                while chunk := os.read(fd, 1 << 16):
                    parts.append(chunk)
                data = b"".join(parts)
        finally:
            os.close(fd)
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise ParseError(_display(prefix, path), f"not UTF-8 text: {exc.reason}") from None
        yield FileText(path, st.st_size, st.st_mtime_ns, text)


def parse_spec(path: str, text: str) -> dict[str, Any]:
    """A spec's YAML as a mapping (the fast subset reader first, PyYAML for the rest)."""
    from . import _fastyaml

    doc: Any = _fastyaml.load(text)
    if doc is None:
        from .yamlio import load_yaml_text

        doc = load_yaml_text(text, path)
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise SchemaError(path, "expected a mapping at the top level", pointer="/", line=1)
    return dict(doc)


# (path, size, mtime_ns, canonical JSON, digest, source, relation, train, eval, family,
#  description); tags are read from the JSON by DuckDB
SpecRow = tuple[Any, ...]
SPEC_COLUMNS = (
    "path",
    "size",
    "mtime_ns",
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


def spec_row(f: FileText, display: str) -> SpecRow:
    """Parse one spec and pick the fields the index stores; bad files raise located errors."""
    doc = parse_spec(display, f.text)
    try:
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return _fields(f, doc, canonical)
    except (TypeError, ValueError, _Unindexable):
        # Rare: let the schema say precisely what is wrong, with its pointer and line.
        from .records import DATASET_SPEC, MODEL_SPEC, validate_document

        schema = MODEL_SPEC if f.path.startswith("models/") else DATASET_SPEC
        validate_document(doc, schema, display, f.text)
        raise SchemaError(display, "cannot index this spec: a value is not plain data") from None


def _fields(f: FileText, doc: dict[str, Any], canonical: str) -> SpecRow:
    import hashlib

    digest = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    description = _opt_str(doc.get("description"))
    tags = doc.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise _Unindexable
    source = relation = train = eval_ = family = None
    if f.path.startswith("models/"):
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
    return (
        f.path,
        f.size,
        f.mtime_ns,
        canonical,
        digest,
        source,
        relation,
        train,
        eval_,
        family,
        description,
    )


def _req_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Unindexable
    return value


def _opt_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _Unindexable
    return value


def _read_specs(root: str, prefix: str, paths: Sequence[str]) -> list[SpecRow] | str:
    """Rows for `paths`; on the first bad file, its path (the caller re-reads it)."""
    rows: list[SpecRow] = []
    for path in paths:
        try:
            for f in read_files(Path(root), [path], prefix):
                rows.append(spec_row(f, _display(prefix, f.path)))
        except StemmaError:
            # Errors cross the process boundary as plain data: located errors do not pickle.
            return path
    return rows


def _display(prefix: str, path: str) -> str:
    return path if prefix in ("", ".") else f"{prefix}/{path}"


class SpecReader:
    """Reads and parses specs, in worker processes when there are many (YAML is the slow part).

    Work starts at construction, so the caller can index manifests meanwhile; `rows()`
    waits for it. `prefix` is the registry root relative to the repository (for messages).
    """

    def __init__(self, root: Path, prefix: str, paths: Sequence[str]) -> None:
        self.root, self.prefix, self.paths = root, prefix, paths
        self._pool: Any = None
        self._futures: list[Any] = []
        workers = min(os.cpu_count() or 1, 4)
        if len(paths) >= POOL_MIN and workers >= 2 and hasattr(os, "fork"):
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            step = -(-len(paths) // workers)
            # fork: the workers inherit the imported modules and start in milliseconds. The
            # caller creates this before opening DuckDB, so no engine threads are forked.
            ctx = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(workers, mp_context=ctx)
            self._futures = [
                self._pool.submit(_read_specs, str(root), prefix, paths[i : i + step])
                for i in range(0, len(paths), step)
            ]

    def rows(self) -> list[SpecRow]:
        """Every spec's row; raises the located error of the first bad spec."""
        chunks: list[list[SpecRow] | str]
        try:
            if self._pool is None:
                chunks = [_read_specs(str(self.root), self.prefix, self.paths)]
            else:
                chunks = [f.result() for f in self._futures]
        finally:
            self.close()
        rows: list[SpecRow] = []
        for chunk in chunks:
            if isinstance(chunk, str):
                for f in read_files(self.root, [chunk], self.prefix):
                    spec_row(f, _display(self.prefix, f.path))  # raises the located error
                continue  # the file changed meanwhile; the next refresh reads it again
            rows.extend(chunk)
        return rows

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def now_ns() -> int:
    """The wall clock in nanoseconds (the same clock file mtimes use)."""
    return time.time_ns()
