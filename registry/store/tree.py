"""Read-only views of the repository: the working tree, or any git revision.

A registry reads its files through one of these, so every query, check and graph works the
same on the working tree and on `git` history (audits compare two of them).
"""

from __future__ import annotations

import os
import re
from binascii import unhexlify
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from stemma.registry.errors import GitError, StemmaError, UnsafeFile
from stemma.registry.store.files import MAX_TEXT_BYTES, confined, decode_text, read_text_file


class Tree(Protocol):
    """Files of the repository at one state; paths are POSIX and relative to the repo root."""

    label: str

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when absent."""

    def subdirs(self, path: str) -> list[str]:
        """Sorted names of the immediate sub-folders of `path`."""

    def exists(self, path: str) -> bool:
        """True when the file exists."""


class WorkTree:
    """The files on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = "working tree"

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when absent; a located error for a file that is not a
        bounded regular file of UTF-8 text, or that lies outside the repository."""
        return read_text_file(self.root / path, path, root=self.root)

    def exists(self, path: str) -> bool:
        """True when the file exists."""
        return os.path.isfile(f"{self.root}/{path}")  # no Path: called for every file

    def working(self, paths: list[str]) -> list[str]:
        """Those of `paths` whose text is the working tree's (a reader may read them from
        disk in one pass): all of them."""
        return paths

    def subdirs(self, path: str) -> list[str]:
        """Sorted names of the immediate sub-folders of `path`."""
        folder = self.root / path
        if not folder.is_dir():
            return []
        confined(folder, self.root, path)
        with os.scandir(folder) as entries:  # the entry's type, without a stat where it can
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def prefetch(tree: Any, paths: Iterable[str]) -> None:
    """Read many files of a git revision with one git process (`GitTree.prefetch`), also
    through a registry's view of a sub-folder (which has `inner` and `prefix`); a no-op on
    the working tree. Without it each file read at a revision costs a git process."""
    inner = getattr(tree, "inner", None)
    target = inner if inner is not None else tree
    if not hasattr(target, "prefetch"):
        return
    wanted = list(paths)
    if inner is not None:
        wanted = [str(PurePosixPath(tree.prefix, p)) for p in wanted]
    target.prefetch(wanted)


def git(repo: Path, *args: str, input_: bytes | None = None) -> bytes:
    """Run a git command in `repo` and return stdout; failures raise `GitError`."""
    import subprocess  # imported where used: the working tree needs no command

    proc = subprocess.run(["git", *args], cwd=repo, input=input_, capture_output=True, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {' '.join(args[:3])}: {msg[-1] if msg else 'failed'}")
    return proc.stdout


def _cat_blobs(
    repo: Path, shas: list[str], limit: int | None = None
) -> Iterator[tuple[str, bytes | int]]:
    """(sha, content) of each blob, streamed from one `git cat-file --batch`; the names are
    written by a thread so that neither pipe can fill while the other waits. A blob of more
    than `limit` bytes is (sha, its size): drained from the pipe a piece at a time, never
    held."""
    import subprocess
    import threading

    proc = subprocess.Popen(
        ["git", "cat-file", "--batch"],
        cwd=repo,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def feed() -> None:
        try:
            for start in range(0, len(shas), 512):
                stdin.write("".join(s + "\n" for s in shas[start : start + 512]).encode())
            stdin.close()
        except OSError:  # git stopped early: its exit status says why
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        for sha in shas:
            header = stdout.readline().split()
            if len(header) != 3:
                raise GitError(f"git cat-file: {sha} is missing")
            size = int(header[2])
            if limit is not None and size > limit:
                left = size
                while left > 0 and (piece := stdout.read(min(left, 1 << 20))):
                    left -= len(piece)
                stdout.read(1)
                if left:
                    raise GitError(f"git cat-file: {sha} was cut short")
                yield sha, size
                continue
            data = stdout.read(size)
            stdout.read(1)  # the newline after each blob
            if len(data) != size:
                raise GitError(f"git cat-file: {sha} was cut short")
            yield sha, data
    finally:
        stdout.close()
        writer.join()
        proc.wait()


# One entry of `git ls-tree -r -z`: MODE TYPE ID<TAB>PATH<NUL> (a submodule's commit is the
# only entry that is no blob or tree in a recursive listing).
_LS_TREE = re.compile(rb"[0-7]+ ([a-z]+) ([0-9a-f]+)\t([^\0]*)\0")


class GitTree:
    """The files of one git revision, read with `git ls-tree` and one `git cat-file --batch`."""

    def __init__(self, repo: Path, rev: str, prefix: str = "") -> None:
        self.repo = repo
        self.rev = rev
        self.commit = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode()
        self.commit = self.commit.strip()
        self.label = f"revision {rev}"
        # Without sizes (`-l`): git finds a blob's size by opening it, which at 30,000
        # models cost ~0.3 s of git's CPU per listing; a blob read is refused by the size
        # `cat-file` announces (`prefetch`).
        args = ["ls-tree", "-r", "-z", "--full-tree", self.commit]
        if prefix and prefix != ".":
            args += ["--", prefix]
        # path -> the blob's binary id (`_sha`): a dict of hex ids held 1.5x the memory.
        # The entries are matched in git's output as they stand, not split into a list
        # first.
        self._blobs: dict[str, bytes] = {}
        for match in _LS_TREE.finditer(git(repo, *args)):
            kind, sha, raw = match.groups()
            if kind == b"blob":
                # git keeps a file name's bytes as they are: one that is not UTF-8 is no
                # file stemma reads, but it must not stop the others from being listed
                self._blobs[raw.decode(errors="surrogateescape")] = unhexlify(sha)
        self._cache: dict[str, str] = {}
        self._subdirs: dict[str, list[str]] = {}  # `subdirs`, by folder
        self._unreadable: dict[str, StemmaError] = {}  # what `read_text` raises for the path

    def _sha(self, path: str) -> str:
        """The hex id of the blob at `path`."""
        return self._blobs[path].hex()

    def files(self) -> list[str]:
        """Every file path in the revision (under the prefix)."""
        return sorted(self._blobs)

    def prefetch(self, paths: list[str]) -> None:
        """Read many blobs with one git process."""
        wanted = [
            p
            for p in paths
            if p in self._blobs and p not in self._cache and p not in self._unreadable
        ]
        if not wanted:
            return
        # One blob at a time from the pipe: never the whole answer in memory at once, and a
        # blob that several paths share (a copied spec) is read and decoded once.
        by_blob: dict[str, list[str]] = {}
        for p in wanted:
            by_blob.setdefault(self._sha(p), []).append(p)
        for sha, data in _cat_blobs(self.repo, list(by_blob), MAX_TEXT_BYTES):
            for path in by_blob[sha]:
                if isinstance(data, int):  # never read into memory
                    self._unreadable[path] = UnsafeFile(
                        path, f"is {data} bytes, more than the {MAX_TEXT_BYTES} allowed"
                    )
                    continue
                try:  # a binary file (weights committed to git) is only an error if read
                    self._cache[path] = decode_text(data, path)
                except StemmaError as exc:
                    self._unreadable[path] = exc

    def exists(self, path: str) -> bool:
        """True when the file exists at the revision."""
        if path in self._blobs:
            return True
        # A path already normal (what `Registry.rel` makes) is absent as it is: no
        # PurePosixPath for each file an audit finds missing (90,000 at 30,000 models).
        if path and "//" not in path and "/./" not in f"/{path}/" and path[0] != "/":
            return False
        return str(PurePosixPath(path)) in self._blobs

    def read_text(self, path: str) -> str | None:
        """The file's text at the revision, or None when absent; a located error for a file
        that is not a bounded file of UTF-8 text."""
        path = str(PurePosixPath(path))
        if path not in self._blobs:
            return None
        if path not in self._cache:
            self.prefetch([path])
        if path in self._unreadable:
            raise self._unreadable[path]
        return self._cache[path]

    def subdirs(self, path: str) -> list[str]:
        """Sorted names of the immediate sub-folders of `path` at the revision."""
        base = "" if path in ("", ".") else str(PurePosixPath(path)) + "/"
        # Found once per folder: each look goes through every file of the revision (an
        # audit asks for models/ several times: 90,000 paths each at 30,000 models).
        if base not in self._subdirs:
            names = set()
            for p in self._blobs:
                if p.startswith(base):
                    head, sep, _ = p[len(base) :].partition("/")
                    if sep:  # a file below a sub-folder, not a file directly in `path`
                        names.add(head)
            self._subdirs[base] = sorted(names)
        return list(self._subdirs[base])
