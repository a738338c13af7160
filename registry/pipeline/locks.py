"""DVC's pipeline files as the checks read them: what a dvc.lock records for a model's
weights, which files hold merge conflict markers, and the texts of many pipeline files in
one pass (`pipeline_texts`: the check of the rendered files, the conflict check).

A check reads the dvc.lock beside every model's dvc.yaml (the md5 its weights were locked
with goes into the folder's facts, for the audit's lock check). Parsing 10,000 locks as YAML
takes 2.6-3.7 s even with libyaml, which every check that reads the folders again would pay,
so a lock as DVC writes it is read by a scan of its lines (`yamlio.scan_lock_md5`); any
other text is parsed as YAML instead; tests compare the two.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
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


def conflicted_files(
    reg: Registry, only: Collection[str] | None = None
) -> list[tuple[str, StemmaError]]:
    """(subject, error) for each of DVC's pipeline files (the root dvc.yaml and dvc.lock, and
    those of every dataset and model folder) that holds git merge conflict markers, or that
    cannot be read as text: `stemma validate` reports them, as DVC would refuse them. With
    `only` (subjects: "model:NAME", "dataset:NAME", "pipeline"), the files of those alone."""
    subjects: dict[str, str] = {}  # repository path -> its subject
    if only is None or "pipeline" in only:
        for filename in (PIPELINE_FILE, LOCK_FILE):  # the root's files sit at the repository's top
            subjects[filename] = "pipeline"
    for kind, sub in (("dataset", DATASETS_DIR), ("model", MODELS_DIR)):
        for name in reg.tree.subdirs(reg.rel(sub)):
            subject = f"{kind}:{name}"
            if only is None or subject in only:
                for filename in (PIPELINE_FILE, LOCK_FILE):
                    subjects[reg.rel(sub, name, filename)] = subject
    found: list[tuple[str, StemmaError]] = []
    for path, text in pipeline_texts(reg, list(subjects)):
        if isinstance(text, StemmaError):
            found.append((subjects[path], text))
            continue
        line = conflict_line(text) if text is not None else None
        if line is not None:
            found.append((subjects[path], ParseError(path, MERGE_CONFLICT, line=line)))
    return found


# Pipeline files read together (`pipeline_texts`): at 30,000 models, all of them at once
# held ~35 MiB of text.
_BATCH = 1024


def pipeline_texts(
    reg: Registry, paths: Sequence[str], read: Callable[[str], str | None] | None = None
) -> Iterator[tuple[str, str | StemmaError | None]]:
    """(path, text) for each repository path of `paths`, in order, as `read` (default:
    `reg.tree.read_text`) reads it: None where there is no such file, the error where it
    refuses the file. The
    working tree's files of dataset and model folders are read in one pass, _BATCH at a time
    (`_snapshot.read_texts`: a fifth of the careful reader's cost), never all at once; at a
    revision, one git process reads them all (`prefetch`)."""
    read = reg.tree.read_text if read is None else read
    prefetch(reg.tree, list(paths))
    working = getattr(reg.tree, "working", None)  # what it reads from the working tree
    for at in range(0, len(paths), _BATCH):
        batch = paths[at : at + _BATCH]
        inside = {p: _in_folder(reg, p) for p in batch}
        mine = working([p for p, q in inside.items() if q]) if working is not None else []
        texts = _working_texts(reg, {p: inside[p] for p in mine})
        for path in batch:
            text: str | StemmaError | None
            if path in texts:
                text = texts[path]
            else:
                try:
                    text = read(path)
                except StemmaError as exc:
                    text = exc
            yield path, text


def _in_folder(reg: Registry, path: str) -> str:
    """The path from the registry root of repository path `path` when it names a file of a
    dataset or model folder (KIND/NAME/FILE), else ""."""
    prefix = "" if reg.rel_root in ("", ".") else f"{reg.rel_root}/"
    if not path.startswith(prefix):
        return ""
    inner = path[len(prefix) :]
    parts = inner.split("/")
    ok = len(parts) == 3 and parts[0] in (DATASETS_DIR, MODELS_DIR) and all(parts)
    return inner if ok else ""


def _working_texts(reg: Registry, paths: dict[str, str]) -> dict[str, str | None]:
    """Repository path -> text (None: no such file) of the folders' files `paths` (repository
    path -> path from the registry root) of the working tree, read in one pass
    (`_snapshot.read_texts`); {} where a file is refused: then each is read on its own, and
    its refusal reported."""
    if not paths:
        return {}
    try:
        texts = read_texts(reg.root, list(paths.values()), reg.rel_root)
    except StemmaError:
        return {}
    return dict(zip(paths, texts, strict=True))
