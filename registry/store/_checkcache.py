"""What the consistency check found in each model folder, kept while the folder is unchanged.

Reading, parsing and validating 20,000 specs and manifests is most of `stemma validate` on a
large registry, yet between two checks few files change. `check` keeps, per model folder,
the facts it took from that folder's own files (the spec, the manifest's ids, the folder's
own violations: schema, ids, metric files, gates; the md5s of the weights that the manifest
and the folder's dvc.lock record) under a stamp of those files, and the next check takes the
facts of every folder whose stamp is the same; the checks across folders (references,
cycles, staleness, tasks) run on the facts every time.

A stamp of the working tree is the `lstat` of the folder and of its spec, manifest,
metrics.json, curve.json and dvc.lock (each file's `_snapshot.stamp`: size, mtime, ctime and
inode, the rule the query index uses too), taken in one pass before any file is read. A
folder is trusted only when all of it is plain (no link, only regular files) and no stamp is
too recent: a file changed within RACY_NS of the check may change again without its stat
changing (git's "racy" rule, `_snapshot.racy`), so such a folder is read again until it is
older. A git revision keeps no facts here: an audit's base takes
the head's facts of the folders whose files git finds the same (`stemma.lineage._audit_state`).

The facts are the store's fact `checked` (`derived`: a cache, ignored by git), written only
by a check that found no bad input, like `_validcache`; a damaged or unreadable one is a
miss. It sits in `store/`, below both the check (`check.consistency`) that writes it and
`pipeline.lockstate`, which reads the kept weights md5s for `stemma ls`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stemma.registry.rules.layout import (
    CURVE_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    SPEC_FILE,
)
from stemma.registry.store import derived as _store
from stemma.registry.store._snapshot import RACY_NS, changed_ns, now_ns, racy, stamp
from stemma.registry.store.codekey import code_key

if TYPE_CHECKING:
    from stemma.registry.store.handle import Registry

FACT = "checked"
FORMAT = "stemma-checked/3"  # 2: stamps of `_snapshot.stamp`; 3: recorded dataset ids
# The files of a model folder whose content the facts depend on.
FOLDER_FILES = (SPEC_FILE, MANIFEST_FILE, METRICS_FILE, CURVE_FILE, LOCK_FILE)


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
            for fname in FOLDER_FILES:
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

    def __init__(self, reg: Registry, stamps: dict[str, str]) -> None:
        self.repo_root = reg.repo_root
        self.stamps = stamps
        self.header = _header(reg)
        self.stored: dict[str, list[Any]] = {}  # name -> [[stamp, facts]]
        self.used: dict[str, list[Any]] = {}
        try:
            doc = json.loads(_store.load(self.repo_root, FACT) or b"null")
            if isinstance(doc, dict) and doc.get("header") == self.header:
                models = doc.get("models")
                self.stored = models if isinstance(models, dict) else {}
        except (ValueError, KeyError, TypeError, RecursionError):
            self.stored = {}

    def get(self, name: str) -> list[Any] | None:
        """The facts of folder `name` when its stamp is the one they were stored under."""
        stamp = self.stamps.get(name)
        if stamp is None:
            return None
        entries = self.stored.get(name)
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp:
                if not isinstance(entry[1], list):
                    return None
                self.used[name] = entry
                facts: list[Any] = entry[1]
                return facts
        return None

    def forget(self, name: str) -> None:
        """Drop what `get` returned for `name` (it could not be read back)."""
        self.used.pop(name, None)

    def put(self, name: str, facts: list[Any]) -> None:
        """Keep the facts just found for folder `name`, when its stamp can be trusted."""
        stamp = self.stamps.get(name)
        if stamp is not None:
            self.used[name] = [stamp, facts]

    def save(self) -> None:
        """Write the facts of this check (the folders it did not see are dropped)."""
        models = {name: [entry] for name, entry in self.used.items()}
        if models == self.stored:
            return
        text = json.dumps({"header": self.header, "models": models}, separators=(",", ":"))
        _store.save(self.repo_root, FACT, text)  # where it cannot (read-only): read again
