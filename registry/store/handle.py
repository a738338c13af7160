"""The `Registry` handle: find or create a registry, read specs and manifests, write manifests."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from stemma.registry.errors import (
    DatasetNotFound,
    InvalidFolderName,
    InvalidName,
    ModelNotFound,
    PathEscape,
    RegistryExists,
    RegistryNotFound,
    StemmaError,
)
from stemma.registry.records.core import (
    DATASET_MANIFEST,
    DATASET_SPEC,
    MODEL_MANIFEST,
    MODEL_SPEC,
    SETTINGS,
    DatasetSpec,
    Manifest,
    ModelSpec,
    Settings,
    settings_look_valid,
)
from stemma.registry.rules.layout import (
    COMMITTING_DIR,
    DATASETS_DIR,
    KINDS,
    LAST_RUN_FILE,
    MODELS_DIR,
    STAGING_DIR,
)
from stemma.registry.rules.layout import DATA_FILE as DATA_FILE
from stemma.registry.rules.layout import MANIFEST_FILE as MANIFEST_FILE
from stemma.registry.rules.layout import SETTINGS_FILE as SETTINGS_FILE
from stemma.registry.rules.layout import SPEC_FILE as SPEC_FILE
from stemma.registry.rules.layout import STATE_DIR as INDEX_DIR
from stemma.registry.rules.layout import WEIGHTS_FILE as WEIGHTS_FILE
from stemma.registry.rules.naming import check_name
from stemma.registry.store.documents import (
    parse_json_document,
    parse_yaml_document,
    validate_document,
)
from stemma.registry.store.files import canonical_json, confined, content_id, write_atomic
from stemma.registry.store.tree import GitTree, Tree, WorkTree
from stemma.registry.store.yamlio import dump_yaml, load_yaml_text


def find_repo_root(start: Path) -> Path:
    """The nearest folder at or above `start` holding stemma.yaml."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / SETTINGS_FILE).is_file():
            return folder
    raise RegistryNotFound(path=str(start))


