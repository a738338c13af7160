"""What the consistency check found in each model folder, kept while the folder is unchanged.

Reading, parsing and validating 20,000 specs and manifests is most of `stemma validate` on a
large registry, yet between two checks few files change. `check` keeps, per model folder,
the facts it took from that folder's own files (the spec, the manifest's ids, the folder's
own violations: schema, ids, metric files, gates; the md5s of the weights that the manifest
and the folder's dvc.lock record) under a stamp of those files, and the next check takes the
facts of every folder whose stamp is the same; the checks across folders (references,
cycles, staleness, tasks) run on the facts, unless the verdict below stands.

A stamp of the working tree is the `lstat` of the folder and of its spec, manifest,
metrics.json, curve.json, dvc.lock and dvc.yaml (each file's `_snapshot.stamp`: size, mtime,
ctime and inode, the rule the query index uses too), taken in one pass before any file is
read. A folder is trusted only when all of it is plain (no link, only regular files) and no
stamp is too recent: a file changed within RACY_NS of the check may change again without its
stat changing (git's "racy" rule, `_snapshot.racy`), so such a folder is read again until it
is older. A git revision keeps no facts here: an audit's base takes the head's facts of the
folders whose files git finds the same (`stemma.lineage._audit_state`).

The facts are the store's fact `checked` (`derived`: a cache, ignored by git), written only
by a check that found no bad input, like `_validcache`; a damaged or unreadable one is a
miss. It is text, one line per folder after a header line: `NAME<TAB>STAMP<TAB>FACTS`, FACTS
the folder's facts as ASCII JSON (which holds no tab or line break), compressed with zlib
(level 1). A reader decompresses it into lines and parses a folder's facts when it asks for
them, a block of folders at a time (one parse per block keeps the keys the specs share as one
string each): `stemma ls` takes two md5s per folder from it, and parsing the whole document
at once held every folder's spec as Python objects at the same time. Compressed, the store
hands over a fifth of the bytes: at 30,000 models, reading the 37 MB of plain text through
DuckDB peaked ~190 MiB above the reader, the 7.5 MB compressed ~35 MiB, for the same CPU
(decompressing costs what reading the larger blob did). A folder whose facts are taken
unchanged is written back as the line it was read from.

The checks across folders cost as much again on a large registry, yet their answer too
is the same while nothing they read changed. `check` keeps a second fact, `verdict`: the
violations found in the model folders, by part of the check and by model
(`consistency.Sections`), each folder's stamp (dvc.yaml included: the conflict check reads
it) and each readable spec's parents, under a key that digests the settings, the datasets'
specs and manifests as read and the list of model folders (`verdict_key`). A check whose key
is the stored one reads no model folder whose stamp is the stored one: where none changed,
it takes the violations as they are; where some did, it reads those, finds again the
violations of the models they touch (their own, their children's staleness) and stores the
verdict brought up to date. A change that makes a spec readable or unreadable, or changes a
model's parents, runs the whole check (cycles and every dangling reference's hint read every
spec). The datasets' and the root's own checks run every time. No verdict is kept where a
folder cannot be trusted (a link, a recent change), where the check found bad input, or
where a spec's checks read a file outside the folders (a transformers config under
`architecture.path`).

It sits in `store/`, below the check (`check.consistency`) that writes it and the audit
that reads its facts.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stemma.registry.rules.layout import (
    CURVE_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PIPELINE_FILE,
    SPEC_FILE,
)
from stemma.registry.store import derived as _store
from stemma.registry.store._snapshot import RACY_NS, changed_ns, now_ns, racy, stamp
from stemma.registry.store.codekey import code_key

if TYPE_CHECKING:
    from stemma.registry.store.handle import Registry

FACT = "checked"
FORMAT = "stemma-checked/5"  # 2: `_snapshot.stamp`; 3: dataset ids; 4: a line per folder;
# 5: the folder's dvc.yaml in its stamp
VERDICT = "verdict"  # the whole check's violations from the model folders (`verdict`)
# The most text a stored fact may decompress to: past it, a damaged fact (a miss).
MAX_TEXT = 1 << 30
# Folders whose facts are parsed together (`FolderFacts.get`): large enough that a block's
# shared keys cost little, small enough that a block's parsed facts are a small transient.
BLOCK = 256
# The files of a model folder whose content the facts depend on.
FOLDER_FILES = (SPEC_FILE, MANIFEST_FILE, METRICS_FILE, CURVE_FILE, LOCK_FILE)
# The files a folder's stamp covers: the check reads its dvc.yaml too (for conflict markers),
# and the verdict stands for that.
STAMPED_FILES = (*FOLDER_FILES, PIPELINE_FILE)


def _header(reg: Registry) -> str:
    """What the facts depend on besides the folders: this format, the code that finds them
    and the schemas (`code_key`), and where the registry root is."""
    return f"{FORMAT} {code_key()[:32]} {reg.rel_root}"


def work_stamps(root: Path) -> dict[str, str]:
    """name -> stamp of each model folder of the working tree that can be trusted (plain,
    and not changed too recently); folders left out are read as if unknown."""
    now = now_ns()
    models = root / "models"
    try:
        if os.path.islink(models):
            return {}
        fd = os.open(models, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return {}
    out: dict[str, str] = {}
    lstat = os.lstat
    try:
        with os.scandir(fd) as entries:
            folders = [
                e
                for e in entries
                if not e.name.startswith(".") and not e.is_symlink() and e.is_dir()
            ]
        for entry in folders:
            name = entry.name
            try:
                info = lstat(name, dir_fd=fd)
            except OSError:
                continue
            parts = [f"{info.st_ino}"]
            trusted = stat.S_ISDIR(info.st_mode)
            for fname in STAMPED_FILES:
                if not trusted:
                    break
                try:
                    st = lstat(f"{name}/{fname}", dir_fd=fd)
                except FileNotFoundError:
                    parts.append("-")
                    continue
                except OSError:
                    trusted = False
                    break
                numbers = stamp(st)
                if not stat.S_ISREG(st.st_mode) or racy(changed_ns(numbers), now, RACY_NS):
                    trusted = False
                    break
                parts.append(".".join(map(str, numbers)))
            if trusted:
                out[name] = " ".join(parts)
    finally:
        os.close(fd)
    return out


class FolderFacts:
    """The stored facts of a registry, the stamps of its folders now, and what this check
    takes and adds."""

    def __init__(self, reg: Registry, stamps: dict[str, str] | None = None) -> None:
        """`stamps`: the folders' stamps now; None for the working tree's, taken only when
        any facts are stored (a store without facts then costs no look at the folders)."""
        self.repo_root = reg.repo_root
        self.stamps = stamps or {}
        self.header = _header(reg)
        self.stored: dict[str, int] = {}  # name -> its line in `lines`
        self.lines: list[bytes] = []  # NAME<TAB>STAMP<TAB>FACTS
        self.used: dict[str, bytes] = {}  # name -> its line as this check keeps it
        self.added = False  # `put` kept a line that was not read
        self._block = -1  # the block of lines parsed last, and its facts by line
        self._parsed: dict[int, Any] = {}
        lines = _lines(_store.load(self.repo_root, FACT))
        if not lines or lines[0] != self.header.encode():
            return
        stored: dict[str, int] = {}
        for i, line in enumerate(lines):
            if i:
                name, tab, _rest = line.partition(b"\t")
                if tab:
                    stored[name.decode(errors="replace")] = i
        self.lines, self.stored = lines, stored
        if stamps is None and stored:
            self.stamps = work_stamps(reg.root)

    def get(self, name: str) -> list[Any] | None:
        """The facts of folder `name` when its stamp is the one they were stored under."""
        stamp = self.stamps.get(name)
        at = self.stored.get(name)
        if stamp is None or at is None:
            return None
        line = self.lines[at]
        _name, _tab, rest = line.partition(b"\t")
        kept, tab, _facts = rest.partition(b"\t")
        if not tab or kept != stamp.encode():
            return None
        facts = self._facts(at)
        if not isinstance(facts, list):
            return None
        self.used[name] = line
        return facts

    def _facts(self, at: int) -> Any:
        """The parsed facts of line `at` (None when they are not JSON), parsing its block."""
        block = at // BLOCK
        if block != self._block:
            self._block, self._parsed = block, {}  # the last block's facts are let go
            first = max(block * BLOCK, 1)
            span = range(first, min((block + 1) * BLOCK, len(self.lines)))
            texts = [self.lines[i].split(b"\t", 2)[-1] for i in span]
            found: Any = None
            # Each text a list (the facts of `ModelFacts.to_list`), and as many values as
            # lines: a damaged line cannot shift the facts of the others.
            if all(t[:1] == b"[" and t[-1:] == b"]" for t in texts):
                try:
                    found = json.loads(b"[" + b",".join(texts) + b"]")
                except (ValueError, RecursionError):
                    found = None
            if isinstance(found, list) and len(found) == len(texts):
                self._parsed = dict(zip(span, found, strict=True))
            else:  # a damaged line: each on its own
                self._parsed = {i: _parse(text) for i, text in zip(span, texts, strict=True)}
        if at in self._parsed:
            return self._parsed.pop(at)
        return _parse(self.lines[at].split(b"\t", 2)[-1])  # asked for again

    def keep_unchanged(self) -> None:
        """Keep, as `get` would, the stored facts of every folder whose stamp is the one
        they were stored under, without parsing them (a check that reads a few folders)."""
        for name, at in self.stored.items():
            stamp = self.stamps.get(name)
            if stamp is not None and name not in self.used:
                kept, tab, _facts = self.lines[at].partition(b"\t")[2].partition(b"\t")
                if tab and kept == stamp.encode():
                    self.used[name] = self.lines[at]

    def forget(self, name: str) -> None:
        """Drop what `get` returned for `name` (it could not be read back)."""
        self.used.pop(name, None)

    def put(self, name: str, facts: list[Any]) -> None:
        """Keep the facts just found for folder `name`, when its stamp can be trusted."""
        stamp = self.stamps.get(name)
        if stamp is not None:
            text = json.dumps(facts, separators=(",", ":"))  # ASCII: no tab, no line break
            self.used[name] = f"{name}\t{stamp}\t{text}".encode()
            self.added = True

    def save(self) -> None:
        """Write the facts of this check (the folders it did not see are dropped)."""
        if not self.added and len(self.used) == len(self.stored):
            return  # every stored line, taken as it was
        body = zlib.compress(b"\n".join([self.header.encode(), *self.used.values()]), 1)
        _store.save(self.repo_root, FACT, body)  # where it cannot (read-only): read again


def verdict_key(reg: Registry, folders: list[str], inputs: bytes) -> str:
    """The key of the check's verdict on the model folders: a digest of the header, `inputs`
    (what the checks across folders read besides them: the datasets, the settings) and the
    model folders there are (`folders`, in order); each folder's stamp is kept in the
    verdict itself, so that a change to a few folders updates it."""
    digest = hashlib.sha256(_header(reg).encode() + b"\n" + inputs + b"\n")
    digest.update("\n".join(folders).encode(errors="surrogateescape"))  # any folder name
    return digest.hexdigest()


def verdict(reg: Registry, key: str) -> dict[str, Any] | None:
    """The verdict stored under `key` (`keep_verdict`), or None: none stored, another key, a
    damaged fact. A verdict holds `stamps` (folder -> stamp), `parents` (model -> parents,
    every model whose spec can be read) and the violations by part: `folder`, `refs` and
    `manifests` (model -> violations, each a list of six values) and `cycles` (a list)."""
    body = _store.load(reg.repo_root, VERDICT)
    if body is None or not body.startswith(key.encode() + b"\n"):
        return None
    doc = _parse(body[len(key) + 1 :])
    return doc if _is_verdict(doc) else None


def _is_verdict(doc: Any) -> bool:
    """True when `doc` has the shape of a verdict (a damaged one has not)."""

    def violations(found: Any) -> bool:
        return isinstance(found, list) and all(isinstance(v, list) and len(v) == 6 for v in found)

    def by_name(part: Any, check: Any) -> bool:
        return isinstance(part, dict) and all(check(v) for v in part.values())

    def names(found: Any) -> bool:
        return isinstance(found, list) and all(isinstance(n, str) for n in found)

    return (
        isinstance(doc, dict)
        and by_name(doc.get("stamps"), lambda v: isinstance(v, str))
        and by_name(doc.get("parents"), names)
        and all(by_name(doc.get(part), violations) for part in ("folder", "refs", "manifests"))
        and violations(doc.get("cycles"))
    )


def keep_verdict(reg: Registry, key: str, doc: dict[str, Any]) -> None:
    """Store the verdict `doc` (`verdict`) under `key`."""
    _store.save(reg.repo_root, VERDICT, f"{key}\n{json.dumps(doc, separators=(',', ':'))}")


def _parse(text: bytes) -> Any:
    """The JSON value of `text`, or None when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _lines(body: bytes | None) -> list[bytes]:
    """The lines of a stored fact, decompressed a piece at a time (never the whole text and
    its lines at once); [] for none, or for one that is not zlib data or decompresses to
    more than MAX_TEXT."""
    if not body:
        return []
    decompress = zlib.decompressobj()
    lines: list[bytes] = []
    tail, size, step = b"", 0, 1 << 16
    try:
        for at in range(0, len(body), step):
            text = tail + decompress.decompress(body[at : at + step])
            size += len(text) - len(tail)
            if size > MAX_TEXT:
                return []
            lines += text.split(b"\n")
            tail = lines.pop()
        tail += decompress.flush()
    except zlib.error:
        return []
    if not decompress.eof:
        return []  # cut short
    lines.append(tail)
    return lines
