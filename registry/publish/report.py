"""A one-page report of a built model: verdict, lineage, transfer, metrics, gates, checks, curve.

`model_report` gathers the facts from manifests (no torch); `render_text` and `render_html`
(in `_reporthtml`) turn them into a terminal summary or a self-contained HTML page: a
pass/fail banner, the lineage as an inline SVG, and the training curve as a PNG drawn with
matplotlib's Agg backend (imported only when a page is rendered) and embedded as base64.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

from stemma.registry.errors import BuildError, ModelNotFound, StemmaError
from stemma.registry.publish._reportboxes import load_samples
from stemma.registry.publish._reportfmt import fmt, lineage_line, main_metric, verdict
from stemma.registry.publish._reporthtml import curve_png, render_html
from stemma.registry.query.listing import model_staleness
from stemma.registry.records.core import Manifest
from stemma.registry.rules.classlabels import class_labels, label
from stemma.registry.store.files import Outputs, read_json
from stemma.registry.store.handle import Registry

__all__ = ["curve_png", "model_report", "render_html", "render_text", "write_html"]

CURVE_FILE = "curve.json"
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


def _lineage(reg: Registry, name: str) -> list[dict[str, Any]]:
    """The model and its ancestors up to the root, each with its recorded link to its parent."""
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    node: str | None = name
    while node is not None and node not in seen:
        seen.add(node)
        manifest = reg.model_manifest(node)
        entry: dict[str, Any] = {"name": node, "built": manifest is not None, "id": None}
        parent: str | None = None
        if manifest is not None:
            raw = manifest.raw
            entry["id"] = manifest.id
            entry["metrics"] = dict(raw.get("metrics") or {})
            entry["train"] = ((raw.get("datasets") or {}).get("train") or {}).get("name")
            source = raw.get("source")
            if source:
                parent = str(source["model"])
                entry["relation"] = source["relation"]
                entry["source_id"] = source["id"]
        else:
            try:
                ref = reg.model_spec(node).source
            except StemmaError:
                ref = None
            if ref is not None and not ref.auto:
                parent, entry["relation"] = ref.model, ref.relation
        entry["source"] = parent
        chain.append(entry)
        node = parent
    for child, parent_entry in pairwise(chain):
        # a link is current when the child was built from the parent's present version
        recorded = child.get("source_id")
        child["current"] = recorded is not None and recorded == parent_entry.get("id")
    if node is not None:
        chain[-1]["cycle"] = node
    return chain


def _class_names(reg: Registry, raw: Mapping[str, Any]) -> list[str]:
    """The label of each class id the model's per-class figures use: the model's own
    `class_names`, else those of the dataset it was evaluated on (names, or the source
    labels a relabelling selection kept: id 0 of digits 5-9 is "5")."""
    own = class_labels(raw)
    if own:
        return own
    datasets = raw.get("datasets") or {}
    for role in ("eval", "train"):
        ref = datasets.get(role)
        if not isinstance(ref, Mapping) or not ref.get("name"):
            continue
        try:
            found = reg.dataset_manifest(str(ref["name"]))
        except StemmaError:  # an unreadable dataset manifest only costs the labels
            found = None
        if found is not None:
            return class_labels(found.raw)
    return []


def _stale(reg: Registry, name: str, manifest: Manifest) -> str | None:
    """Why the model is stale (`status.staleness`), or None; an unreadable spec says so."""
    try:
        return model_staleness(reg, name, manifest)
    except StemmaError as exc:
        return f"its spec cannot be read ({exc})"


def model_report(reg: Registry, name: str) -> dict[str, Any]:
    """Everything the report shows, as one JSON-ready dict; the model must be built."""
    manifest = reg.model_manifest(name)
    if manifest is None:
        if not reg.has_model(name):
            raise ModelNotFound(name, hint=Registry._hint(name, reg.model_names()))
        raise BuildError(
            f"{reg.rel('models', name)}: model {name!r} has not been built; run `dvc repro`"
        )
    raw = manifest.raw
    curve_path = reg.model_dir(name) / CURVE_FILE
    curve: list[dict[str, Any]] = []
    if curve_path.is_file():
        try:  # bounded, regular, inside the registry; a bad curve is no curve
            loaded = read_json(curve_path, reg.rel("models", name, CURVE_FILE), root=reg.root)
        except StemmaError:
            loaded = []
        curve = [row for row in loaded if isinstance(row, dict)] if isinstance(loaded, list) else []
    tensors = list(raw["architecture"]["tensors"])
    origins = {
        o: sum(t["origin"] == o for t in tensors) for o in ("transferred", "reinitialized", "new")
    }
    transfer = dict(raw.get("transfer") or {})
    transfer["counts"] = {**origins, "frozen": sum(bool(t["frozen"]) for t in tensors)}
    doc: dict[str, Any] = {
        "name": name,
        "id": manifest.id,
        "description": (raw.get("spec") or {}).get("description", ""),
        "source": raw.get("source"),
        "datasets": dict(raw.get("datasets") or {}),
        "lineage": _lineage(reg, name),
        "architecture": dict(raw["architecture"]["config"]),
        "parameters": dict(raw["parameters"]),
        "transfer": transfer,
        "tensors": tensors,
        "metrics": dict(raw.get("metrics") or {}),
        "per_class": dict(raw.get("per_class") or {}),
        "task": str(raw.get("task", "classification")),
        "class_names": _class_names(reg, raw),
        "gates": list(raw.get("gates") or []),
        "checks": dict(raw.get("checks") or {}),
        "curve": curve,
        "run": dict(raw.get("run") or {}),
        "stale": _stale(reg, name, manifest),
    }
    samples = load_samples(reg, name, raw)  # a detector's pictures; other models have none
    if samples is not None:
        doc["samples"] = samples
    doc["passed"], doc["reasons"] = verdict(doc)
    return doc


def _check_summary(result: Mapping[str, Any]) -> str:
    figures = result.get("figures") or {}
    parts = [f"{k} {fmt(figures[k])}" for k in _FIGURE_KEYS if k in figures]
    limits = [
        f"{k} {fmt(v)}"
        for k, v in sorted((result.get("thresholds") or {}).items())
        if v is not None and k != "outlier_level"
    ]
    text = ", ".join(parts)
    if limits:
        text += f" (thresholds: {', '.join(limits)})"
    if result.get("method"):
        text += f" [{result['method']}]"
    return text


def render_text(report: Mapping[str, Any]) -> str:
    """A terminal summary of a report."""
    lines = [f"model {report['name']}  {report['id'][7:19]}"]
    if report["description"]:
        lines.append(str(report["description"]))
    if "passed" in report:
        lines.append(
            ("PASS" if report["passed"] else "FAIL")
            + "".join(f"\n  {r}" for r in report["reasons"])
        )
    lines.append("lineage:")
    lines += [f"  {'  ' * i}{lineage_line(e)}" for i, e in enumerate(report["lineage"])]
    t = report["transfer"]
    counts = t["counts"]
    lines.append(
        f"transfer: mapping {t.get('mapping') or '-'}, mode {t.get('mode', '-')};"
        f" {counts['transferred']} transferred, {counts['reinitialized']} re-initialised,"
        f" {counts['new']} new, {counts['frozen']} frozen tensors"
    )
    for row in report["tensors"]:
        src = row.get("source_name") or ""
        lines.append(
            f"  {row['name']:<24} {'x'.join(map(str, row['shape'])):<12} {row['origin']:<13}"
            f" {'frozen' if row['frozen'] else 'trained':<8} {src}".rstrip()
        )
    metrics = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(report["metrics"].items()))
    lines.append(f"metrics: {metrics or '-'}")
    if report["task"] != "classification" or report["class_names"]:
        lines.append(f"task: {report['task']}")
    names = report["class_names"]
    per = sorted(report["per_class"].items(), key=lambda kv: int(kv[0]))
    if per:
        shown = [(f"{k} {label(names, k)}" if names else k, fmt(v)) for k, v in per]
        lines.append("per class: " + ", ".join(f"{k} {v}" for k, v in shown))
    for gate in report["gates"]:
        mark = "pass" if gate["passed"] else "FAIL"
        lines.append(
            f"gate {gate['metric']} {gate['op']} {gate['threshold']}: {mark} ({fmt(gate['value'])})"
        )
    for check, result in sorted(report["checks"].items()):
        mark = "pass" if result.get("passed") else "FAIL"
        lines.append(f"check {check}: {mark}  {_check_summary(result)}")
    curve = report["curve"]
    if curve:
        last = curve[-1]
        main = main_metric(curve)
        lines.append(
            f"curve: {len(curve)} epochs, final train loss {fmt(last.get('train_loss'))},"
            f" eval {main} {fmt(last.get('eval_' + main))}"
        )
    return "\n".join(lines) + "\n"


def write_html(reg: Registry, path: Path, page: str, overwrite: bool = False) -> Path:
    """Write the page atomically where `Outputs` allows (an existing file only with
    `overwrite`, never a registry file, a link, a pipe or a device); the real path."""
    return Outputs.for_registry(reg.repo_root, reg.root, overwrite).write(path, page)
