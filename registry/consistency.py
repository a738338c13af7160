"""Consistency checks beyond the schema, each with a stable code.

`check(reg)` reads every spec and manifest once and returns the violations it finds; it never
raises for a bad file (a bad file is a violation), so one run reports everything at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

from .dag import Forest
from .errors import LocatedError, StemmaError
from .naming import NAME_RE, NAME_RULE, parse_source
from .records import DatasetSpec, Manifest, ModelSpec
from .registry import Registry
from .status import SOURCE_CHANGED, SPEC_CHANGED, staleness
from .taskspec import spec_problems, training_task

# Stable violation codes; tools and the audit key on these strings.
SCHEMA = "schema"
INVALID_NAME = "invalid-name"
DANGLING_SOURCE = "dangling-source"
DANGLING_DATASET = "dangling-dataset"
CYCLE = "cycle"
PATH_ESCAPE = "path-escape"
UNTRUSTED_ENTRYPOINT = "untrusted-entrypoint"
STALE_MANIFEST = "stale-manifest"
ID_MISMATCH = "id-mismatch"
FAILED_GATE = "failed-gate"
FAILED_CHECK = "failed-check"
METRICS_MISMATCH = "metrics-mismatch"

CODES = (
    SCHEMA,
    INVALID_NAME,
    DANGLING_SOURCE,
    DANGLING_DATASET,
    CYCLE,
    PATH_ESCAPE,
    UNTRUSTED_ENTRYPOINT,
    STALE_MANIFEST,
    ID_MISMATCH,
    FAILED_GATE,
    FAILED_CHECK,
    METRICS_MISMATCH,
)


@dataclass(frozen=True)
class Violation:
    """One problem found in the registry."""

    code: str
    path: str
    message: str
    pointer: str = ""
    line: int | None = None
    subject: str = ""  # "model:NAME" or "dataset:NAME"

    def __str__(self) -> str:
        where = self.path + (f":{self.line}" if self.line is not None else "")
        if self.pointer:
            where += f" at {self.pointer}"
        return f"{where}: {self.message} [{self.code}]"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


def _from_error(exc: StemmaError, subject: str, fallback: str) -> Violation:
    if isinstance(exc, LocatedError):
        return Violation(
            exc.code if exc.code in CODES else SCHEMA,
            exc.path,
            exc.reason,
            exc.pointer,
            exc.line,
            subject,
        )
    return Violation(getattr(exc, "code", SCHEMA), fallback, exc.message, subject=subject)


def check(reg: Registry) -> list[Violation]:
    """Every violation in the registry, in a stable order. Documents unchanged since they
    last passed their schema are not validated again (`_validcache`)."""
    from . import _validcache

    with _validcache.remembering(reg.repo_root):
        found = _check(reg)
        if any(v.code not in _OUTCOMES for v in found):
            _validcache.discard()  # bad input: the check changes no file
    return found


# Violations that judge a build's outcome, not a file's content: a registry that has them is
# well-formed, and its documents may be remembered as passing their schemas.
_OUTCOMES = frozenset({STALE_MANIFEST, FAILED_GATE, FAILED_CHECK})


def _check(reg: Registry) -> list[Violation]:
    found: list[Violation] = []
    datasets: dict[str, DatasetSpec] = {}
    models: dict[str, ModelSpec] = {}
    for name in reg.dataset_names():
        subject = f"dataset:{name}"
        path = reg.rel("datasets", name, "spec.yaml")
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
            reg.dataset_manifest(name)
        except StemmaError as exc:
            found.append(_from_error(exc, subject, path))
    for name in reg.model_names():
        subject = f"model:{name}"
        path = reg.rel("models", name, "spec.yaml")
        if not NAME_RE.match(name):
            found.append(
                Violation(
                    INVALID_NAME,
                    path,
                    f"invalid model name {name!r}: use {NAME_RULE}",
                    subject=subject,
                )
            )
            continue
        try:
            models[name] = reg.model_spec(name)
        except StemmaError as exc:
            found.append(_from_error(exc, subject, path))
    for spec in models.values():
        found += _model_refs(reg, spec, models)
        found += _task_rules(reg, spec)
    found += _cycles(reg, models)
    for name in models:
        found += _manifest_checks(reg, name, models)
    return found


def _dataset_checks(reg: Registry, spec: DatasetSpec) -> list[Violation]:
    subject = f"dataset:{spec.name}"
    try:
        source = parse_source(spec.source)
    except StemmaError as exc:
        return [Violation(SCHEMA, spec.path, exc.message, "/source", subject=subject)]
    if source.path is not None:
        try:
            reg.resolve(source.path, "/source", spec.path)
        except StemmaError:
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


def _model_refs(reg: Registry, spec: ModelSpec, models: dict[str, ModelSpec]) -> list[Violation]:
    subject = f"model:{spec.name}"
    found = []
    src = spec.source
    if src is not None and not src.auto and src.model not in models:
        hint = Registry._hint(src.model, list(models))
        found.append(
            Violation(
                DANGLING_SOURCE,
                spec.path,
                f"source model {src.model!r} does not exist{hint}",
                "/source/model",
                subject=subject,
            )
        )
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
    # Only the entrypoint family runs the code named (a build ignores it elsewhere).
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
    return found


def _task_rules(reg: Registry, spec: ModelSpec) -> list[Violation]:
    """Losses and gates the training data's task does not allow (`taskspec.spec_problems`)."""
    task = training_task(reg, spec)
    if task is None:
        return []
    return [
        Violation(SCHEMA, spec.path, message, pointer, subject=f"model:{spec.name}")
        for pointer, message in spec_problems(task, spec.raw)
    ]


