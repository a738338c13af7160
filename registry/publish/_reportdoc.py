"""Typed records of a model report: the document, its lineage entries, its transfer tally and
the rows of its training curve.

`report.report_record` builds them; the text and HTML forms read their fields; `to_dict()` gives
the JSON of `stemma report --json` and `from_dict()` reads it back (a `Record` read by its
fields, so a wrong field is a `SchemaError` naming its JSON pointer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar

from stemma.registry.records._reader import NULLABLE, Reader, Record
from stemma.registry.records.manifest import (
    Check,
    DatasetRef,
    Gate,
    Parameters,
    Run,
    Source,
    Tensor,
    Transfer,
)

REPORT = "report"  # how errors name a report document (it has no file of its own)


@dataclasses.dataclass(frozen=True, slots=True)
class LineageEntry(Record):
    """One model of the lineage (the model first, then each source up to the root): its id and
    figures where it is built, and its link to its parent.

    `source` is the parent (None at a root), `relation` the link's kind where known, and
    `source_id` the parent's id the model was built from; `current` (set on every entry but
    the last) says whether that id is the parent's present one, and `cycle` (the last entry
    only) names the model the chain leads back to.
    """

    name: str
    built: bool
    id: str | None
    source: str | None
    metrics: Mapping[str, float] | None = None
    train: Annotated[str | None, NULLABLE] = None  # null where the model trained on none
    relation: str | None = None
    source_id: str | None = None
    current: bool | None = None
    cycle: str | None = None

    def __post_init__(self) -> None:
        """Built without `keys`, the entry takes the report's key order: name, built, id,
        then metrics and train where built, relation and source_id where known, source,
        then current and cycle where set."""
        if self.keys:
            return
        keys = ["name", "built", "id"]
        if self.built:
            keys += ["metrics", "train"]
        keys += [k for k in ("relation", "source_id") if getattr(self, k) is not None]
        keys.append("source")
        keys += [k for k in ("current", "cycle") if getattr(self, k) is not None]
        object.__setattr__(self, "keys", tuple(keys))

    @property
    def short_id(self) -> str:
        """The id's first 12 hex digits, or "not built"."""
        return self.id[7:19] if self.id else "not built"

    @property
    def link_stale(self) -> bool:
        """True when the model was built from an older version of its parent."""
        return self.current is False


@dataclasses.dataclass(frozen=True, slots=True)
class TensorCounts(Record):
    """The report's tally of the tensor rows: how many by origin, and how many are frozen."""

    transferred: int
    reinitialized: int
    new: int
    frozen: int

    @classmethod
    def of_rows(cls, rows: Sequence[Tensor]) -> TensorCounts:
        """The tally of the tensor rows `rows`."""

        def origin(name: str) -> int:
            return sum(t.origin == name for t in rows)

        frozen = sum(t.frozen for t in rows)
        return cls(origin("transferred"), origin("reinitialized"), origin("new"), frozen)


@dataclasses.dataclass(frozen=True, slots=True)
class ReportTransfer(Transfer):
    """The manifest's transfer block (none: empty) with the report's `counts` beside it."""

    counts: TensorCounts | None = None

    @classmethod
    def _check(cls, r: Reader) -> None:
        """A report's transfer block always has its counts."""
        r.obj("counts")

    @classmethod
    def of_manifest(cls, block: Transfer | None, counts: TensorCounts) -> ReportTransfer:
        """`block` as the manifest records it, its keys in its order, then `counts`."""
        if block is None:
            return cls(counts=counts)
        fields = {f.name: getattr(block, f.name) for f in dataclasses.fields(Transfer)}
        keys = block.keys if "counts" in block.keys else (*block.keys, "counts")
        extra = {k: v for k, v in block.extra.items() if k != "counts"}
        return cls(**{**fields, "keys": keys, "extra": extra}, counts=counts)

    @property
    def tally(self) -> TensorCounts:
        """The counts (a report's block always has them; a read refuses one without)."""
        if self.counts is None:
            raise ValueError("a report's transfer block without counts")
        return self.counts


@dataclasses.dataclass(frozen=True, slots=True)
class CurvePoint(Record):
    """One row of the training curve (`curve.json`), kept as written: each task names its
    own figures (epoch, train_loss, eval_accuracy, eval_r2 ...), so all are in `extra`."""

    _OPEN: ClassVar[bool] = True

    def value(self, name: str, default: Any = None) -> Any:
        """The figure `name`, or `default` where the row has none."""
        return self.extra.get(name, default)


@dataclasses.dataclass(frozen=True, slots=True)
class Report(Record):
    """Everything the report of one built model shows.

    Blocks the manifest records are its records (`source`, `datasets`, `parameters`,
    `tensors`, `gates`, `checks`, `run`); `task` is the task's name ("classification" where
    the manifest names none), `class_names` the label of each class id, `stale` why the model
    is stale (None: up to date), `samples` a detector's sample pictures as read from their
    file (`_reportboxes.load_samples`). `passed` and `reasons` are the verdict, which
    `report.report_record` always sets.
    """

    name: str
    id: str
    description: str
    source: Source | None
    datasets: Mapping[str, DatasetRef]
    lineage: tuple[LineageEntry, ...]
    architecture: Mapping[str, Any]
    parameters: Parameters
    transfer: ReportTransfer
    tensors: tuple[Tensor, ...]
    metrics: Mapping[str, float]
    per_class: Mapping[str, float]
    task: str
    class_names: tuple[str, ...]
    gates: tuple[Gate, ...]
    checks: Mapping[str, Check]
    curve: tuple[CurvePoint, ...]
    run: Run
    stale: str | None
    samples: Mapping[str, Any] | None = None
    passed: bool | None = None
    reasons: tuple[str, ...] | None = None


def as_report(report: Report | Mapping[str, Any]) -> Report:
    """A report record, read from its JSON form where given that."""
    return report if isinstance(report, Report) else Report.from_dict(report, REPORT)


__all__ = [
    "REPORT",
    "CurvePoint",
    "LineageEntry",
    "Report",
    "ReportTransfer",
    "TensorCounts",
    "as_report",
]
