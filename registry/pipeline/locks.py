"""What a dvc.lock records for a model's weights.

A check reads the dvc.lock beside every model's dvc.yaml (the md5 its weights were locked
with goes into the folder's facts, for the audit's lock check). Parsing 10,000 locks as YAML
takes 2.6-3.7 s even with libyaml, which every check that reads the folders again would pay,
so a lock as DVC writes it is read by a scan of its lines (`yamlio.scan_lock_md5`); any
other text is parsed as YAML instead; tests compare the two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stemma.registry.errors import ParseError, StemmaError
from stemma.registry.rules.layout import DATASETS_DIR, MODELS_DIR
from stemma.registry.rules.layout import LOCK_FILE as LOCK_FILE
from stemma.registry.rules.layout import PIPELINE_FILE as PIPELINE_FILE
from stemma.registry.store._snapshot import read_texts
from stemma.registry.store.handle import WEIGHTS_FILE
from stemma.registry.store.tree import prefetch
from stemma.registry.store.yamlio import MERGE_CONFLICT, conflict_line, locked_md5

if TYPE_CHECKING:
    from stemma.registry.store.handle import Registry


def folder_locked_md5(reg: Registry, name: str, read: Any = None) -> str | None:
    """The md5 that the dvc.lock in model `name`'s folder records for its weights (None: no
    lock, no entry, or a lock that cannot be read: DVC reports a broken lock itself).
    `read` reads a repo-relative file (default: the registry's tree)."""
    read = reg.tree.read_text if read is None else read
    try:
        text = read(reg.rel(MODELS_DIR, name, LOCK_FILE))
    except StemmaError:
        return None
    return locked_md5(text, reg.rel(MODELS_DIR, name, WEIGHTS_FILE))


def conflicted_files(reg: Registry) -> list[tuple[str, StemmaError]]:
    """(subject, error) for each of DVC's pipeline files (the root dvc.yaml and dvc.lock, and
    those of every dataset and model folder) that holds git merge conflict markers, or that
    cannot be read as text: `stemma validate` reports them, as DVC would refuse them."""
    found: list[tuple[str, StemmaError]] = []
    folders = [("pipeline", "")]
    inside: dict[str, str] = {}  # each folder's file: repository path -> registry path
    for kind, sub in (("dataset", DATASETS_DIR), ("model", MODELS_DIR)):
        names = reg.tree.subdirs(reg.rel(sub))
        folders += [(f"{kind}:{name}", reg.rel(sub, name)) for name in names]
        for name in names:
            for filename in (PIPELINE_FILE, LOCK_FILE):
                inside[reg.rel(sub, name, filename)] = f"{sub}/{name}/{filename}"
    # the root's files sit at the repository's top
    files = [
        (subject, f"{folder}/{filename}" if folder else filename)
        for subject, folder in folders
        for filename in (PIPELINE_FILE, LOCK_FILE)
    ]
    prefetch(reg.tree, [path for _, path in files])  # at a revision: one git process
    working = getattr(reg.tree, "working", None)  # what it reads from the working tree
    for at in range(0, len(files), _BATCH):  # a batch of texts at a time, never all of them
        batch = files[at : at + _BATCH]
        mine = [p for _, p in batch if p in inside]
        mine = working(mine) if working is not None else []
        texts = _working_texts(reg, {p: inside[p] for p in mine})
        for subject, path in batch:
            try:
                text = texts[path] if path in texts else reg.tree.read_text(path)
            except StemmaError as exc:
                found.append((subject, exc))
                continue
            line = conflict_line(text) if text is not None else None
            if line is not None:
                found.append((subject, ParseError(path, MERGE_CONFLICT, line=line)))
    return found


# Pipeline files read together (`conflicted_files`): at 30,000 models, all of them at once
# held ~35 MiB of text.
_BATCH = 1024


def _working_texts(reg: Registry, paths: dict[str, str]) -> dict[str, str | None]:
    """Repository path -> text (None: no such file) of the folders' files `paths` (repository
    path -> path from the registry root) of the working tree, read in one pass
    (`_snapshot.read_texts`: a fifth of the careful reader's cost); {} where a file is
    refused: then each is read on its own, and its refusal reported."""
    if not paths:
        return {}
    try:
        texts = read_texts(reg.root, list(paths.values()), reg.rel_root)
    except StemmaError:
        return {}
    return dict(zip(paths, texts, strict=True))