def _parents(models: dict[str, ModelSpec]) -> dict[str, str]:
    return {
        n: s.source.model
        for n, s in models.items()
        if s.source is not None and not s.source.auto and s.source.model in models
    }


def _cycles(reg: Registry, models: dict[str, ModelSpec]) -> list[Violation]:
    return [
        Violation(
            CYCLE,
            models[loop[0]].path,
            "lineage cycle: " + " -> ".join([*loop, loop[0]]),
            "/source/model",
            subject=f"model:{loop[0]}",
        )
        for loop in Forest(models, _parents(models)).cycles()
    ]


def _manifest_checks(reg: Registry, name: str, models: dict[str, ModelSpec]) -> list[Violation]:
    subject = f"model:{name}"
    try:
        manifest = reg.model_manifest(name)
    except StemmaError as exc:
        return [_from_error(exc, subject, reg.rel("models", name, "manifest.json"))]
    if manifest is None:
        return []
    found = []
    if manifest.computed_id != manifest.id:
        found.append(
            Violation(
                ID_MISMATCH,
                manifest.path,
                "content no longer matches its id (edited by hand?); rebuild with `dvc repro`",
                "/id",
                subject=subject,
            )
        )
    found += list(_staleness(reg, name, models, manifest.path))
    found += _metric_files(reg, manifest)
    for gate in manifest.raw.get("gates", []):
        if not gate["passed"]:
            found.append(
                Violation(
                    FAILED_GATE,
                    manifest.path,
                    f"gate {gate['metric']} {gate['op']} {gate['threshold']}"
                    f" failed (value {gate['value']})",
                    "/gates",
                    subject=subject,
                )
            )
    for check_name, result in sorted((manifest.raw.get("checks") or {}).items()):
        if not result.get("passed", True):
            found.append(
                Violation(
                    FAILED_CHECK,
                    manifest.path,
                    f"check {check_name} failed",
                    f"/checks/{check_name}",
                    subject=subject,
                )
            )
    return found


def _metric_files(reg: Registry, manifest: Manifest) -> list[Violation]:
    from .metricfiles import mismatches

    return [
        Violation(METRICS_MISMATCH, m.path, m.message, m.pointer, subject=f"model:{manifest.name}")
        for m in mismatches(reg, manifest)
    ]


def _staleness(
    reg: Registry, name: str, models: dict[str, ModelSpec], path: str
) -> Iterator[Violation]:
    manifest = reg.model_manifest(name)
    assert manifest is not None
    spec = models[name]
    src = spec.source
    parent_id = None
    if src is not None and not src.auto and src.model in models:
        try:
            parent = reg.model_manifest(src.model)
        except StemmaError:
            parent = None
        parent_id = parent.id if parent is not None else None
    why = staleness(spec.digest, manifest.spec_digest, parent_id, manifest.source_id)
    if why == SPEC_CHANGED:
        yield Violation(
            STALE_MANIFEST,
            path,
            "spec changed since the last build; run `dvc repro`",
            "/spec_digest",
            subject=f"model:{name}",
        )
    elif why == SOURCE_CHANGED:
        assert src is not None
        yield Violation(
            STALE_MANIFEST,
            path,
            f"source {src.model!r} changed since the last build; run `dvc repro`",
            "/source/id",
            subject=f"model:{name}",
        )
