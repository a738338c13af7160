"""Consistency checks beyond the schema, each with a stable code.

`check(reg)` reads every spec and manifest once and returns the violations it finds; it never
raises for a bad file (a bad file is a violation), so one run reports everything at once.
What it found is kept in the derived store (`_checkcache`): the next check reads only the
model folders that changed since, and finds again only what they can change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stemma.registry.check import archrules
from stemma.registry.check.facts import ModelFacts, model_facts, weights_md5
from stemma.registry.check.hfdisk import check_saved_dataset
from stemma.registry.check.violations import (
    CODES,
    CYCLE,
    DANGLING_DATASET,
    DANGLING_SOURCE,
    FAILED_CHECK,
    FAILED_GATE,
    ID_MISMATCH,
    INVALID_NAME,
    METRICS_MISMATCH,
    OUTCOMES,
    PATH_ESCAPE,
    SCHEMA,
    STALE_MANIFEST,
    UNTRUSTED_ENTRYPOINT,
    Violation,
    from_error,
    violation_list,
)
from stemma.registry.errors import LocatedError, PathEscape, StemmaError
from stemma.registry.pipeline.locks import conflicted_files
from stemma.registry.records.core import DatasetSpec, ModelSpec
from stemma.registry.rules.dag import Forest
from stemma.registry.rules.layout import (
    DATASETS_DIR,
    MANIFEST_FILE,
    MODELS_DIR,
    SPEC_FILE,
)
from stemma.registry.rules.naming import NAME_RE, NAME_RULE, parse_source
from stemma.registry.rules.parents import parent_map, parent_refs, parents_of
from stemma.registry.rules.parents import problems as parent_problems
from stemma.registry.rules.status import (
    DATA_CHANGED,
    SOURCE_CHANGED,
    SPEC_CHANGED,
    Built,
    gather,
)
from stemma.registry.rules.taskspec import spec_problems, training_task
from stemma.registry.store import _validcache
from stemma.registry.store._checkcache import (
    FolderFacts,
    keep_verdict,
    verdict,
    verdict_key,
    work_stamps,
)
from stemma.registry.store.handle import Registry
from stemma.registry.store.tree import WorkTree

# What callers name: the check, and the violations and folder facts it finds.
__all__ = [
    "CODES",
    "CYCLE",
    "DANGLING_DATASET",
    "DANGLING_SOURCE",
    "FAILED_CHECK",
    "FAILED_GATE",
    "ID_MISMATCH",
    "INVALID_NAME",
    "METRICS_MISMATCH",
    "PATH_ESCAPE",
    "SCHEMA",
    "STALE_MANIFEST",
    "UNTRUSTED_ENTRYPOINT",
    "Checked",
    "ModelFacts",
    "Sections",
    "Violation",
    "check",
    "check_state",
    "folder_facts",
    "model_facts",
    "weights_md5",
]


def check(reg: Registry) -> list[Violation]:
    """Every violation in the registry, in a stable order. Documents unchanged since they
    last passed their schema are not validated again (`_validcache`), and model folders
    unchanged since the last check are not read again (`_checkcache`)."""
    return _checked(reg, whole=True).violations


@dataclass(frozen=True)
class Checked:
    """What one check found: the violations, and what each model folder's files said."""

    violations: list[Violation]
    facts: Mapping[str, ModelFacts]


def check_state(
    reg: Registry,
    borrowed: Callable[[str], ModelFacts | None] | None = None,
    only: Collection[str] | None = None,
) -> Checked:
    """`check`, with the facts of each model folder that `borrowed` gives taken as they are
    instead of read (another state's check, of a folder whose files are the same here);
    with `borrowed`, nothing is stored.

    With `only` (subjects: "model:NAME", "dataset:NAME", "pipeline"), the violations of
    those subjects alone, from the folders they name and their parents' (a model's
    staleness reads its parents' manifest ids) instead of every folder: what an audit asks
    of its base, whose violations only say which of the head's are new. Its violations are
    those of the whole check, but for cycles, which are not looked for (a cycle needs
    every folder), and the hints of dangling sources, which name models from the folders
    instead of the specs that can be read. Nothing is stored."""
    return _checked(reg, borrowed, only)


