"""The two states an audit compares, each read once.

A state's documents are raw (a broken file is still compared) and parsed when first asked
for: most of them the audit never needs. The base is tied to the head (`link`): git lists
the files that differ between the two (`git diff --name-only`, which re-reads a file whose
stat it cannot trust), and every other file of the base is the head's own file, so its
document is the head's document, and the consistency facts of a model folder whose files
are all the same are the head's facts. Only the files that differ are read from the base
revision, with one git process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stemma.registry import Registry
from stemma.registry.check import consistency as cons
from stemma.registry.check.consistency import Violation
from stemma.registry.errors import GitError, LocatedError, RegistryNotFound, StemmaError
from stemma.registry.pipeline.locks import pipeline_texts
from stemma.registry.rules.layout import (
    MANIFEST_FILE,
    PIPELINE_FILE,
    SETTINGS_FILE,
    SPEC_FILE,
)
from stemma.registry.store._checkcache import FOLDER_FILES
from stemma.registry.store.files import parse_json_text
from stemma.registry.store.handle import find_repo_root
from stemma.registry.store.tree import GitTree, Tree, git, prefetch
from stemma.registry.store.yamlio import load_yaml_text

from .graph import LazyDocs, prefetch_documents

WORKING_TREE = "working tree"


@dataclass
class State:
    """One side of the comparison: the registry (None when absent) and its raw documents."""

    label: str
    reg: Registry | None
    errors: list[Violation] = field(default_factory=list)
    models: Mapping[str, Any] = field(default_factory=dict)  # name -> raw spec (None: none)
    datasets: Mapping[str, Any] = field(default_factory=dict)
    manifests: Mapping[str, Any] = field(default_factory=dict)  # "model:NAME" -> raw or None
    settings: Any = None
    # Of the base: True for a repo-relative path whose file is the head's own (None: unknown).
    same: Callable[[str], bool] | None = None
    # What `same` remembers: a file this state lacks -> whether the head lacks it too.
    absent: dict[str, bool] = field(default_factory=dict)
    head: State | None = None  # the state this one is linked to
    # What git listed as differing between the working tree and a commit (by commit and
    # registry folder) when this state was opened (`_is_working_tree`), for `link`.
    seen: dict[tuple[str, str], bytes] = field(default_factory=dict)
    checked: cons.Checked | None = None  # the consistency check, once run
    checked_only: frozenset[str] | None = None  # the subjects it was run for (None: all)
    lent: Mapping[str, cons.ModelFacts] | None = None  # `facts` without a check

    def text(self, path: str) -> str | None:
        """A repo-relative file of this state, or None (the head's, where it is the same)."""
        if self.reg is None:
            return None
        if self.head is not None and self.same_file(path):
            return self.head.text(path)
        return self.reg.tree.read_text(path)

    def same_file(self, path: str) -> bool:
        """True when `path` is known to be the same file in this state and the head."""
        return self.same is not None and self.same(path)

    def check(self, only: frozenset[str] | None = None) -> cons.Checked:
        """The consistency check of this state (run once; `only`: of those subjects alone,
        `cons.check_state`): a base linked to its head takes the head's facts for every
        model folder whose files are the same."""
        assert self.reg is not None
        if self.checked is None or self.checked_only != only:
            borrowed = None
            head = self.head
            if head is not None and head.reg is not None:
                facts, reg = head.facts(), self.reg

                def borrowed(name: str) -> cons.ModelFacts | None:
                    mine = facts.get(name)
                    if mine is None:
                        return None
                    same = all(self.same_file(reg.rel("models", name, f)) for f in FOLDER_FILES)
                    return mine if same else None

            self.checked = cons.check_state(self.reg, borrowed, only)
            self.checked_only = only
        return self.checked

    def facts(self) -> Mapping[str, cons.ModelFacts]:
        """The facts of this state's model folders, for a state linked to it to borrow: its
        whole check's where it ran, else the stored ones (`cons.folder_facts`: a head whose
        violations no one asks for, the working tree a head revision is anchored to)."""
        assert self.reg is not None
        if self.checked is not None and self.checked_only is None:
            return self.checked.facts
        if self.head is not None:
            return self.check().facts
        if self.lent is None:
            self.lent = cons.folder_facts(self.reg)
        return self.lent

    def release(self) -> None:
        """Forget the consistency check of this state and of the states it is tied to, and
        every document read so far (the check gives its registry each spec it parsed): a
        parsed spec per model is the largest thing an audit holds, and what comes after
        the checks reads only the few documents that differ, again where it needs them."""
        self.checked = self.lent = None
        # The files the check found missing in both (at 30,000 models, 90,000 paths and
        # ~10 MiB): what comes after asks about a few files, which a look finds again.
        self.absent.clear()
        reg = self.reg
        if reg is not None:
            for kind, names in (("models", reg.model_names()), ("datasets", reg.dataset_names())):
                for name in names:
                    reg.forget(reg.rel(kind, name, SPEC_FILE))
                    reg.forget(reg.rel(kind, name, MANIFEST_FILE))
            _documents(self, reg, self.head)
        if self.head is not None:
            self.head.release()


def open_state(repo: Path, rev: str | None) -> State:
    """Read one side: git revision `rev`, or the working tree when None."""
    label = WORKING_TREE if rev is None else rev
    seen: dict[tuple[str, str], bytes] = {}
    try:
        if rev is None or _is_working_tree(repo, rev, seen):
            reg = Registry.open(repo)  # read with the working tree's caches
        else:
            reg = Registry.at_revision(repo, rev)
    except RegistryNotFound:
        return State(label, None)
    except LocatedError as exc:  # a broken stemma.yaml: nothing else can be read
        return State(
            label,
            None,
            [Violation(cons.SCHEMA, exc.path, exc.reason, exc.pointer, exc.line, "settings")],
        )
    state = State(label, reg, seen=seen)
    state.settings = raw_yaml(state.text(SETTINGS_FILE))
    _documents(state, reg)
    return state


# Names of the files an audit reads: an untracked or ignored one in the working tree makes
# it differ from any revision (weights and other outputs do not).
_READ_SUFFIXES = (".yaml", ".yml", ".json", ".lock", ".py", ".toml", ".cfg", ".txt")


def _is_working_tree(
    repo: Path, rev: str, seen: dict[tuple[str, str], bytes] | None = None
) -> bool:
    """True when every file of the registry at `rev` is the working tree's, byte for byte
    as git compares them (`git diff --name-only REV` lists nothing, and no untracked or
    ignored file an audit could read is there): the revision is then read from the working
    tree, whose caches answer the checks, instead of materialising it from git. `seen`
    keeps what git listed, by commit and registry folder, for `link` to take instead of
    asking again (at 30,000 models each such diff stats 90,000 files)."""
    try:
        root = find_repo_root(repo)
        top = Path(git(root, "rev-parse", "--show-toplevel").decode().strip())
        where = root.resolve().relative_to(top.resolve()).as_posix()
        scope = ["--", where if where != "." else "."]
        commit = git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        differ = git(top, "diff", "--name-only", "-z", "--no-renames", rev, *scope)
        if seen is not None:
            seen[commit.decode().strip(), where] = differ
        if differ.strip(b"\0"):
            return False
        others = git(top, "ls-files", "-z", "--others", *scope)
    except (GitError, RegistryNotFound, ValueError, OSError):
        return False  # the usual path reports whatever is wrong
    for name in others.decode(errors="surrogateescape").split("\0"):
        hidden = any(part.startswith(".") for part in name.split("/"))  # .stemma/, .dvc/
        if name and not hidden and name.endswith(_READ_SUFFIXES):
            return False
    return True


def _documents(state: State, reg: Registry, head: State | None = None) -> None:
    """The raw documents of `state`: those of `head` where the file is the same."""

    def spec(kind: str, into: Callable[[], Mapping[str, Any]]) -> Callable[[str], Any]:
        def load(name: str) -> Any:
            path = reg.rel(kind, name, SPEC_FILE)
            if head is not None and state.same_file(path):
                return into()[name]
            known = _known(reg, path)
            return known if known is not None else raw_yaml(state.text(path))

        return load

    def manifest(key: str) -> Any:
        kind, _, name = key.partition(":")
        path = reg.rel(f"{kind}s", name, MANIFEST_FILE)
        if head is not None and state.same_file(path):
            return head.manifests[key]
        known = _known(reg, path)
        return known if known is not None else raw_json(state.text(path))

    models, datasets = reg.model_names(), reg.dataset_names()
    state.models = LazyDocs(models, spec("models", lambda: head.models if head else {}))
    state.datasets = LazyDocs(datasets, spec("datasets", lambda: head.datasets if head else {}))
    keys = [f"dataset:{n}" for n in datasets] + [f"model:{n}" for n in models]
    state.manifests = LazyDocs(keys, manifest)


def _known(reg: Registry, path: str) -> dict[str, Any] | None:
    """The document a check validated at `path` (the same as its raw document), if any."""
    doc = reg.known(path)
    return doc if isinstance(doc, dict) else None


def link(base: State, head: State) -> None:
    """Tie `base` to `head`: the files git finds the same are read from the head only."""
    if base.reg is None or head.reg is None or base.reg.rel_root != head.reg.rel_root:
        return
    old = _git_tree(base.reg)
    if old is None:
        return
    tree, prefix = old
    new = _git_tree(head.reg)
    # Against the working tree, git listed what differs when the base was opened (the
    # paths of the registry's folder, all that is kept of them below).
    out = base.seen.get((tree.commit, prefix or ".")) if new is None else None
    try:
        args = ["diff", "--name-only", "-z", "--no-renames", tree.commit]
        if new is not None:
            args.append(new[0].commit)
        out = git(tree.repo, *args, "--") if out is None else out
    except GitError:
        return
    differ: set[str] = set()
    for path in out.decode(errors="surrogateescape").split("\0"):
        if path and (not prefix or path.startswith(prefix + "/")):
            differ.add(path[len(prefix) + 1 :] if prefix else path)
    base_tree, head_tree = base.reg.tree, head.reg.tree
    # Only what costs a look at the disk is remembered: a memo of every path asked about
    # held ~30 MiB at 30,000 models (the dict and its path strings, for base and head).
    absent = base.absent  # a file the base lacks: True when the head lacks it too

    def same(path: str) -> bool:
        # A file of the base that git does not list is the head's; one the base lacks is
        # the same only where the head lacks it too (not an untracked file). Between two
        # revisions git lists every file that differs: no file is untracked.
        if path in differ:
            return False
        if new is not None or base_tree.exists(path):
            return True
        if path not in absent:
            absent[path] = not head_tree.exists(path)
        return absent[path]

    base.same, base.head = same, head
    base.reg.tree = LinkedTree(base_tree, head_tree, same)
    _documents(base, base.reg, head)
    # The files that differ in one git process: the others are read from the head.
    tree.prefetch([str(PurePosixPath(prefix, p)) if prefix else p for p in sorted(differ)])


def anchor(head: State, repo: Path) -> None:
    """Tie a head read from a git revision to the working tree, as a base is tied to its
    head (`link`): the files git finds the same are read from the working tree, and the
    consistency facts of each model folder whose files are all the same are the working
    tree's, which its check cache answers without parsing them again."""
    if head.reg is None or _git_tree(head.reg) is None:
        return  # the working tree itself, or a revision read from it
    link(head, open_state(repo, None))


def prefetch_state(state: State) -> None:
    """Read every file the checks read of a state at a git revision (each folder's documents
    and dvc.yaml) with one git process, instead of one process per file."""
    reg = state.reg
    if reg is None or state.head is not None:  # a base reads only what differs from its head
        return
    folders = [reg.rel("models", name) for name in reg.model_names()]
    folders += [reg.rel("datasets", name) for name in reg.dataset_names()]
    files = (*FOLDER_FILES, PIPELINE_FILE)
    prefetch_documents(reg, [f"{folder}/{name}" for folder in folders for name in files])


class LinkedTree:
    """The files of a state tied to another (`link`) as its registry reads them: a file git
    finds the same in both is read from the other state's tree, the others from this
    state's own. Its checks then hold no second copy of the files that are the same
    (every model folder's dvc.yaml and dvc.lock, tens of MiB at 30,000 models), and read
    from git only what differs."""

    def __init__(self, own: Tree, other: Tree, same: Callable[[str], bool]) -> None:
        self.own, self.other, self.same = own, other, same
        self.label = own.label

    def read_text(self, path: str) -> str | None:
        """The file's text in this state (None when absent)."""
        return (self.other if self.same(path) else self.own).read_text(path)

    def exists(self, path: str) -> bool:
        """True when the file exists in this state."""
        return self.own.exists(path)

    def working(self, paths: list[str]) -> list[str]:
        """Those of `paths` whose text is the working tree's: the same as the other state's,
        where that one is (or reads them from) the working tree."""
        working = getattr(self.other, "working", None)
        return [] if working is None else list(working([p for p in paths if self.same(p)]))

    def subdirs(self, path: str) -> list[str]:
        """Sorted names of the immediate sub-folders of `path` in this state."""
        return self.own.subdirs(path)

    def prefetch(self, paths: list[str]) -> None:
        """Read many files with one git process per tree that has them."""
        prefetch(self.own, [p for p in paths if not self.same(p)])
        prefetch(self.other, [p for p in paths if self.same(p)])


class AheadReader:
    """`State.text` for a reader that asks for many files in a known order (the pipeline
    files `pipefiles.compare` checks): those files come from `locks.pipeline_texts`, which
    reads the ones whose text is the working tree's (`LinkedTree.working`) a batch at a time
    in one pass (at 30,000 models, 30,000 dvc.yaml) and the others as `State.text` does;
    a file out of that order is read by `State.text`."""

    def __init__(self, state: State, order: list[str]) -> None:
        self.state, self.wanted = state, set(order)
        reg = state.reg
        self.texts = iter(pipeline_texts(reg, order, state.text) if reg is not None else ())
        self.ahead: dict[str, str | StemmaError | None] = {}  # read, not yet asked for

    def __call__(self, path: str) -> str | None:
        """The file's text in the state (None when absent)."""
        if path in self.wanted and path not in self.ahead:
            for found, text in self.texts:
                self.ahead[found] = text
                if found == path:
                    break
        if path not in self.ahead:
            return self.state.text(path)
        text = self.ahead.pop(path)
        if isinstance(text, StemmaError):
            raise text
        return text


def _git_tree(reg: Registry) -> tuple[GitTree, str] | None:
    """The git tree of a registry at a revision and its folder in the repository."""
    tree: Any = reg.tree.own if isinstance(reg.tree, LinkedTree) else reg.tree
    inner = getattr(tree, "inner", tree)
    if not isinstance(inner, GitTree):
        return None
    prefix = str(getattr(tree, "prefix", ""))
    return inner, "" if prefix in ("", ".") else prefix


def raw_yaml(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return load_yaml_text(text, "")
    except StemmaError:
        return None


def raw_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        doc = parse_json_text(text, "")
    except StemmaError:
        return None
    return doc if isinstance(doc, dict) else None
