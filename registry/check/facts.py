"""What a model folder's own files say (`ModelFacts`), as the checks across folders need it,
read once per folder and kept while its files are unchanged (`store._checkcache`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from stemma.registry.check.metricfiles import mismatches
from stemma.registry.check.violations import (
    FAILED_CHECK,
    FAILED_GATE,
    METRICS_MISMATCH,
    Violation,
    from_error,
    violation_list,
    violation_of,
)
from stemma.registry.errors import StemmaError
from stemma.registry.pipeline.locks import folder_locked_md5
from stemma.registry.records.core import Manifest, ModelSpec
from stemma.registry.rules.layout import MANIFEST_FILE, SPEC_FILE
from stemma.registry.rules.status import Built
from stemma.registry.store.handle import Registry


@dataclass(frozen=True)
class ModelFacts:
    """What a model folder's own files say, as the checks across folders need it: the spec
    (or why it cannot be read), the manifest's ids (or why not), and the violations found in
    the folder alone. Plain data, so `_checkcache` keeps it while the files are unchanged."""

    spec: ModelSpec | None = None
    spec_error: Violation | None = None
    digest: str = ""  # of the spec
    manifest: bool = False  # a readable manifest is there
    manifest_error: Violation | None = None
    manifest_path: str = ""
    manifest_id: str | None = None
    spec_digest: str = ""  # the manifest's
    source_id: str | None = None
    id_mismatch: bool = False
    tail: tuple[Violation, ...] = ()  # metric files, gates, checks: in that order
    weights_md5: str | None = None  # the manifest's
    locked_md5: str | None = None  # of the weights in the folder's dvc.lock
    datasets: tuple[tuple[str, str], ...] = ()  # (name, manifest id) of each recorded dataset

    def to_list(self) -> list[Any]:
        """JSON-ready form (positional: a large registry stores ten thousand of these)."""
        spec = self.spec
        return [
            None if spec is None else [spec.path, spec.raw, spec.registered],
            violation_list(self.spec_error),
            self.digest,
            self.manifest,
            violation_list(self.manifest_error),
            self.manifest_path,
            self.manifest_id,
            self.spec_digest,
            self.source_id,
            self.id_mismatch,
            [violation_list(v) for v in self.tail],
            self.weights_md5,
            self.locked_md5,
            [list(pair) for pair in self.datasets],
        ]

    @classmethod
    def from_list(
        cls, name: str, doc: list[Any], shared: dict[Any, Any] | None = None
    ) -> ModelFacts:
        """Read back `to_list`. Equal values that many folders hold (the recorded datasets,
        a spec digest the manifest repeats, a spec's blocks: its strategy, training, gates,
        ...) are kept once, in `shared` across the calls of one check: at 30,000 models,
        ~20 MiB less than a copy per folder for the first two, and the specs' blocks 75 -> 20
        MiB (a spec's own blocks are never changed: `ModelSpec` hands out copies)."""
        spec, error, digest, manifest, manifest_error, path, mid, sd, sid, mismatch, tail = doc[:11]
        weights_md5, locked_md5, datasets = doc[11:]
        memo: dict[Any, Any] = {} if shared is None else shared
        pairs = tuple(_once(memo, (str(n), str(i))) for n, i in datasets)
        if spec is not None:
            spec = ModelSpec(name, spec[0], _blocks(memo, spec[1]), bool(spec[2]))
        return cls(
            spec=spec,
            spec_error=violation_of(error),
            digest=digest,
            manifest=manifest,
            manifest_error=violation_of(manifest_error),
            manifest_path=path,
            manifest_id=mid,
            spec_digest=digest if sd == digest else sd,
            source_id=sid,
            id_mismatch=mismatch,
            tail=tuple(Violation(*v) for v in tail),
            weights_md5=weights_md5,
            locked_md5=locked_md5,
            datasets=_once(memo, pairs),
        )


def _blocks(memo: dict[Any, Any], doc: Any) -> Any:
    """`doc` with each of its blocks (a nested object or list) the equal one `memo` holds."""
    if type(doc) is not dict:
        return doc
    out = {}
    for key, value in doc.items():
        kind = type(value)
        out[key] = memo.setdefault(_shape(value), value) if kind is dict or kind is list else value
    return out


def _shape(value: Any) -> Any:
    """A hashable value equal only for JSON values with the same keys in the same order,
    the same types and the same contents (1, 1.0 and True apart)."""
    kind = type(value)
    if kind is dict:
        return (dict, tuple([(k, _shape(v)) for k, v in value.items()]))
    if kind is list:
        return (list, tuple([_shape(v) for v in value]))
    return (kind, value)


def _once(memo: dict[Any, Any], value: Any) -> Any:
    """The value equal to `value` that `memo` holds, `value` itself the first time."""
    return memo.setdefault(value, value)


def model_facts(reg: Registry, name: str) -> ModelFacts:
    """Read the files of model `name` and find what they say (never raises for a bad file)."""
    subject = f"model:{name}"
    try:
        spec = reg.model_spec(name)
    except StemmaError as exc:
        return ModelFacts(spec_error=from_error(exc, subject, reg.rel("models", name, SPEC_FILE)))
    facts = ModelFacts(spec=spec, digest=spec.digest)
    try:
        manifest = reg.model_manifest(name)
    except StemmaError as exc:
        error = from_error(exc, subject, reg.rel("models", name, MANIFEST_FILE))
        return replace(facts, manifest_error=error)
    if manifest is None:
        return facts
    # The facts are all a check keeps of a manifest: the parsed document is let go (30,000
    # of them held at once took ~0.7 GiB); a later reader reads the file again.
    reg.forget(manifest.path)
    tail = _metric_files(reg, manifest)
    for gate in manifest.gates:
        if not gate.passed:
            tail.append(
                Violation(
                    FAILED_GATE,
                    manifest.path,
                    f"gate {gate.metric} {gate.op} {gate.threshold} failed (value {gate.value})",
                    "/gates",
                    subject=subject,
                )
            )
    for check_name in manifest.failed_checks:
        tail.append(
            Violation(
                FAILED_CHECK,
                manifest.path,
                f"check {check_name} failed",
                f"/checks/{check_name}",
                subject=subject,
            )
        )
    built = manifest.status_record
    return replace(
        facts,
        manifest=True,
        manifest_path=manifest.path,
        manifest_id=manifest.id,
        spec_digest=manifest.spec_digest,
        source_id=manifest.source_id,
        id_mismatch=manifest.computed_id != manifest.id,
        tail=tuple(tail),
        weights_md5=built.weights_md5,
        locked_md5=folder_locked_md5(reg, name),  # for the audit's lock check
        datasets=built.datasets,
    )


def weights_md5(manifest: Any) -> str | None:
    """The md5 of the weights a (raw) manifest records, as DVC records it, if any."""
    return Built.of(manifest).weights_md5 if isinstance(manifest, dict) else None


def _metric_files(reg: Registry, manifest: Manifest) -> list[Violation]:
    return [
        Violation(METRICS_MISMATCH, m.path, m.message, m.pointer, subject=f"model:{manifest.name}")
        for m in mismatches(reg, manifest)
    ]
