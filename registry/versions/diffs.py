"""What changed from one version of a model to another (`stemma diff`), as typed rows.

The rows are read from the manifests' typed records (`records.manifest`); only the spec, a
free JSON document compared by JSON pointer, is read as the document it is. `to_dict()` gives
the JSON that `stemma diff --json` writes. This module is apart from `resolve` because
`stemma ls` imports `resolve` and never loads the typed manifest records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stemma.registry.records.core import Manifest
from stemma.registry.records.manifest import (
    DatasetRef,
    ModelManifest,
    Source,
    Tensor,
    model_record,
)
from stemma.registry.rules.naming import parse_ref
from stemma.registry.rules.pointer import escape
from stemma.registry.store.handle import Registry
from stemma.registry.versions.resolve import resolve

__all__ = [
    "DatasetChange",
    "ManifestDiff",
    "MetricChange",
    "Side",
    "SourceChange",
    "SpecChange",
    "TensorChange",
    "TensorFacts",
    "WeightsChange",
    "diff",
]


def _doc(record: Source | DatasetRef | None) -> dict[str, Any] | None:
    """A block's document as the manifest holds it, None where it is null or absent."""
    return None if record is None else record.to_dict()


@dataclass(frozen=True)
class Side:
    """One of the two versions: the text that named it, its model and its manifest id."""

    ref: str
    name: str
    id: str

    def to_dict(self) -> dict[str, Any]:
        """The side's JSON form."""
        return {"ref": self.ref, "name": self.name, "id": self.id}


@dataclass(frozen=True)
class SourceChange:
    """The source block of each version (None for a model trained from scratch)."""

    before: Source | None
    after: Source | None

    @property
    def changed(self) -> bool:
        """True when the two blocks differ as documents."""
        return _doc(self.before) != _doc(self.after)

    def to_dict(self) -> dict[str, Any]:
        """Both blocks as the manifests hold them, and whether they differ."""
        return {"before": _doc(self.before), "after": _doc(self.after), "changed": self.changed}


@dataclass(frozen=True)
class SpecChange:
    """A spec leaf that differs, by JSON pointer (None where a side lacks it)."""

    pointer: str
    before: Any
    after: Any

    def to_dict(self) -> dict[str, Any]:
        """The row's JSON form."""
        return {"pointer": self.pointer, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class MetricChange:
    """A metric of either version, with its value on each side (None where it has none)."""

    metric: str
    before: float | None
    after: float | None

    @property
    def delta(self) -> float | None:
        """After minus before, rounded to 12 places; None unless both sides have a value."""
        if self.before is None or self.after is None:
            return None
        return round(self.after - self.before, 12)

    def to_dict(self) -> dict[str, Any]:
        """The row's JSON form."""
        return {
            "metric": self.metric,
            "before": self.before,
            "after": self.after,
            "delta": self.delta,
        }


@dataclass(frozen=True)
class TensorFacts:
    """What a diff compares of a tensor, in the order it names them (not its kind)."""

    shape: tuple[int, ...]
    dtype: str
    origin: str
    frozen: bool
    source_name: str | None

    @classmethod
    def of(cls, tensor: Tensor) -> TensorFacts:
        """The compared facts of a manifest's tensor."""
        return cls(tensor.shape, tensor.dtype, tensor.origin, tensor.frozen, tensor.source_name)

    def differing(self, other: TensorFacts) -> tuple[str, ...]:
        """The names of the facts that differ from `other`'s, in field order."""
        return tuple(
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        )

    def to_dict(self) -> dict[str, Any]:
        """The facts' JSON form (every field, null where the tensor has none)."""
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "origin": self.origin,
            "frozen": self.frozen,
            "source_name": self.source_name,
        }


@dataclass(frozen=True)
class TensorChange:
    """A tensor added, removed, or whose facts changed."""

    name: str
    before: TensorFacts | None
    after: TensorFacts | None

    @property
    def change(self) -> str:
        """ "added", "removed" or "changed"."""
        if self.before is None:
            return "added"
        return "removed" if self.after is None else "changed"

    @property
    def fields(self) -> tuple[str, ...]:
        """The facts that changed (none for a tensor added or removed)."""
        if self.before is None or self.after is None:
            return ()
        return self.before.differing(self.after)

    def to_dict(self) -> dict[str, Any]:
        """The row's JSON form."""
        return {
            "name": self.name,
            "change": self.change,
            "fields": list(self.fields),
            "before": None if self.before is None else self.before.to_dict(),
            "after": None if self.after is None else self.after.to_dict(),
        }


