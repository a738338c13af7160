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

_ITEM = re.compile(r"^( *)- path: (\S+)$", re.M)
_MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")  # a folder output (adapter/, tokenizer/) ends in .dir


def scan_lock_md5(text: str, path: str) -> str | None:
    """The md5 a dvc.lock in DVC's layout records for output `path`: the one list item
    `- path: PATH` under an `outs:` key, and that item's own `md5:` line; None when the text
    is not plainly that (the caller parses it). Only the item's own lines are read: the
    rest of the file is DVC's to judge."""
    if text.count(path) != 1:
        return None  # the path elsewhere too (quoted, in a flow item, in another stage)
    hits = [m for m in _ITEM.finditer(text) if m.group(2) == path]
    if len(hits) != 1:
        return None
    item = hits[0]
    indent = item.group(1)
    if indent != "    ":
        return None  # a stage's outputs sit under `stages:` and the stage's name
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
