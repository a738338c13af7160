"""A one-page report of a built model: lineage, transfer, metrics, gates, checks, curve.

`model_report` gathers the facts from manifests (no torch); `render_text` and `render_html`
turn them into a terminal summary or a self-contained HTML page whose training curve is a PNG
drawn with matplotlib's Agg backend (imported only when a page is rendered) and embedded as
base64. Every piece of user text in the page is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from html import escape
from itertools import pairwise
from pathlib import Path
from typing import Any

from .errors import BuildError, ModelNotFound, StemmaError
from .files import Outputs, read_json
from .registry import Registry

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
    return {
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
        "class_names": list(raw.get("class_names") or []),
        "gates": list(raw.get("gates") or []),
        "checks": dict(raw.get("checks") or {}),
        "curve": curve,
        "run": dict(raw.get("run") or {}),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if value is None:
        return "-"
    return str(value)


def _check_summary(result: Mapping[str, Any]) -> str:
    figures = result.get("figures") or {}
    parts = [f"{k} {_fmt(figures[k])}" for k in _FIGURE_KEYS if k in figures]
    limits = [
        f"{k} {_fmt(v)}"
        for k, v in sorted((result.get("thresholds") or {}).items())
        if v is not None and k != "outlier_level"
    ]
    text = ", ".join(parts)
    if limits:
        text += f" (thresholds: {', '.join(limits)})"
    if result.get("method"):
        text += f" [{result['method']}]"
    return text


def _lineage_line(entry: Mapping[str, Any]) -> str:
    ident = entry["id"][7:19] if entry.get("id") else "not built"
    link = ""
    if entry.get("source"):
        stale = "" if entry.get("current", True) else ", stale"
        link = f"  <- {entry.get('relation', 'finetune')} of {entry['source']}{stale}"
    return f"{entry['name']} {ident}{link}"


def render_text(report: Mapping[str, Any]) -> str:
    """A terminal summary of a report."""
    lines = [f"model {report['name']}  {report['id'][7:19]}"]
    if report["description"]:
        lines.append(str(report["description"]))
    lines.append("lineage:")
    lines += [f"  {'  ' * i}{_lineage_line(e)}" for i, e in enumerate(report["lineage"])]
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
    metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(report["metrics"].items()))
    lines.append(f"metrics: {metrics or '-'}")
    if report["task"] != "classification" or report["class_names"]:
        lines.append(f"task: {report['task']}")
    names = report["class_names"]
    per = sorted(report["per_class"].items(), key=lambda kv: int(kv[0]))
    if per:
        shown = [(f"{k} {names[int(k)]}" if int(k) < len(names) else k, _fmt(v)) for k, v in per]
        lines.append("per class: " + ", ".join(f"{k} {v}" for k, v in shown))
    for gate in report["gates"]:
        mark = "pass" if gate["passed"] else "FAIL"
        lines.append(
            f"gate {gate['metric']} {gate['op']} {gate['threshold']}: {mark}"
            f" ({_fmt(gate['value'])})"
        )
    for check, result in sorted(report["checks"].items()):
        mark = "pass" if result.get("passed") else "FAIL"
        lines.append(f"check {check}: {mark}  {_check_summary(result)}")
    curve = report["curve"]
    if curve:
        last = curve[-1]
        lines.append(
            f"curve: {len(curve)} epochs, final train loss {_fmt(last.get('train_loss'))},"
            f" eval {_main(curve)} {_fmt(last.get('eval_' + _main(curve)))}"
        )
    return "\n".join(lines) + "\n"


# -- HTML -------------------------------------------------------------------------------------


def _main(curve: Sequence[Mapping[str, Any]]) -> str:
    """The main metric a training curve records (accuracy, r2 or map)."""
    keys = [k for k in curve[0] if k.startswith("eval_") and k != "eval_loss"] if curve else []
    return keys[0][len("eval_") :] if keys else "accuracy"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def curve_png(curve: Sequence[Mapping[str, Any]]) -> bytes:
    """The training curve (losses, and accuracies on a second axis) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.2), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    epochs = [float(row.get("epoch", i + 1)) for i, row in enumerate(curve)]
    acc = ax.twinx()
    for axis, color, keys in (
        (ax, "tab:red", ("train_loss", "eval_loss")),
        (acc, "tab:blue", (f"train_{_main(curve)}", f"eval_{_main(curve)}")),
    ):
        for key, style in zip(keys, ("-", "--"), strict=True):
            values = [_number(row.get(key)) for row in curve]
            if any(v == v for v in values):  # a series of NaN (absent) is not drawn
                axis.plot(epochs, values, style, color=color, label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    acc.set_ylabel(_main(curve))
    handles = ax.get_legend_handles_labels()
    more = acc.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="center right", fontsize=8)
    figure.tight_layout()
    buf = io.BytesIO()
    figure.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    attr = f' class="{escape(cls)}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _mark(passed: Any) -> str:
    return '<span class="pass">pass</span>' if passed else '<span class="fail">FAIL</span>'