def _checked(
    reg: Registry,
    borrowed: Callable[[str], ModelFacts | None] | None = None,
    only: Collection[str] | None = None,
    whole: bool = False,
) -> Checked:
    """`check_state`; `whole`: the violations alone are wanted (`check`), so a stored
    verdict may stand for the model folders' (its `facts` are then empty)."""
    with _validcache.remembering(reg.repo_root):
        checked = _check(reg, borrowed, only, whole)
        if _bad(checked.violations):
            _validcache.discard()  # bad input: the check changes no file
    return checked


def _bad(found: list[Violation]) -> bool:
    """True when `found` holds bad input, not only verdicts on builds."""
    return any(v.code not in OUTCOMES for v in found)


def folder_facts(reg: Registry) -> Mapping[str, ModelFacts]:
    """The facts of every model folder (`check_state`'s), for another state to borrow: the
    stored ones where every folder has them, else those of a whole check (which stores them
    when it finds no bad input, as every check does)."""
    with _validcache.remembering(reg.repo_root):
        cache = _folder_facts(reg)
        if cache is not None:
            shared: dict[Any, Any] = {}
            facts: dict[str, ModelFacts] = {}
            for name in reg.model_names():
                known = _stored_facts(cache, name, shared) if NAME_RE.match(name) else None
                if known is None:
                    break  # a folder to read: the whole check reads it, and stores it
                facts[name] = known
                _remember_spec(reg, known)
            else:
                return facts
    return check_state(reg).facts


def _check(
    reg: Registry,
    borrowed: Callable[[str], ModelFacts | None] | None,
    only: Collection[str] | None = None,
    whole: bool = False,
) -> Checked:
    found: list[Violation] = []
    datasets: dict[str, DatasetSpec] = {}
    models: dict[str, ModelSpec] = {}
    data_ids: dict[str, str | None] = {}  # each dataset's manifest id now (None: unreadable)
    for name in reg.dataset_names():
        subject = f"dataset:{name}"
        path = reg.rel("datasets", name, SPEC_FILE)
        if not NAME_RE.match(name):
            found.append(
                Violation(
                    INVALID_NAME,
                    path,
                    f"invalid dataset name {name!r}: use {NAME_RULE}",
                    subject=subject,
                )
            )
            continue
        try:
            datasets[name] = reg.dataset_spec(name)
            found += _dataset_checks(reg, datasets[name])
            dm = reg.dataset_manifest(name)
            data_ids[name] = dm.id if dm is not None else None
        except StemmaError as exc:
            found.append(from_error(exc, subject, path))
        if name not in data_ids:  # no spec (registered) or a bad one: the manifest may still be
            data_ids[name] = _dataset_id(reg, name)
    facts: dict[str, ModelFacts] = {}
    # A focused check (`only`) stores nothing: its cache would drop the folders it skips.
    stamps = _work_stamps(reg) if borrowed is None and only is None else None
    # A verdict only for `check` (an audit's checks keep none: ~10 MiB at 10,000 models)
    verdicts = whole and stamps is not None and not _bad(found)
    key = _verdict_key(reg, datasets) if verdicts else None
    names = reg.model_names()
    if only is not None:
        names = [n for n in names if f"model:{n}" in only]
    stored = verdict(reg, key) if key is not None else None
    read: dict[str, ModelFacts] = {}  # the facts of folders read to bring the verdict up to date
    if stored is not None:
        assert stamps is not None and key is not None
        kept = _from_verdict(reg, stored, stamps, names, data_ids, read)
        if kept is not None:
            sections, changed, cache = kept
            found += sections.flat(names, [n for n in names if n in stored["parents"]])
            found += _pipeline_files(reg, _outer(reg, changed))
            if cache is not None and not _bad(found):  # brought up to date
                cache.save()
                _keep(reg, key, stamps, sections, stored["parents"])
            return Checked(found, {})
    cache = FolderFacts(reg, stamps) if stamps is not None else None
    shared: dict[Any, Any] = {}  # values the stored facts of many folders hold alike
    sections = Sections()
    for name in names:
        if not NAME_RE.match(name):
            problem, subject = f"invalid model name {name!r}: use {NAME_RULE}", f"model:{name}"
            path = reg.rel("models", name, SPEC_FILE)
            sections.folder[name] = [Violation(INVALID_NAME, path, problem, subject=subject)]
            continue
        known = borrowed(name) if borrowed is not None else _stored_facts(cache, name, shared)
        if known is not None:
            facts[name] = known
            if borrowed is None:  # later readers of this registry need not parse it
                _remember_spec(reg, known)
            # Borrowed facts are of folders whose documents an audit reads from the state
            # that lent them: a copy per model here (~15 MiB at 30,000) had no reader.
        else:
            fresh = read.get(name)
            facts[name] = fresh if fresh is not None else model_facts(reg, name)
            if cache is not None:
                cache.put(name, facts[name].to_list())
        error, spec = facts[name].spec_error, facts[name].spec
        if error is not None:
            sections.folder[name] = [error]
        elif spec is not None:
            models[name] = spec
    if only is not None:  # the parents a focused model's staleness reads (their own
        # violations are found too, and left out below)
        for spec in list(models.values()):
            for parent in parents_of(spec):
                if parent in facts or not (NAME_RE.match(parent) and reg.has_model(parent)):
                    continue
                known = borrowed(parent) if borrowed is not None else None
                facts[parent] = known if known is not None else model_facts(reg, parent)
                own = facts[parent].spec
                if facts[parent].spec_error is None and own is not None:
                    models[parent] = own
    tasks: dict[str, str | None] = {}  # training dataset -> its task, found once
    for spec in models.values():
        sections.model(reg, spec, models, facts, data_ids, tasks, only is not None)
    if only is None:
        sections.cycles = _cycles(reg, models)
    found += sections.flat(names, models)
    if cache is not None and not _bad(found):
        cache.save()
    found += _pipeline_files(reg, only)
    if key is not None and not _bad(found) and not any(map(_reads_outside, models.values())):
        assert stamps is not None
        _keep(reg, key, stamps, sections, {n: list(parents_of(s)) for n, s in models.items()})
    if only is not None:
        found = [v for v in found if v.subject in only]
    return Checked(found, facts)


