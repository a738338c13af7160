"""What a dvc.lock records for a model's weights.

A check reads the dvc.lock beside every model's dvc.yaml (the md5 its weights were locked
with goes into the folder's facts, for the audit's lock check). Parsing 10,000 locks as YAML
takes 2.6-3.7 s even with libyaml, which every check that reads the folders again would pay,
so a lock as DVC writes it is read by a scan of its lines: the one list item `- path: PATH`
under an `outs:` key, and that item's own `md5:` line. Any other text, or a scan that finds
anything but exactly that, is parsed as YAML instead; tests compare the two. The scan reads
only the item's own lines: the rest of the file is DVC's to judge.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from stemma.registry.errors import ParseError, StemmaError
from stemma.registry.store._fastyaml import MERGE_CONFLICT, conflict_line
from stemma.registry.store.handle import WEIGHTS_FILE
from stemma.registry.store.tree import prefetch

if TYPE_CHECKING:
    from stemma.registry.store.handle import Registry

LOCK_FILE = "dvc.lock"
_ITEM = re.compile(r"^( *)- path: (\S+)$", re.M)
_MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")  # a folder output (adapter/, tokenizer/) ends in .dir


def folder_locked_md5(reg: Registry, name: str, read: Any = None) -> str | None:
    """The md5 that the dvc.lock in model `name`'s folder records for its weights (None: no
    lock, no entry, or a lock that cannot be read: DVC reports a broken lock itself).
    `read` reads a repo-relative file (default: the registry's tree)."""
    read = reg.tree.read_text if read is None else read
    try:
        text = read(reg.rel("models", name, LOCK_FILE))
    except StemmaError:
        return None
    return locked_md5(text, reg.rel("models", name, WEIGHTS_FILE))


def locked_md5(text: str | None, path: str) -> str | None:
    """The md5 that the text of a dvc.lock records for output `path` (repo-relative); None
    for a lock with merge conflict markers, which DVC cannot read either."""
    if text is None or conflict_line(text) is not None:
        return None
    found = _scan(text, path)
    return found if found is not None else locked_md5s(text).get(path)


def _scan(text: str, path: str) -> str | None:
    """The md5 of output `path` read off the lines of a lock in DVC's layout, or None."""
    hits = [m for m in _ITEM.finditer(text) if m.group(2) == path]
    if len(hits) != 1:
        return None
    item = hits[0]
    indent = item.group(1)
    # The key the item's list belongs to: the nearest line above at the item's indent that
    # is not a sibling item (a sibling's own lines are indented deeper).
    for line in reversed(text[: item.start()].split("\n")[:-1]):
        if line.startswith((indent + " ", indent + "- ")):
            continue
        if line != indent + "outs:":
            return None
        break
    else:
        return None
    md5s = []
    for line in text[item.end() + 1 :].split("\n"):
        if not line.startswith(indent + "  "):
            break  # the item's own lines end at the next item or key
        if line.startswith(indent + "  md5: "):
            md5s.append(line[len(indent) + 7 :])
    if len(md5s) == 1 and _MD5.fullmatch(md5s[0]):
        return md5s[0]
    return None


def locked_md5s(text: str | None) -> dict[str, str]:
    """Output path -> md5 of every stage in the text of a dvc.lock, parsed as YAML (empty
    for no text or a lock that does not parse)."""
    from stemma.registry.store.yamlio import load_yaml_text

    try:
        lock = load_yaml_text(text, LOCK_FILE) if text is not None else None
    except StemmaError:
        return {}
    found: dict[str, str] = {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    for stage in stages.values() if isinstance(stages, dict) else ():
        outs = stage.get("outs") if isinstance(stage, dict) else None
        for out in outs if isinstance(outs, list) else ():
            if isinstance(out, dict) and "path" in out and "md5" in out:
                found[str(PurePosixPath(str(out["path"])))] = str(out["md5"])
    return found


def conflicted_files(reg: Registry) -> list[tuple[str, StemmaError]]:
    """(subject, error) for each of DVC's pipeline files (the root dvc.yaml and dvc.lock, and
    those of every dataset and model folder) that holds git merge conflict markers, or that
    cannot be read as text: `stemma validate` reports them, as DVC would refuse them."""
    from stemma.registry.pipeline.render import PIPELINE_FILE

    found: list[tuple[str, StemmaError]] = []
    folders = [("pipeline", "")]
    for kind in ("datasets", "models"):
        names = reg.tree.subdirs(reg.rel(kind))
        folders += [(f"{kind[:-1]}:{name}", reg.rel(kind, name)) for name in names]
    # the root's files sit at the repository's top
    files = [
        (subject, f"{folder}/{filename}" if folder else filename)
        for subject, folder in folders
        for filename in (PIPELINE_FILE, LOCK_FILE)
    ]
    prefetch(reg.tree, [path for _, path in files])  # at a revision: one git process
    for subject, path in files:
        try:
            text = reg.tree.read_text(path)
        except StemmaError as exc:
            found.append((subject, exc))
            continue
        line = conflict_line(text) if text is not None else None
        if line is not None:
            found.append((subject, ParseError(path, MERGE_CONFLICT, line=line)))
    return found