def _flat(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        out: list[tuple[str, Any]] = []
        for key in sorted(value):
            out += _flat(f"{prefix}.{key}" if prefix else str(key), value[key])
        return out
    if isinstance(value, list):
        return [(prefix, ", ".join(_fmt(v) for v in value))]
    return [(prefix, value)]


def _check_html(name: str, result: Mapping[str, Any]) -> str:
    parts = [f"<h3>{escape(name)} {_mark(result.get('passed'))}</h3>"]
    if result.get("method"):
        parts.append(f"<p>method: {escape(str(result['method']))}</p>")
    for label in ("figures", "thresholds", "inputs"):
        block = result.get(label)
        if block:
            parts.append(f"<h4>{label}</h4>" + _table(["name", "value"], _flat("", block), "kv"))
    for label in ("violations", "warnings"):
        items = result.get(label) or []
        if items:
            lis = "".join(f"<li>{escape(str(i))}</li>" for i in items)
            parts.append(f"<h4>{label}</h4><ul>{lis}</ul>")
    return "<section class='check'>" + "".join(parts) + "</section>"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:2px 8px;
font-size:.9rem;text-align:left}th{background:#f3f3f3}.pass{color:#1a7f37;font-weight:bold}
.fail{color:#cf222e;font-weight:bold}code{background:#f6f8fa}ol.lineage li{margin:.2rem 0}
"""


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page of a report (inline CSS, the curve as a base64 PNG)."""
    name = escape(str(report["name"]))
    out = [
        "<!DOCTYPE html>",
        f"<html lang='en'><head><meta charset='utf-8'><title>stemma report: {name}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>model {name}</h1>",
        f"<p><code>{escape(str(report['id']))}</code></p>",
    ]
    if report["description"]:
        out.append(f"<p>{escape(str(report['description']))}</p>")
    out.append("<h2>lineage</h2><ol class='lineage'>")
    out += [f"<li>{escape(_lineage_line(e))}</li>" for e in report["lineage"]]
    out.append("</ol>")
    ds = [(role, ref["name"], ref["id"]) for role, ref in sorted(report["datasets"].items())]
    out.append("<h2>datasets</h2>" + _table(["role", "dataset", "id"], ds))
    t = report["transfer"]
    out.append("<h2>transfer</h2>")
    summary = [
        ("mapping", t.get("mapping")),
        ("mode", t.get("mode")),
        ("features cached", t.get("features_cached")),
        ("unused source tensors", ", ".join(t.get("unused_source") or []) or "-"),
        *sorted(t["counts"].items()),
    ]
    out.append(_table(["", ""], summary, "kv"))
    rows = [
        (
            r["name"],
            "x".join(map(str, r["shape"])),
            r["dtype"],
            r["origin"],
            r["frozen"],
            r.get("source_name"),
        )
        for r in report["tensors"]
    ]
    out.append(_table(["tensor", "shape", "dtype", "origin", "frozen", "source tensor"], rows))
    p = report["parameters"]
    out.append(
        f"<p>parameters: {p['total']} total, {p['trainable']} trainable,"
        f" {p['transferred']} transferred</p>"
    )
    out.append("<h2>metrics</h2>" + _table(["metric", "value"], sorted(report["metrics"].items())))
    if report["per_class"]:
        names = report["class_names"]
        per = [
            (f"{k} {names[int(k)]}" if int(k) < len(names) else k, v)
            for k, v in sorted(report["per_class"].items(), key=lambda kv: int(kv[0]))
        ]
        # the per-class figure of each task: accuracy, r2 per output, F1 per label
        figure = {"regression": ("output", "r2"), "multilabel": ("label", "F1")}
        out.append(_table(list(figure.get(report["task"], ("class", "accuracy"))), per))
    out.append("<h2>gates</h2>")
    if report["gates"]:
        gates = [
            (
                g["metric"],
                f"{g['op']} {g['threshold']}",
                g["value"],
                "pass" if g["passed"] else "FAIL",
            )
            for g in report["gates"]
        ]
        out.append(_table(["metric", "gate", "value", "result"], gates))
    else:
        out.append("<p>no gates declared</p>")
    out.append("<h2>checks</h2>")
    checks = report["checks"]
    out += [_check_html(k, checks[k]) for k in sorted(checks)] or ["<p>no checks recorded</p>"]
    out.append("<h2>training curve</h2>")
    if report["curve"]:
        png = base64.b64encode(curve_png(report["curve"])).decode("ascii")
        out.append(f"<img alt='training curve of {name}' src='data:image/png;base64,{png}'>")
    else:
        out.append("<p>no training curve recorded</p>")
    run = report["run"]
    out.append(
        f"<p><small>built {escape(_fmt(run.get('started')))} on"
        f" {escape(_fmt(run.get('device')))} in {escape(_fmt(run.get('duration_s')))} s,"
        f" stemma {escape(_fmt(run.get('stemma')))}</small></p></body></html>"
    )
    return "\n".join(out) + "\n"


def write_html(reg: Registry, path: Path, page: str, overwrite: bool = False) -> Path:
    """Write the page atomically where `Outputs` allows (an existing file only with
    `overwrite`, never a registry file, a link, a pipe or a device); the real path."""
    return Outputs.for_registry(reg.repo_root, reg.root, overwrite).write(path, page)