@dataclass(frozen=True)
class DatasetChange:
    """A dataset role whose reference differs (None where a side has no such role)."""

    role: str
    before: DatasetRef | None
    after: DatasetRef | None

    def to_dict(self) -> dict[str, Any]:
        """The row's JSON form: each reference as the manifest holds it."""
        return {"role": self.role, "before": _doc(self.before), "after": _doc(self.after)}


@dataclass(frozen=True)
class WeightsChange:
    """The sha256 of each version's weights."""

    before: str
    after: str

    @property
    def changed(self) -> bool:
        """True when the weights differ."""
        return self.before != self.after

    def to_dict(self) -> dict[str, Any]:
        """Both hashes and whether they differ."""
        return {"before": self.before, "after": self.after, "changed": self.changed}


@dataclass(frozen=True)
class ManifestDiff:
    """What changed from version A to version B; each list holds only what differs, but for
    the metrics, which list every metric of either side."""

    a: Side
    b: Side
    source: SourceChange
    spec: tuple[SpecChange, ...]
    metrics: tuple[MetricChange, ...]
    tensors: tuple[TensorChange, ...]
    datasets: tuple[DatasetChange, ...]
    weights: WeightsChange

    @property
    def same(self) -> bool:
        """True when both name the same manifest id."""
        return self.a.id == self.b.id

    def to_dict(self) -> dict[str, Any]:
        """The JSON that `stemma diff --json` writes."""
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "same": self.same,
            "source": self.source.to_dict(),
            "spec": [c.to_dict() for c in self.spec],
            "metrics": [m.to_dict() for m in self.metrics],
            "tensors": [t.to_dict() for t in self.tensors],
            "datasets": [c.to_dict() for c in self.datasets],
            "weights": self.weights.to_dict(),
        }


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """JSON pointer -> leaf value; lists are leaves (a changed list reads best whole)."""
    if isinstance(obj, dict) and obj:
        flat: dict[str, Any] = {}
        for key, value in obj.items():
            flat.update(_flatten(value, f"{prefix}/{escape(str(key))}"))
        return flat
    return {prefix or "/": obj}


def _spec_changes(before: Manifest, after: Manifest) -> tuple[SpecChange, ...]:
    fa, fb = _flatten(before.spec), _flatten(after.spec)
    return tuple(
        SpecChange(p, fa.get(p), fb.get(p))
        for p in sorted(fa.keys() | fb.keys())
        if fa.get(p) != fb.get(p)
    )


def _metric_changes(
    before: Mapping[str, float], after: Mapping[str, float]
) -> tuple[MetricChange, ...]:
    return tuple(
        MetricChange(metric, before.get(metric), after.get(metric))
        for metric in sorted(before.keys() | after.keys())
    )


def _tensor_changes(before: ModelManifest, after: ModelManifest) -> tuple[TensorChange, ...]:
    # by name: where a manifest repeats a name, its last tensor of that name counts
    fa = {t.name: TensorFacts.of(t) for t in before.architecture.tensors}
    fb = {t.name: TensorFacts.of(t) for t in after.architecture.tensors}
    return tuple(
        TensorChange(name, fa.get(name), fb.get(name))
        for name in sorted(fa.keys() | fb.keys())
        if fa.get(name) != fb.get(name)
    )


def _dataset_changes(before: ModelManifest, after: ModelManifest) -> tuple[DatasetChange, ...]:
    da, db = before.datasets, after.datasets
    return tuple(
        DatasetChange(role, da.get(role), db.get(role))
        for role in sorted(da.keys() | db.keys())
        if _doc(da.get(role)) != _doc(db.get(role))
    )


def diff(reg: Registry, a: str, b: str) -> ManifestDiff:
    """What changed from version A to version B (`NAME@REF` or model names; B may be `@REF`)."""
    if b.startswith("@"):
        b = parse_ref(a).name + b
    ma, mb = resolve(reg, a), resolve(reg, b)
    ra, rb = model_record(ma), model_record(mb)
    return ManifestDiff(
        a=Side(a, ma.name, ma.id),
        b=Side(b, mb.name, mb.id),
        source=SourceChange(ra.source, rb.source),
        spec=_spec_changes(ma, mb),
        metrics=_metric_changes(ra.metrics, rb.metrics),
        tensors=_tensor_changes(ra, rb),
        datasets=_dataset_changes(ra, rb),
        weights=WeightsChange(ra.weights.sha256, rb.weights.sha256),
    )