class Registry:
    """One registry: stemma.yaml plus models/ and datasets/ under its root folder."""

    def __init__(self, repo_root: Path, settings: Settings, tree: Tree | None = None) -> None:
        self.repo_root = repo_root
        self.settings = settings
        self.tree: Tree = tree if tree is not None else WorkTree(repo_root)
        self.rel_root = str(PurePosixPath(settings.root))
        self.root = (repo_root / settings.root).resolve()
        self._cache: dict[tuple[str, str], Any] = {}

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path = ".") -> Registry:
        """Open the registry whose stemma.yaml is at or above `path`."""
        repo_root = find_repo_root(Path(path))
        return cls._from_tree(repo_root, WorkTree(repo_root))

    @classmethod
    def at_revision(cls, path: str | Path, rev: str) -> Registry:
        """The registry as it was at git revision `rev` (read-only)."""
        import subprocess

        start = Path(path).resolve()
        top = Path(
            subprocess.run(
                ["git", "rev-parse", "--show-toplevel"],
                cwd=start,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or start
        )
        try:
            repo_root = find_repo_root(start)
        except RegistryNotFound:
            repo_root = start
        prefix = str(PurePosixPath(repo_root.relative_to(top))) if repo_root != top else ""
        tree = GitTree(top, rev)
        if prefix:
            tree = _SubTree(tree, prefix)  # type: ignore[assignment]
        return cls._from_tree(repo_root, tree)

    @classmethod
    def _from_tree(cls, repo_root: Path, tree: Tree) -> Registry:
        text = tree.read_text(SETTINGS_FILE)
        if text is None:
            raise RegistryNotFound(path=f"{repo_root} ({tree.label})")
        doc = load_yaml_text(text, SETTINGS_FILE)  # the fast reader: PyYAML only if needed
        if not settings_look_valid(doc):  # the full schema only when it can find something
            doc = parse_yaml_document(text, SETTINGS, SETTINGS_FILE)
        settings = Settings.from_dict(doc)
        reg = cls(repo_root, settings, tree)
        base = repo_root.resolve()
        if reg.root != base and base not in reg.root.parents:
            raise PathEscape(
                SETTINGS_FILE,
                f"root {settings.root!r} lies outside the repository; name a folder inside it",
                pointer="/root",
            )
        return reg

    @classmethod
    def init(cls, path: str | Path = ".", root: str = ".") -> Registry:
        """Create stemma.yaml, models/ and datasets/; git init / dvc init when needed."""
        repo_root = Path(path).resolve()
        repo_root.mkdir(parents=True, exist_ok=True)
        if (repo_root / SETTINGS_FILE).exists():
            raise RegistryExists(path=str(repo_root))
        settings = Settings(root=root)
        validate_document(settings.to_dict(), SETTINGS, SETTINGS_FILE)
        if _run(["git", "rev-parse", "--show-toplevel"], repo_root) is None:
            _run(["git", "init", "-q"], repo_root, required=True)
        top = Path(_run(["git", "rev-parse", "--show-toplevel"], repo_root) or repo_root)
        if not (repo_root / ".dvc").is_dir() and not (top / ".dvc").is_dir():
            args = [sys.executable, "-m", "dvc", "init", "-q"]
            if top.resolve() != repo_root:
                args.append("--subdir")
            _run(args, repo_root, required=True)
            _run([sys.executable, "-m", "dvc", "config", "core.autostage", "true"], repo_root)
        write_atomic(repo_root / SETTINGS_FILE, dump_yaml(settings.to_dict()))
        reg_root = (repo_root / root).resolve()
        for sub in KINDS:
            (reg_root / sub).mkdir(parents=True, exist_ok=True)
            keep = reg_root / sub / ".gitkeep"
            if not keep.exists():
                keep.write_text("")
        ignore = repo_root / ".gitignore"
        lines = ignore.read_text().splitlines() if ignore.exists() else []
        # the index, a build's untracked run note and its commit folders (migration/commit.py)
        wanted = [f"/{INDEX_DIR}/", LAST_RUN_FILE, f"{STAGING_DIR}/", f"{COMMITTING_DIR}/"]
        missing = [line for line in wanted if line not in lines]
        if missing:
            write_atomic(ignore, "\n".join([*lines, *missing]) + "\n")
        return cls.open(repo_root)

    # -- paths ----------------------------------------------------------------------------

    def rel(self, *parts: str) -> str:
        """A repo-relative POSIX path under the registry root."""
        joined = "/".join(parts) if self.rel_root == "." else "/".join((self.rel_root, *parts))
        # Already normal (no empty or "." part, not absolute): what PurePosixPath would give,
        # without building one (this runs for every file of every model).
        if joined and "//" not in joined and "/./" not in f"/{joined}/" and joined[0] != "/":
            return joined if joined[-1] != "/" else str(PurePosixPath(joined))
        return str(PurePosixPath(self.rel_root, *parts))

    def model_dir(self, name: str) -> Path:
        """Folder of a model; `PathEscape` when it resolves outside the registry root."""
        return self._folder(MODELS_DIR, name)

    def dataset_dir(self, name: str) -> Path:
        """Folder of a dataset; `PathEscape` when it resolves outside the registry root."""
        return self._folder(DATASETS_DIR, name)

    def _folder(self, kind: str, name: str) -> Path:
        # Every read and write of a model's or dataset's files goes through here: a folder
        # (or models/, datasets/) linked to somewhere else is refused, never followed.
        folder = self.root / kind / name
        confined(folder, self.root, self.rel(kind, name))
        return folder

    def resolve(self, relpath: str, pointer: str = "", display: str = "") -> Path:
        """A path from a spec, resolved and confined to the repository."""
        where = display or "path"
        try:
            target = (self.root / relpath).resolve()
        except (OSError, ValueError):
            raise PathEscape(where, f"cannot resolve {relpath!r:.80}", pointer=pointer) from None
        base = self.repo_root.resolve()
        if target != base and base not in target.parents:
            raise PathEscape(
                where, f"path {relpath!r:.80} lies outside the repository", pointer=pointer
            )
        return target

    # -- listing and reading --------------------------------------------------------------

    def model_names(self) -> list[str]:
        """Names of declared models, sorted."""
        return self._names(MODELS_DIR)

    def dataset_names(self) -> list[str]:
        """Names of declared datasets, sorted."""
        return self._names(DATASETS_DIR)

    def _names(self, kind: str) -> list[str]:
        key = ("names", kind)
        if key not in self._cache:
            base, exists = self.rel(kind), self.tree.exists
            # Each name is one plain folder name (no "/", not hidden): the joined text is
            # the path `rel` would make, without a PurePosixPath for each.
            self._cache[key] = [
                n
                for n in self.tree.subdirs(base)
                if exists(f"{base}/{n}/{SPEC_FILE}") or exists(f"{base}/{n}/{MANIFEST_FILE}")
            ]
        names: list[str] = self._cache[key]
        return names

    def has_model(self, name: str) -> bool:
        """True when a model of that name is declared."""
        return name in self._name_set(MODELS_DIR)

    def has_dataset(self, name: str) -> bool:
        """True when a dataset of that name is declared."""
        return name in self._name_set(DATASETS_DIR)

    def _name_set(self, kind: str) -> frozenset[str]:
        key = ("name set", kind)
        if key not in self._cache:
            self._cache[key] = frozenset(self._names(kind))
        names: frozenset[str] = self._cache[key]
        return names

    def model_spec(self, name: str) -> ModelSpec:
        """The validated spec of a model."""
        path = self.rel(MODELS_DIR, name, SPEC_FILE)
        doc = self._load(path, MODEL_SPEC, yaml=True)
        if doc is None:
            # A registered model (imported weights) has a manifest and no spec to build from.
            manifest = self.model_manifest(name)
            if manifest is None:
                raise ModelNotFound(name, hint=self._hint(name, self.model_names()))
            return ModelSpec(name, manifest.path, manifest.raw["spec"], registered=True)
        self._check_name(name, "model", path)
        return ModelSpec.from_dict(name, doc, path)

    def dataset_spec(self, name: str) -> DatasetSpec:
        """The validated spec of a dataset."""
        path = self.rel(DATASETS_DIR, name, SPEC_FILE)
        doc = self._load(path, DATASET_SPEC, yaml=True)
        if doc is None:
            raise DatasetNotFound(name, hint=self._hint(name, self.dataset_names()))
        self._check_name(name, "dataset", path)
        return DatasetSpec.from_dict(name, doc, path)

    @staticmethod
    def _check_name(name: str, kind: str, path: str) -> None:
        """Raise the located error of a folder name that breaks the naming grammar."""
        try:
            check_name(name, f"{kind} name")
        except InvalidName as exc:
            raise InvalidFolderName(path, f"{exc.message}; rename the folder") from None

    def model_manifest(self, name: str) -> Manifest | None:
        """The model's manifest, or None when it has not been built."""
        path = self.rel(MODELS_DIR, name, MANIFEST_FILE)
        doc = self._load(path, MODEL_MANIFEST, yaml=False)
        return None if doc is None else Manifest(name, path, doc)

    def dataset_manifest(self, name: str) -> Manifest | None:
        """The dataset's manifest, or None when it has not been built."""
        path = self.rel(DATASETS_DIR, name, MANIFEST_FILE)
        doc = self._load(path, DATASET_MANIFEST, yaml=False)
        return None if doc is None else Manifest(name, path, doc)

    def _load(self, path: str, schema: str, yaml: bool) -> dict[str, Any] | None:
        key = ("doc", path)
        if key not in self._cache:
            text = self.tree.read_text(path)
            if text is None:
                self._cache[key] = None
            elif yaml:
                self._cache[key] = parse_yaml_document(text, schema, path)
            else:
                self._cache[key] = parse_json_document(text, schema, path)
        doc: dict[str, Any] | None = self._cache[key]
        return doc

    @staticmethod
    def _hint(name: str, names: list[str]) -> str:
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        return f"; did you mean {close[0]!r}?" if close else ""

    # -- writing --------------------------------------------------------------------------

    def write_model_manifest(self, name: str, doc: Mapping[str, Any]) -> str:
        """Fill in the content id, validate and write a model manifest atomically."""
        return self._write_manifest(MODELS_DIR, name, doc, MODEL_MANIFEST)

    def write_dataset_manifest(self, name: str, doc: Mapping[str, Any]) -> str:
        """Fill in the content id, validate and write a dataset manifest atomically."""
        return self._write_manifest(DATASETS_DIR, name, doc, DATASET_MANIFEST)

    def remember(self, path: str, doc: dict[str, Any]) -> None:
        """Take `doc` as the validated document of `path` (repo-relative) without reading
        it: a check that knows the file unchanged since it validated it."""
        self._cache[("doc", path)] = doc

    def known(self, path: str) -> dict[str, Any] | None:
        """The validated document of `path` read or remembered so far, if any (no I/O)."""
        doc: dict[str, Any] | None = self._cache.get(("doc", path))
        return doc

    def forget(self, path: str) -> None:
        """Drop what was read of `path` (repo-relative): a build has just replaced the file."""
        self._cache.pop(("doc", path), None)

    def _write_manifest(self, kind: str, name: str, doc: Mapping[str, Any], schema: str) -> str:
        if not isinstance(self.tree, WorkTree):
            raise StemmaError(f"cannot write to {self.tree.label}: it is read-only")
        full = dict(doc)
        full["id"] = content_id(full)
        path = self.rel(kind, name, MANIFEST_FILE)
        validate_document(full, schema, path)
        write_atomic(self._folder(kind, name) / MANIFEST_FILE, canonical_json(full))
        self._cache.pop(("doc", path), None)
        return str(full["id"])


class _SubTree:
    """A git tree seen from a sub-folder (a registry that is not at the repository's top)."""

    def __init__(self, tree: GitTree, prefix: str) -> None:
        self.inner, self.prefix, self.label = tree, prefix, tree.label

    def read_text(self, path: str) -> str | None:
        return self.inner.read_text(str(PurePosixPath(self.prefix, path)))

    def subdirs(self, path: str) -> list[str]:
        return self.inner.subdirs(str(PurePosixPath(self.prefix, path)))

    def exists(self, path: str) -> bool:
        return self.inner.exists(str(PurePosixPath(self.prefix, path)))


def _run(args: list[str], cwd: Path, required: bool = False) -> str | None:
    """Run a command; its stdout, or None when it failed (raise when `required`)."""
    import subprocess  # imported where used: reading a registry runs no command

    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        if required:
            tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise StemmaError(f"{' '.join(args[:3])} failed in {cwd}: {tail}")
        return None
    return proc.stdout.strip()
