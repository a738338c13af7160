"""File boundary helpers: bounded reads, hashes and atomic writes (canonical JSON and content
ids come from `rules.contentid`, re-exported here for the writers)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stemma.registry.errors import ParseError, PathEscape, UnsafeFile
from stemma.registry.rules.contentid import canonical_json as canonical_json
from stemma.registry.rules.contentid import content_id as content_id
from stemma.registry.rules.contentid import digest as digest
from stemma.registry.rules.pointer import pointer as json_pointer

CHUNK = 1 << 20
# Specs, manifests and settings are a few kilobytes (a manifest of a large network a few
# megabytes): a file past this is a mistake or an attack, and is refused before it is read.
MAX_TEXT_BYTES = 16 << 20
# Nesting deeper than this is no spec or manifest (and recursion in parsers and validators
# would fail first).
MAX_DEPTH = 64
# Values in one YAML document: aliases make a small file expand into many (a spec holds a
# few dozen).
MAX_VALUES = 100_000
# Integers past 64 bits cannot be indexed, compared or trained with.
MAX_INT = (1 << 63) - 1

_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
    stat.S_IFSOCK: "a socket",
}


def file_kind(mode: int) -> str:
    """What a file of `st_mode` `mode` is, in words ("a named pipe", "a device", ...)."""
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFREG:
        return "a regular file"
    if kind == stat.S_IFLNK:
        return "a symbolic link"
    return _KINDS.get(kind, "not a regular file")


def file_hashes(path: Path, root: Path | None = None, display: str = "") -> dict[str, Any]:
    """md5 (as DVC records it), sha256 and size of a file, read once.

    With `root`, a path that resolves outside it (a weights file linked out of the
    repository) is refused before it is opened; DVC's own cache links stay inside."""
    name = display or str(path)
    if root is not None:
        confined(path, root, name)
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UnsafeFile(name, "is not a regular file")
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return {"md5": md5.hexdigest(), "sha256": "sha256:" + sha.hexdigest(), "bytes": size}


def write_atomic(path: Path, data: bytes | str, sync: bool = True) -> None:
    """Write `data` to a temp file in the same folder, fsync (unless `sync` is false: a
    cache that is checked when read), then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = _write_temp(path, raw, sync)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_temp(path: Path, raw: bytes, sync: bool = True) -> str:
    """A temp file beside `path` holding `raw`, with the mode `path` has or would get."""
    import tempfile  # imported where used: most commands write nothing

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp makes the file private to its owner
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _mode_for(path: Path) -> int:
    """The permissions of the file `path` replaces, or those a new file gets (umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)  # read it by setting it; put back at once
        os.umask(umask)
        return 0o666 & ~umask


def write_json(path: Path, obj: Any) -> None:
    """Write canonical JSON atomically."""
    write_atomic(path, canonical_json(obj))


def read_json(path: Path, display: str | None = None, root: Path | None = None) -> Any:
    """Read a JSON file stemma wrote or parses (bounded, regular, UTF-8, JSON values only,
    inside `root` when given), raising a located error naming the file on anything else."""
    name = display or str(path)
    text = read_text_file(path, name, root=root)
    if text is None:
        raise ParseError(name, "the file does not exist")
    return parse_json_text(text, name)


def confined(path: str | Path, root: str | Path, display: str) -> Path:
    """`path` with every link resolved, or `PathEscape` when that lies outside `root` (the
    target is never opened: only links are read to find where it lies)."""
    real = Path(os.path.realpath(path))
    base = Path(os.path.realpath(root))
    if real != base and base not in real.parents:
        raise PathEscape(
            display,
            "resolves outside the registry root (through '..' or a symbolic link);"
            " keep specs, manifests and data inside the repository",
        )
    return real


