"""Line scans of DVC's own YAML files, for the two places where a full parse costs seconds.

Reading 10,000 dvc.lock files as YAML takes 2.6-3.7 s even with libyaml, and the root dvc.yaml
carries one `artifacts:` entry per model that no stage reader needs. Both scans read only
text in the layout DVC writes, and give up (None, or the text unchanged) on anything else, so
the caller falls back to the full parse; tests compare the two.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from stemma.registry.errors import StemmaError
from stemma.registry.rules.layout import LOCK_FILE
from stemma.registry.store.yamlio._fast import conflict_line
from stemma.registry.store.yamlio._safe import load_yaml_text

# A stage's outputs sit under `stages:` and the stage's name: four spaces, then the list.
_INDENT = "    "
_ITEM_AT = _INDENT + "- path: "
_SIBLING = (_INDENT + " ", _INDENT + "- ")  # a line of another item of the list
_OUTS = _INDENT + "outs:"
_OWN = _INDENT + "  "  # a line of the item itself
_OWN_MD5 = _INDENT + "  md5: "
_PLAIN = re.compile(r"\S+")  # a path as a line's last word
_MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")  # a folder output (adapter/, tokenizer/) ends in .dir


def scan_lock_md5(text: str, path: str) -> str | None:
    """The md5 a dvc.lock in DVC's layout records for output `path`: the one list item
    `- path: PATH` under an `outs:` key, and that item's own `md5:` line; None when the text
    is not plainly that (the caller parses it). Only the item's own lines are read: the
    rest of the file is DVC's to judge.

    The lines are found from the one place `path` occurs, by position (no pass over the
    whole text, no list of its lines): ~3x faster on the locks DVC writes (10,000 of them
    are read on each new index), the same answers as reading every item line (tests)."""
    if text.count(path) != 1 or not _PLAIN.fullmatch(path):
        return None  # the path elsewhere too (quoted, in a flow item, in another stage)
    at = text.find(path)
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at)
    end = len(text) if end < 0 else end
    if text[start:end] != _ITEM_AT + path:
        return None  # not `- path: PATH` alone on its line, or not at a stage's indent
    # The key the item's list belongs to: the nearest line above at the item's indent that
    # is not a sibling item (a sibling's own lines are indented deeper).
    above = start - 1  # the line break that ends the line above
    while above > 0:
        first = text.rfind("\n", 0, above) + 1
        line = text[first:above]
        if not line.startswith(_SIBLING):
            if line != _OUTS:
                return None
            break
        above = first - 1
    else:
        return None
    md5s = []
    at = end + 1
    while at <= len(text):
        stop = text.find("\n", at)
        line = text[at : len(text) if stop < 0 else stop]
        if not line.startswith(_OWN):
            break  # the item's own lines end at the next item or key
        if line.startswith(_OWN_MD5):
            md5s.append(line[len(_OWN_MD5) :])
        if stop < 0:
            break
        at = stop + 1
    if len(md5s) == 1 and _MD5.fullmatch(md5s[0]):
        return md5s[0]
    return None


def without_block(text: str, key: str) -> str:
    """The text without its top-level block `key:` (such as the root dvc.yaml's `artifacts:`,
    one entry per model and none of it a stage), so that reading the rest does not parse
    it; the text as it is when the block is not plainly there."""
    head = f"\n{key}:\n"
    start = text.find(head)
    if start < 0:
        return text
    end = start + len(head)
    for line in text[end:].splitlines(keepends=True):
        if line[:1] not in (" ", "-", "#", "\n"):  # the next top-level key
            break
        end += len(line)
    return text[: start + 1] + text[end:]


def locked_md5(text: str | None, path: str) -> str | None:
    """The md5 that the text of a dvc.lock records for output `path` (repo-relative); None
    for a lock with merge conflict markers, which DVC cannot read either."""
    if text is None or conflict_line(text) is not None:
        return None
    found = scan_lock_md5(text, path)
    return found if found is not None else locked_md5s(text).get(path)


def locked_md5s(text: str | None) -> dict[str, str]:
    """Output path -> md5 of every stage in the text of a dvc.lock, parsed as YAML (empty
    for no text or a lock that does not parse)."""
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