@dataclass
class Sections:
    """The model folders' violations as the check finds them, by part and by model, so that
    a stored verdict can have those of the models a change touches replaced: each folder's
    own (an invalid name, a spec that cannot be read), each spec's references and task
    rules, the lineage's cycles, each manifest's (its own, its staleness)."""

    folder: dict[str, list[Violation]] = field(default_factory=dict)
    refs: dict[str, list[Violation]] = field(default_factory=dict)
    cycles: list[Violation] = field(default_factory=list)
    manifests: dict[str, list[Violation]] = field(default_factory=dict)

    def model(
        self,
        reg: Registry,
        spec: ModelSpec,
        models: Collection[str],
        facts: Mapping[str, ModelFacts],
        data_ids: Mapping[str, str | None],
        tasks: dict[str, str | None],
        focused: bool = False,
    ) -> None:
        """Find the violations of model `spec.name` across folders (`models`: those whose
        specs can be read, in order; `facts`: those of it and its parents; `tasks`: each
        training dataset's task, found once)."""
        if spec.train not in tasks:
            tasks[spec.train] = training_task(reg, spec)
        refs = _model_refs(reg, spec, models, focused) + _task_rules(spec, tasks[spec.train])
        _put(self.refs, spec.name, refs)
        _put(self.manifests, spec.name, _manifest_checks(spec, models, facts, data_ids))

    def flat(self, names: Iterable[str], models: Iterable[str]) -> list[Violation]:
        """The violations in the check's order: the folders' (`names`), the references of
        each of `models`, the cycles, the manifests of each of `models`."""
        found = [v for name in names for v in self.folder.get(name, ())]
        models = list(models)
        found += [v for name in models for v in self.refs.get(name, ())]
        found += self.cycles
        found += [v for name in models for v in self.manifests.get(name, ())]
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the parts with violations only."""

        def listed(part: dict[str, list[Violation]]) -> dict[str, Any]:
            return {n: [violation_list(v) for v in vs] for n, vs in part.items() if vs}

        return {
            "folder": listed(self.folder),
            "refs": listed(self.refs),
            "cycles": [violation_list(v) for v in self.cycles],
            "manifests": listed(self.manifests),
        }

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Sections:
        """Read back `to_dict` (a stored verdict's)."""

        def part(found: Mapping[str, Any]) -> dict[str, list[Violation]]:
            return {n: [Violation(*v) for v in vs] for n, vs in found.items()}

        return cls(
            part(doc["folder"]),
            part(doc["refs"]),
            [Violation(*v) for v in doc["cycles"]],
            part(doc["manifests"]),
        )


def _put(part: dict[str, list[Violation]], name: str, found: list[Violation]) -> None:
    """Set model `name`'s violations in `part`, which holds only models that have some (most
    have none: 10,000 empty lists held ~3 MiB)."""
    if found:
        part[name] = found
    else:
        part.pop(name, None)


def _from_verdict(
    reg: Registry,
    stored: Mapping[str, Any],
    stamps: Mapping[str, str],
    names: list[str],
    data_ids: Mapping[str, str | None],
    facts: dict[str, ModelFacts],
) -> tuple[Sections, list[str], FolderFacts | None] | None:
    """The model folders' violations from the stored verdict (`_checkcache.verdict`: its key
    is this check's), with those of the models a changed folder touches found again, and
    the changed folders (their stamps are not the stored ones). None where the verdict
    cannot stand: a change made a spec readable or unreadable, changed a model's parents
    (which the cycles and every dangling reference's hint read) or made its checks read a
    file outside the folders; the whole check runs then. `facts` gets the facts of the
    changed folders, which are read (and of the folders they touch); the stored folder
    facts with theirs, to save where the check finds no bad input, come last (None where
    no folder changed)."""
    parents: Mapping[str, list[str]] = stored["parents"]  # the models whose specs can be read
    kept, folders = stored["stamps"], reg.tree.subdirs(reg.rel(MODELS_DIR))
    changed = [n for n in folders if stamps.get(n) is None or stamps[n] != kept.get(n)]
    listed = set(names)
    for name in changed:
        now = facts[name] = model_facts(reg, name) if name in listed else ModelFacts()
        spec = now.spec if now.spec_error is None else None
        if (spec is None) != (name not in parents):
            return None
        if spec is not None and (list(parents_of(spec)) != parents[name] or _reads_outside(spec)):
            return None
    sections = Sections.of(stored)
    if not changed:
        return sections, changed, None
    # What a changed folder can change besides its own violations: its children's staleness
    # (its manifest's id). Its references, validity and parents are as they were.
    children: dict[str, list[str]] = {}
    for child, above in parents.items():
        for parent in above:
            children.setdefault(parent, []).append(child)
    touched = {n for n in facts if n in parents}
    touched |= {child for n in facts for child in children.get(n, ())}
    cache = FolderFacts(reg, dict(stamps))
    for name in sorted(touched | {p for n in touched for p in parents[n]}):
        if name not in facts:
            known = _stored_facts(cache, name)
            facts[name] = known if known is not None else model_facts(reg, name)
    for name in changed:  # the facts of the folders read, to keep with the others'
        if name in listed:
            cache.put(name, facts[name].to_list())
    cache.keep_unchanged()
    models = [n for n in names if n in parents]
    valid = _Ordered(models, set(models))
    tasks: dict[str, str | None] = {}
    for name in sorted(touched):
        spec = facts[name].spec
        assert spec is not None
        sections.model(reg, spec, valid, facts, data_ids, tasks)
    return sections, changed, cache


class _Ordered(Collection[str]):
    """Names in order with a set's membership test (`_model_refs` asks both of its models)."""

    def __init__(self, names: list[str], members: set[str]) -> None:
        self.names, self.members = names, members

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _outer(reg: Registry, changed: Iterable[str]) -> set[str]:
    """The subjects whose pipeline files a check from a verdict reads: the root's, every
    dataset's and the changed model folders' (the others had no conflict)."""
    return {
        "pipeline",
        *(f"dataset:{n}" for n in reg.tree.subdirs(reg.rel(DATASETS_DIR))),
        *(f"model:{n}" for n in changed),
    }


def _keep(
    reg: Registry,
    key: str,
    stamps: Mapping[str, str],
    sections: Sections,
    parents: Mapping[str, list[str]],
) -> None:
    """Store the verdict on the model folders, where every folder's stamp can be trusted."""
    folders = reg.tree.subdirs(reg.rel(MODELS_DIR))
    if all(name in stamps for name in folders):
        doc = {"stamps": {n: stamps[n] for n in folders}, "parents": dict(parents)}
        keep_verdict(reg, key, doc | sections.to_dict())


def _pipeline_files(reg: Registry, only: Collection[str] | None = None) -> list[Violation]:
    """DVC's pipeline files that DVC would refuse: merge conflict markers, not text (with
    `only`, those of the folders of those subjects, and the root's for "pipeline")."""
    return [from_error(exc, subject, "") for subject, exc in conflicted_files(reg, only)]


def _remember_spec(reg: Registry, facts: ModelFacts) -> None:
    """Give the registry the spec document the facts hold, as if it had read it."""
    spec = facts.spec
    if spec is not None and not spec.registered:
        reg.remember(spec.path, dict(spec.raw))


def _stored_facts(
    cache: FolderFacts | None, name: str, shared: dict[Any, Any] | None = None
) -> ModelFacts | None:
    """The stored facts of model folder `name` when they apply (None: read the folder);
    `shared` as for `ModelFacts.from_list`."""
    stored = cache.get(name) if cache is not None else None
    if stored is None:
        return None
    try:
        return ModelFacts.from_list(name, stored, shared)
    except (TypeError, ValueError, IndexError, KeyError):  # a damaged cache: read again
        assert cache is not None
        cache.forget(name)
        return None


def _folder_facts(reg: Registry) -> FolderFacts | None:
    """The stored facts of the working tree's model folders, with their stamps now (None for
    a git revision: an audit's base takes the head's facts of the folders that are the same)."""
    stamps = _work_stamps(reg)
    return FolderFacts(reg, stamps) if stamps is not None else None


def _work_stamps(reg: Registry) -> dict[str, str] | None:
    """The stamps of the working tree's model folders now (None for a git revision)."""
    return work_stamps(reg.root) if isinstance(reg.tree, WorkTree) else None


def _verdict_key(reg: Registry, datasets: Mapping[str, DatasetSpec]) -> str:
    """The key a verdict on the model folders is stored under (`_checkcache.verdict_key`):
    besides the folders (each one's stamp is kept in the verdict), the checks across them
    read the settings (trusted entrypoints, limits) and each dataset's spec and manifest
    (names, ids, tasks), all read already."""
    docs = [
        [name, reg.known(spec.path), reg.known(reg.rel(DATASETS_DIR, name, MANIFEST_FILE))]
        for name, spec in datasets.items()
    ]
    inputs = json.dumps([reg.settings.to_dict(), docs], sort_keys=True, default=str)
    return verdict_key(reg, reg.tree.subdirs(reg.rel(MODELS_DIR)), inputs.encode())


def _reads_outside(spec: ModelSpec) -> bool:
    """True when the checks of `spec` read a file outside the model folders (a transformers
    config under `architecture.path`): no verdict stands for it."""
    return spec.architecture.get("family") == "transformers" and "path" in spec.architecture


def _dataset_checks(reg: Registry, spec: DatasetSpec) -> list[Violation]:
    subject = f"dataset:{spec.name}"
    try:
        source = parse_source(spec.source)
    except StemmaError as exc:
        return [Violation(SCHEMA, spec.path, exc.message, "/source", subject=subject)]
    if source.path is not None:
        try:
            folder = reg.resolve(source.path, "/source", spec.path)
            if source.kind == "hf-disk" and folder.is_dir():
                # the files it names must stay inside it too (`datasets` joins them blindly)
                check_saved_dataset(folder, source.value.rstrip("/"))
        except LocatedError as exc:
            if exc.path != spec.path:  # a file of the folder: name it and its field
                return [from_error(exc, subject, spec.path)]
            return [
                Violation(
                    PATH_ESCAPE,
                    spec.path,
                    f"data path {source.value!r} escapes the registry root",
                    "/source",
                    subject=subject,
                )
            ]
    if source.kind == "entrypoint" and source.value not in reg.settings.entrypoints:
        return [
            Violation(
                UNTRUSTED_ENTRYPOINT,
                spec.path,
                f"entrypoint {source.value!r} is not listed under entrypoints in stemma.yaml",
                "/source",
                subject=subject,
            )
        ]
    return []


def _model_refs(
    reg: Registry, spec: ModelSpec, models: Collection[str], focused: bool = False
) -> list[Violation]:
    """Dangling and untrusted references of a spec (`models`: the models whose specs can be
    read, in order; `focused`: only some of them; a dangling source's hint then names models
    from the folders)."""
    subject = f"model:{spec.name}"
    found = []
    # every parent (`parents_of`; a merge has several): a declared one whose own spec is
    # invalid has its own error, the child says nothing
    for ref in parent_refs(spec):
        if ref.name in models or reg.has_model(ref.name):
            continue
        hint = Registry._hint(ref.name, reg.model_names() if focused else list(models))
        found.append(
            Violation(
                DANGLING_SOURCE,
                spec.path,
                f"source model {ref.name!r} does not exist{hint}",
                ref.pointer,
                subject=subject,
            )
        )
    for pointer, message in parent_problems(spec):  # a parent twice, a merge with no method
        found.append(Violation(SCHEMA, spec.path, message, pointer, subject=subject))
    for pointer, dataset in spec.dataset_refs().items():
        if not reg.has_dataset(dataset):
            hint = Registry._hint(dataset, reg.dataset_names())
            found.append(
                Violation(
                    DANGLING_DATASET,
                    spec.path,
                    f"dataset {dataset!r} does not exist{hint}",
                    pointer,
                    subject=subject,
                )
            )
    # The schema refuses `entrypoint` in any other family: only this one runs it.
    entry = spec.architecture.get("entrypoint")
    if spec.architecture.get("family") == "entrypoint" and entry not in reg.settings.entrypoints:
        found.append(
            Violation(
                UNTRUSTED_ENTRYPOINT,
                spec.path,
                f"entrypoint {entry!r} is not listed under entrypoints in stemma.yaml",
                "/architecture/entrypoint",
                subject=subject,
            )
        )
    return found + _architecture_rules(reg, spec)


def _architecture_rules(reg: Registry, spec: ModelSpec) -> list[Violation]:
    """What `archrules` refuses in the architecture: code a transformers config names but
    stemma.yaml does not trust, a dtype that is none, a model past stemma.yaml's limits."""
    arch = spec.architecture
    family = arch.get("family")
    limits = reg.settings.limits
    subject = f"model:{spec.name}"
    if family in ("mlp", "cnn"):
        key = "hidden" if family == "mlp" else "channels"
        widths = [int(w) for w in arch.get(key, [128, 64] if family == "mlp" else [16, 32])]
        params = archrules.layer_parameters(widths, 1 if family == "mlp" else 9)
        if params <= limits["max_parameters"]:
            return []
        message = (
            f"about {params:.3g} parameters exceed limits.max_parameters"
            f" {limits['max_parameters']} in stemma.yaml; raise it there if this model is meant"
        )
        return [Violation(SCHEMA, spec.path, message, f"/architecture/{key}", subject=subject)]
    if family != "transformers":
        return []
    options = arch.get("options") or {}
    trusted = reg.settings.entrypoints
    if "path" not in arch:
        found = archrules.config_problems(arch.get("config") or {}, options, trusted, limits)
        return [
            Violation(UNTRUSTED_ENTRYPOINT if bad else SCHEMA, spec.path, msg, ptr, subject=subject)
            for ptr, msg, bad in archrules.problems_in(found, "/architecture/config")
        ]
    pointer = "/architecture/path"
    try:
        folder = reg.resolve(str(arch["path"]), pointer, spec.path)
        shown = _shown(reg, folder)
        config = archrules.read_config_file(folder, shown)
    except PathEscape as exc:
        return [Violation(PATH_ESCAPE, spec.path, exc.reason, pointer, subject=subject)]
    except StemmaError as exc:
        return [Violation(SCHEMA, spec.path, exc.message, pointer, subject=subject)]
    found = archrules.config_problems(config, options, trusted, limits)
    return [
        Violation(
            UNTRUSTED_ENTRYPOINT if p.untrusted else SCHEMA,
            spec.path,
            p.message
            if p.pointer.startswith("/options")
            else f"{shown}/config.json at {p.pointer}: {p.message}",
            "/architecture" + p.pointer if p.pointer.startswith("/options") else pointer,
            subject=subject,
        )
        for p in found
    ]


def _shown(reg: Registry, folder: Path) -> str:
    """A folder inside the repository as a path from its root, for messages."""
    try:
        return folder.relative_to(reg.repo_root.resolve()).as_posix()
    except ValueError:
        return str(folder)


def _task_rules(spec: ModelSpec, task: str | None) -> list[Violation]:
    """Losses and gates the training data's task does not allow (`taskspec.spec_problems`)."""
    if task is None:
        return []
    return [
        Violation(SCHEMA, spec.path, message, pointer, subject=f"model:{spec.name}")
        for pointer, message in spec_problems(task, spec.raw)
    ]


def _parents(models: dict[str, ModelSpec]) -> dict[str, list[str]]:
    return parent_map(models)


def _cycles(reg: Registry, models: dict[str, ModelSpec]) -> list[Violation]:
    return [
        Violation(
            CYCLE,
            models[loop[0]].path,
            "lineage cycle: " + " -> ".join([*loop, loop[0]]),
            "/source/model",
            subject=f"model:{loop[0]}",
        )
        for loop in Forest.of(models, _parents(models)).cycles()
    ]


def _dataset_id(reg: Registry, name: str) -> str | None:
    """The dataset's manifest id, or None when it has no readable manifest."""
    try:
        dm = reg.dataset_manifest(name)
    except StemmaError:
        return None
    return dm.id if dm is not None else None


def _manifest_checks(
    spec: ModelSpec,
    valid: Container[str],
    facts: Mapping[str, ModelFacts],
    data_ids: Mapping[str, str | None],
) -> list[Violation]:
    """The violations of model `spec.name`'s manifest: its own, and its staleness (`valid`:
    the models whose specs can be read; `facts`: the facts of it and its parents)."""
    name = spec.name
    mine = facts[name]
    if mine.manifest_error is not None:
        return [mine.manifest_error]
    if not mine.manifest:
        return []
    found = []
    if mine.id_mismatch:
        found.append(
            Violation(
                ID_MISMATCH,
                mine.manifest_path,
                "content no longer matches its id (edited by hand?); rebuild with `dvc repro`",
                "/id",
                subject=f"model:{name}",
            )
        )
    found += list(_staleness(spec, valid, facts, data_ids))
    found += mine.tail
    return found


def _staleness(
    spec: ModelSpec,
    valid: Container[str],
    facts: Mapping[str, ModelFacts],
    data_ids: Mapping[str, str | None],
) -> Iterator[Violation]:
    name = spec.name
    mine = facts[name]
    named = parents_of(spec)
    built = Built(mine.spec_digest, mine.source_id, mine.weights_md5, mine.datasets)
    # a parent that is not built, or whose manifest or spec cannot be read, is not judged
    inputs = gather(
        mine.digest,
        built,
        named,
        lambda parent: facts[parent].manifest_id if parent in valid else None,
        data_ids.get,
    )  # no lock: the audit reports that case on its own
    why = inputs.staleness()
    path = mine.manifest_path
    if why == SPEC_CHANGED:
        yield Violation(
            STALE_MANIFEST,
            path,
            "spec changed since the last build; run `dvc repro`",
            "/spec_digest",
            subject=f"model:{name}",
        )
    elif why == SOURCE_CHANGED:
        which = f"source {named[0]!r}" if len(named) == 1 else f"a parent of {', '.join(named)}"
        yield Violation(
            STALE_MANIFEST,
            path,
            f"{which} changed since the last build; run `dvc repro`",
            "/source/id",
            subject=f"model:{name}",
        )
    elif why == DATA_CHANGED:
        ds, now = inputs.changed_datasets()[0]
        state = "has no manifest now" if now is None else "was rebuilt"
        yield Violation(
            STALE_MANIFEST,
            path,
            f"dataset {ds!r} {state} since the last build; run `dvc repro`",
            "/datasets",
            subject=f"model:{name}",
        )