def read_bytes_file(
    path: str | Path, display: str, root: str | Path | None = None, limit: int = MAX_TEXT_BYTES
) -> bytes | None:
    """The bytes of a regular file of at most `limit` bytes, or None when it does not exist.

    Opened without blocking and checked before reading: a folder, a pipe, a device or a
    looping link is refused with a located error instead of hanging or reading forever.
    With `root`, a path that resolves outside it is refused before it is opened."""
    if root is not None and (os.path.islink(path) or _links_above(path, root)):
        confined(path, root, display)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:  # a NUL character in the path
        raise UnsafeFile(display, "the path holds a NUL character") from None
    except OSError as exc:
        raise UnsafeFile(display, f"cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        kind = stat.S_IFMT(info.st_mode)
        if kind != stat.S_IFREG:
            raise UnsafeFile(display, f"is {file_kind(kind)}, not a regular file")
        if info.st_size > limit:
            raise UnsafeFile(display, f"is {info.st_size} bytes, more than the {limit} allowed")
        parts, size = [], 0
        while chunk := os.read(fd, min(CHUNK, limit + 1 - size)):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew while being read
                raise UnsafeFile(display, f"is more than the {limit} bytes allowed")
        return b"".join(parts)
    except OSError as exc:
        raise UnsafeFile(display, f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _links_above(path: str | Path, root: str | Path) -> bool:
    """True when a folder between `root` and `path` is a symbolic link."""
    folder, base = os.path.dirname(os.fspath(path)), os.fspath(root)
    if folder == base:
        return False
    parts = folder[len(base) + 1 :].split(os.sep)
    if not folder.startswith(base + os.sep) or {"", ".", ".."} & set(parts):
        rel = os.path.relpath(folder, base)  # not plainly below root: let normpath decide
        if rel == ".":
            return False
        if rel.startswith(".."):
            return True
        parts = rel.split(os.sep)
    folder = base
    for part in parts:
        folder = os.path.join(folder, part)
        if os.path.islink(folder):
            return True
    return False


def decode_text(data: bytes, display: str) -> str:
    """UTF-8 text of a file, or a located error saying what the bytes are instead."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(data) > 1 and b"\x00" in data[:2]):
        raise UnsafeFile(display, "is UTF-16 text; save it as UTF-8")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UnsafeFile(
            display,
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8",
            line=line,
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise UnsafeFile(display, "holds a NUL character", line=line)
    return text


def read_text_file(
    path: str | Path, display: str, root: str | Path | None = None, limit: int = MAX_TEXT_BYTES
) -> str | None:
    """`read_bytes_file` decoded as UTF-8 text (None when the file does not exist)."""
    data = read_bytes_file(path, display, root, limit)
    return None if data is None else decode_text(data, display)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_text(text: str, display: str) -> Any:
    """JSON text as plain values: NaN and infinities, integers past 64 bits and nesting past
    MAX_DEPTH are refused with a located error, like bad syntax."""
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ParseError(display, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    except RecursionError:
        raise ParseError(display, f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # an integer of more than 4300 digits, NaN, Infinity
        reason = "a number is too large" if "digits" in str(exc) else str(exc)
        raise ParseError(display, reason) from None
    if "\\u" in text:  # only an escape can put a NUL or a lone surrogate in JSON text
        return plain_value(doc, display, budget=None)
    return doc


def plain_value(
    doc: Any, display: str, string_keys: bool = False, budget: int | None = MAX_VALUES
) -> Any:
    """`doc` checked to be what JSON can hold (mappings with text keys, lists, text, finite
    numbers within 64 bits, booleans, null), at most MAX_DEPTH deep and MAX_VALUES values
    (aliases counted each time they are used); a located error names the first other value.
    With `string_keys`, integer keys (YAML reads `0:` as one) become text."""
    left = [budget if budget is not None else -1]

    def walk(node: Any, where: list[str | int], depth: int, open_: set[int]) -> Any:
        left[0] -= 1
        if left[0] == -1:
            raise _value_error(display, where, f"more than {budget} values (aliases?)")
        if node is None or isinstance(node, bool):
            return node
        if isinstance(node, str):
            if "\x00" in node:
                raise _value_error(display, where, "text holds a NUL character")
            if not node.isascii():
                try:
                    node.encode()
                except UnicodeEncodeError:
                    raise _value_error(display, where, "text holds a lone surrogate") from None
            return node
        if isinstance(node, int):
            if not -MAX_INT - 1 <= node <= MAX_INT:
                raise _value_error(display, where, "integer out of range (more than 64 bits)")
            return node
        if isinstance(node, float):
            if node != node or node in (float("inf"), float("-inf")):
                raise _value_error(display, where, f"{node} is not a JSON number")
            return node
        if depth >= MAX_DEPTH:
            raise _value_error(display, where, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, (dict, list)):
            if id(node) in open_:
                raise _value_error(display, where, "a recursive alias (a value inside itself)")
            open_.add(id(node))
            try:
                if isinstance(node, list):
                    return [walk(v, [*where, i], depth + 1, open_) for i, v in enumerate(node)]
                out: dict[str, Any] = {}
                for key, value in node.items():
                    if string_keys and isinstance(key, int) and not isinstance(key, bool):
                        key = str(key)
                        if key in node or key in out:
                            raise _value_error(display, where, f"key {key} is given twice")
                    if not isinstance(key, str):
                        raise _value_error(display, where, f"key {key!r:.40} is not text; quote it")
                    out[key] = walk(value, [*where, key], depth + 1, open_)
                return out
            finally:
                open_.discard(id(node))
        raise _value_error(display, where, _unplain(node))

    return walk(doc, [], 0, set())


def _unplain(node: Any) -> str:
    import datetime

    if isinstance(node, (datetime.date, datetime.datetime)):
        return "a date or time (JSON has none); quote it to keep it as text"
    if isinstance(node, (set, frozenset)):
        return "a set (!!set); write a list"
    if isinstance(node, (bytes, bytearray)):
        return "binary data (!!binary); JSON has none"
    return f"a {type(node).__name__} value, which JSON cannot hold"


def _value_error(display: str, where: list[str | int], reason: str) -> ParseError:
    return ParseError(display, reason, pointer=json_pointer(where))


# -- outputs: where an export may write -------------------------------------------------------

# Folders no export writes into, wherever they are: git's and DVC's own state.
_TOOL_FOLDERS = (".git", ".dvc")
# The registry's record folders (under its root): only builds write there.
RECORD_FOLDERS = ("models", "datasets")
OVERWRITE_HINT = "pass --overwrite to replace it"


@dataclass(frozen=True)
class Outputs:
    """Where an export (a card, events, Parquet views, a report page) may write, and the
    writing itself.

    An export writes regular files, each through a temp file renamed into place in the same
    folder. It refuses a target that is a symbolic link (never written through), or anything
    but a regular file (a pipe, a device, a socket, a folder); an existing file unless
    `overwrite`; inside the repository `root`, any existing file (the registry's own, with or
    without `overwrite`) and any new one under `protected`; and anything under `.git` or
    `.dvc`. Nothing is written until every target of an export has passed."""

    root: Path | None = None
    protected: tuple[Path, ...] = ()
    overwrite: bool = False

    @classmethod
    def for_registry(cls, repo_root: Path, root: Path, overwrite: bool = False) -> Outputs:
        """The rules for a registry: its repository, and its `models/` and `datasets/`."""
        base = Path(os.path.realpath(root))
        protected = tuple(base / name for name in RECORD_FOLDERS)
        return cls(Path(os.path.realpath(repo_root)), protected, overwrite)

    def file(self, path: str | Path) -> Path:
        """The real path an export may write `path` at (its folder's links resolved), or
        `UnsafeFile` naming it and saying why not. Reads no file; creates nothing."""
        display = os.fspath(path)
        real = self._locate(display)
        try:
            info = os.lstat(real)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise UnsafeFile(display, f"cannot write: {exc.strerror}") from None
        if info is not None:
            kind = stat.S_IFMT(info.st_mode)
            if kind == stat.S_IFLNK:
                raise UnsafeFile(display, "is a symbolic link; an export never writes through one")
            if kind != stat.S_IFREG:
                raise UnsafeFile(
                    display, f"is {file_kind(kind)}, not a regular file; refusing to write it"
                )
            if self._inside(real, self.root):
                raise UnsafeFile(
                    display,
                    "is a file of the registry; exports never replace one: write to a new"
                    " file, or outside the registry",
                )
            if not self.overwrite:
                raise UnsafeFile(display, f"exists; {OVERWRITE_HINT}")
        return real

    def folder(self, path: str | Path) -> Path:
        """The real folder an export may write its files into (created by `write`), or
        `UnsafeFile`: a symbolic link, something that is not a folder, or a folder of git,
        DVC or the registry's records."""
        display = os.fspath(path)
        real = self._locate(display)
        try:
            info = os.lstat(real)
        except FileNotFoundError:
            return real
        except OSError as exc:
            raise UnsafeFile(display, f"cannot write: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            raise UnsafeFile(display, "is a symbolic link; an export never writes through one")
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeFile(display, f"is {file_kind(info.st_mode)}, not a folder")
        return real

    def write(self, path: str | Path, data: bytes | str) -> Path:
        """Check `path` (`file`), then write `data` there atomically; the real path."""
        real = self.file(path)
        raw = data.encode() if isinstance(data, str) else data
        self.mkdir(real.parent, os.fspath(path))
        self.publish(_write_temp(real, raw), real, os.fspath(path))
        return real

    def publish(self, tmp: str | Path, real: Path, display: str = "") -> None:
        """Move the finished temp file `tmp` (in `real`'s folder, or a scratch folder inside
        it) to `real`, a path `file` returned: a new file is linked in, so a file that
        appeared meanwhile is not replaced."""
        display = display or str(real)
        try:
            if not os.path.lexists(real):
                try:
                    os.link(tmp, real)
                except FileExistsError:
                    raise UnsafeFile(display, f"appeared while writing; {OVERWRITE_HINT}") from None
                except OSError:  # a file system without hard links: check and rename
                    self.file(real)
                    os.replace(tmp, real)
                return
            self.file(real)  # again: it may have become a link or a pipe meanwhile
            os.replace(tmp, real)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def mkdir(self, folder: Path, display: str) -> None:
        """Create the checked folder `folder` (and its parents) for an export's files."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UnsafeFile(display, "lies under a file, not a folder") from None
        except OSError as exc:
            raise UnsafeFile(display, f"cannot create its folder: {exc.strerror}") from None

    def _locate(self, display: str) -> Path:
        """`display` with its folder's links resolved; refused under git's, DVC's or the
        registry's record folders."""
        if "\x00" in display:
            raise UnsafeFile(display, "the path holds a NUL character")
        given = Path(display).absolute()  # not normalised: '..' after a link means its parent
        if given.name in ("", ".", ".."):
            given = Path(os.path.realpath(given))
        real = Path(os.path.realpath(given.parent)) / given.name
        written = Path(os.path.normpath(given))
        if _within(written, self.root) and not _within(real, self.root):
            raise PathEscape(
                display,
                "resolves outside the registry root through a symbolic link;"
                " exports never follow one out",
            )
        tool = next((part for part in real.parts if part in _TOOL_FOLDERS), None)
        if tool is not None:
            raise UnsafeFile(display, f"lies inside {tool}; exports never write there")
        for folder in self.protected:
            if _within(real, folder):
                rel = folder.name if self.root is None else os.path.relpath(folder, self.root)
                raise UnsafeFile(
                    display,
                    f"lies in the registry's {rel}/ folder, which only builds write;"
                    " export somewhere else",
                )
        return real

    @staticmethod
    def _inside(path: Path, folder: Path | None) -> bool:
        return folder is not None and folder in path.parents


def _within(path: Path, folder: Path | None) -> bool:
    """True when `path` is `folder` or lies below it (both real, absolute paths)."""
    return folder is not None and (path == folder or folder in path.parents)
