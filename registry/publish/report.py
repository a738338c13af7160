"""A one-page report of a built model: verdict, lineage, transfer, metrics, gates, checks, curve.

`report_record` gathers the facts from manifests (no torch) into a `Report` record
(`_reportdoc`; `model_report` gives its JSON form); `render_text` and `render_html` (in
`_reporthtml`) turn it into a terminal summary or a self-contained HTML page: a
pass/fail banner, the lineage as an inline SVG, and the training curve as a PNG drawn with
matplotlib's Agg backend (imported only when a page is rendered) and embedded as base64.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stemma.registry.errors import BuildError, ModelNotFound, StemmaError
from stemma.registry.publish._reportboxes import load_samples
from stemma.registry.publish._reportdoc import (
    CurvePoint,
    LineageEntry,
    Report,
    ReportTransfer,
    TensorCounts,
    as_report,
)
from stemma.registry.publish._reportfmt import fmt, lineage_line, main_metric, verdict
from stemma.registry.publish._reporthtml import curve_png, render_html
from stemma.registry.query.listing import model_staleness
from stemma.registry.records.core import Manifest, ModelSpec
from stemma.registry.records.manifest import Check, ModelManifest, model_record
from stemma.registry.rules.classlabels import label
from stemma.registry.rules.layout import CURVE_FILE as CURVE_FILE
from stemma.registry.rules.layout import MODELS_DIR
from stemma.registry.store.files import Outputs, read_json
from stemma.registry.store.handle import Registry

__all__ = [
    "Report",
    "curve_png",
    "model_report",
    "render_html",
    "render_text",
    "report_record",
    "write_html",
]

_FIGURE_KEYS = (
    "before",
    "after",
    "relative_drop",
    "mahalanobis_ratio",
    "outlier_share",
    "mmd_pvalue",
    "max_relative_change",
    "mean_relative_change",
)


def _lineage(reg: Registry, name: str) -> tuple[LineageEntry, ...]:
    """The model and its ancestors up to the root, each with its recorded link to its parent."""
    # each model on the way up: its name, its manifest record (None: not built), and where
    # known the relation to its parent and the parent's name
    walked: list[tuple[str, ModelManifest | None, str | None, str | None]] = []
    seen: set[str] = set()
    node: str | None = name
    while node is not None and node not in seen:
        seen.add(node)
        manifest = reg.model_manifest(node)
        built = None if manifest is None else model_record(manifest)
        relation: str | None = None
        parent: str | None = None
        if built is not None:
            if built.source is not None:
                parent, relation = built.source.model, built.source.relation
        else:
            try:
                ref = reg.model_spec(node).source
            except StemmaError:
                ref = None
            if ref is not None and not ref.auto:
                parent, relation = ref.model, ref.relation
        walked.append((node, built, relation, parent))
        node = parent
    chain = []
    for i, (model, built, relation, parent) in enumerate(walked):
        current: bool | None = None
        if i + 1 < len(walked):
            # a link is current when the child was built from the parent's present version
            source = None if built is None else built.source
            parent_built = walked[i + 1][1]
            current = (
                source is not None and parent_built is not None and source.id == parent_built.id
            )
        chain.append(
            LineageEntry(
                name=model,
                built=built is not None,
                id=None if built is None else built.id,
                source=parent,
                metrics=None if built is None else dict(built.metrics),
                train=None if built is None else built.dataset("train"),
                relation=relation,
                source_id=None if built is None or built.source is None else built.source.id,
                current=current,
                cycle=node if i + 1 == len(walked) else None,
            )
        )
    return tuple(chain)


def _class_names(reg: Registry, built: ModelManifest) -> list[str]:
    """The label of each class id the model's per-class figures use: the model's own
    `class_names`, else those of the dataset it was evaluated on (names, or the source
    labels a relabelling selection kept: id 0 of digits 5-9 is "5")."""
    if built.class_names:  # a model spec selects no classes: its names are its labels
        return list(built.class_names)
    for role in ("eval", "train"):
        dataset = built.dataset(role)
        if not dataset:
            continue
        try:
            found = reg.dataset_manifest(dataset)
        except StemmaError:  # an unreadable dataset manifest only costs the labels
            found = None
        if found is not None:
            return list(found.class_labels)
    return []


def _stale(reg: Registry, name: str, manifest: Manifest) -> str | None:
    """Why the model is stale (`status.staleness`), or None; an unreadable spec says so."""
    try:
        return model_staleness(reg, name, manifest)
    except StemmaError as exc:
        return f"its spec cannot be read ({exc})"


def report_record(reg: Registry, name: str) -> Report:
    """Everything the report shows, as a record; the model must be built."""
    manifest = reg.model_manifest(name)
    if manifest is None:
        if not reg.has_model(name):
            raise ModelNotFound(name, hint=Registry._hint(name, reg.model_names()))
        raise BuildError(
            f"{reg.rel(MODELS_DIR, name)}: model {name!r} has not been built; run `dvc repro`"
        )
    built = model_record(manifest)
    curve_path = reg.model_dir(name) / CURVE_FILE
    curve: list[dict[str, Any]] = []
    if curve_path.is_file():
        try:  # bounded, regular, inside the registry; a bad curve is no curve
            loaded = read_json(curve_path, reg.rel(MODELS_DIR, name, CURVE_FILE), root=reg.root)
        except StemmaError:
            loaded = []
        curve = [row for row in loaded if isinstance(row, dict)] if isinstance(loaded, list) else []
    rows = built.architecture.tensors
    gates, checks = built.gates, dict(built.checks or {})
    lineage, stale = _lineage(reg, name), _stale(reg, name, manifest)
    passed, reasons = verdict(gates, checks, stale, lineage)
    return Report(
        name=name,
        id=built.id,
        description=ModelSpec.from_dict(name, built.spec).description,
        source=built.source,
        datasets=dict(built.datasets),
        lineage=lineage,
        architecture=dict(built.architecture.config),
        parameters=built.parameters,
        transfer=ReportTransfer.of_manifest(built.transfer, TensorCounts.of_rows(rows)),
        tensors=rows,
        metrics=dict(built.metrics),
        per_class=dict(built.per_class or {}),
        task=built.task_name,
        class_names=tuple(_class_names(reg, built)),
        gates=gates,
        checks=checks,
        curve=tuple(CurvePoint(extra=row) for row in curve),
        run=built.run,
        stale=stale,
        samples=load_samples(reg, name, built.samples),  # a detector's pictures; others none
        passed=passed,
        reasons=tuple(reasons),
    )


def model_report(reg: Registry, name: str) -> dict[str, Any]:
    """The report as one JSON-ready dict (`report_record(...).to_dict()`)."""
    return report_record(reg, name).to_dict()


def _check_summary(result: Check) -> str:
    figures = result.figures
    parts = [f"{k} {fmt(figures[k])}" for k in _FIGURE_KEYS if k in figures]
    limits = [
        f"{k} {fmt(v)}"
        for k, v in sorted(result.thresholds.items())
        if v is not None and k != "outlier_level"
    ]
    text = ", ".join(parts)
    if limits:
        text += f" (thresholds: {', '.join(limits)})"
    if result.method:
        text += f" [{result.method}]"
    return text


def render_text(report: Report | Mapping[str, Any]) -> str:
    """A terminal summary of a report (a record, or its JSON form)."""
    report = as_report(report)
    lines = [f"model {report.name}  {report.id[7:19]}"]
    if report.description:
        lines.append(report.description)
    if report.passed is not None:
        lines.append(
            ("PASS" if report.passed else "FAIL")
            + "".join(f"\n  {r}" for r in report.reasons or ())
        )
    lines.append("lineage:")
    lines += [f"  {'  ' * i}{lineage_line(e)}" for i, e in enumerate(report.lineage)]
    t = report.transfer
    counts = t.tally
    lines.append(
        f"transfer: mapping {t.mapping or '-'}, mode {'-' if t.mode is None else t.mode};"
        f" {counts.transferred} transferred, {counts.reinitialized} re-initialised,"
        f" {counts.new} new, {counts.frozen} frozen tensors"
    )
    for row in report.tensors:
        lines.append(
            f"  {row.name:<24} {'x'.join(map(str, row.shape)):<12} {row.origin:<13}"
            f" {'frozen' if row.frozen else 'trained':<8} {row.source_name or ''}".rstrip()
        )
    metrics = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(report.metrics.items()))
    lines.append(f"metrics: {metrics or '-'}")
    if report.task != "classification" or report.class_names:
        lines.append(f"task: {report.task}")
    names = report.class_names
    per = sorted(report.per_class.items(), key=lambda kv: int(kv[0]))
    if per:
        shown = [(f"{k} {label(names, k)}" if names else k, fmt(v)) for k, v in per]
        lines.append("per class: " + ", ".join(f"{k} {v}" for k, v in shown))
    for gate in report.gates:
        mark = "pass" if gate.passed else "FAIL"
        lines.append(f"gate {gate.metric} {gate.op} {gate.threshold}: {mark} ({fmt(gate.value)})")
    for check, result in sorted(report.checks.items()):
        mark = "pass" if result.passed else "FAIL"
        lines.append(f"check {check}: {mark}  {_check_summary(result)}")
    curve = report.curve
    if curve:
        last = curve[-1]
        main = main_metric(curve)
        lines.append(
            f"curve: {len(curve)} epochs, final train loss {fmt(last.value('train_loss'))},"
            f" eval {main} {fmt(last.value('eval_' + main))}"
        )
    return "\n".join(lines) + "\n"


def write_html(reg: Registry, path: Path, page: str, overwrite: bool = False) -> Path:
    """Write the page atomically where `Outputs` allows (an existing file only with
    `overwrite`, never a registry file, a link, a pipe or a device); the real path."""
    return Outputs.for_registry(reg.repo_root, reg.root, overwrite).write(path, page)
