"""The HTML page of a model report: a verdict banner, the lineage as SVG, readable tables.

Self-contained and offline: inline CSS, the lineage as inline SVG (`_lineagesvg`), the curve
as a base64 PNG; no script, no font or style from the network. Every piece of user text is
HTML-escaped. Wide tables scroll inside their own box and long names are cut with the full
text in a `title` tooltip, so the page itself never grows wider than the window.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from stemma.registry.publish._lineagesvg import lineage_svg
from stemma.registry.publish._reportboxes import samples_html
from stemma.registry.publish._reportdoc import CurvePoint, Report, as_report
from stemma.registry.publish._reportfmt import fmt, main_metric, verdict
from stemma.registry.records.manifest import Check
from stemma.registry.rules.classlabels import label


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def curve_png(curve: Sequence[CurvePoint]) -> bytes:
    """The training curve (losses, and accuracies on a second axis) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.2), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    epochs = [float(row.value("epoch", i + 1)) for i, row in enumerate(curve)]
    acc = ax.twinx()
    main = main_metric(curve)
    for axis, color, keys in (
        (ax, "tab:red", ("train_loss", "eval_loss")),
        (acc, "tab:blue", (f"train_{main}", f"eval_{main}")),
    ):
        for key, style in zip(keys, ("-", "--"), strict=True):
            values = [_number(row.value(key)) for row in curve]
            if any(v == v for v in values):  # a series of NaN (absent) is not drawn
                axis.plot(epochs, values, style, color=color, label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    acc.set_ylabel(main)
    handles = ax.get_legend_handles_labels()
    more = acc.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="center right", fontsize=8)
    figure.tight_layout()
    buf = io.BytesIO()
    figure.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


_CLIP = 48  # characters of a name shown in a table cell; the rest is in its tooltip


def _cell(value: Any, clip: bool) -> str:
    text = fmt(value)
    if clip and len(text) > _CLIP:
        return f"<td class='clip' title='{escape(text)}'>{escape(text[: _CLIP - 1])}\u2026</td>"
    return f"<td>{escape(text)}</td>"


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    cls: str = "",
    clip: Sequence[int] = (0,),
) -> str:
    """A table in a box that scrolls sideways when it is wider than the page; the cells of
    the `clip` columns (names) are cut, with the whole text as their title."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = "".join(
        "<tr>" + "".join(_cell(c, i in clip) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    attr = f" class='{escape(cls)}'" if cls else ""
    return f"<div class='wide'><table{attr}>{thead}<tbody>{body}</tbody></table></div>"


def _mark(passed: Any) -> str:
    return "<span class='pass'>pass</span>" if passed else "<span class='fail'>FAIL</span>"


def _flat(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        out: list[tuple[str, Any]] = []
        for key in sorted(value):
            out += _flat(f"{prefix}.{key}" if prefix else str(key), value[key])
        return out
    if isinstance(value, list):
        return [(prefix, ", ".join(fmt(v) for v in value))]
    return [(prefix, value)]


def _check_html(name: str, result: Check) -> str:
    parts = [f"<h3>{escape(name)} {_mark(result.passed)}</h3>"]
    if result.method:
        parts.append(f"<p>method: {escape(result.method)}</p>")
    for title, block in (
        ("figures", result.figures),
        ("thresholds", result.thresholds),
        ("inputs", result.inputs),
    ):
        if block:
            parts.append(f"<h4>{title}</h4>" + _table(["name", "value"], _flat("", block), "kv"))
    for title, items in (
        ("violations", result.violations),
        ("warnings", result.warnings),
    ):
        if items:
            lis = "".join(f"<li>{escape(str(i))}</li>" for i in items)
            parts.append(f"<h4>{title}</h4><ul>{lis}</ul>")
    return "<section class='check'>" + "".join(parts) + "</section>"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1f2328}p,li,h1{overflow-wrap:anywhere}
.wide{max-width:100%;overflow-x:auto;margin:.5rem 0}
table{border-collapse:collapse}td,th{border:1px solid #d0d7de;padding:2px 8px;
font-size:.9rem;text-align:left;vertical-align:top}th{background:#f6f8fa;white-space:nowrap}
td{white-space:nowrap}td.clip{cursor:help}
.kv td:last-child{white-space:normal;overflow-wrap:anywhere;min-width:12rem}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}
code{background:#f6f8fa}svg.lineage{max-width:100%;height:auto;display:block}
.banner{border-radius:6px;padding:.6rem 1rem;margin:1rem 0;border:1px solid}
.banner.ok{background:#dafbe1;border-color:#1a7f37}
.banner.bad{background:#ffebe9;border-color:#cf222e}
.banner strong{font-size:1.1rem}.banner ul{margin:.3rem 0 0 0}
"""


def _banner(report: Report) -> str:
    """Pass or fail, first on the page, with one line per reason (gate, check, staleness)."""
    if report.passed is not None:
        passed, reasons = report.passed, list(report.reasons or ())
    else:
        passed, reasons = verdict(report.gates, report.checks, report.stale, report.lineage)
    declared, results = report.gates, report.checks
    summary = (
        f"{sum(g.passed for g in declared)}/{len(declared)} gates,"
        f" {sum(c.passed for c in results.values())}/{len(results)} checks pass;"
        f" {'stale' if report.stale else 'up to date'}"
    )
    if passed:
        return f"<div class='banner ok' role='status'><strong>PASS</strong> {escape(summary)}</div>"
    lis = "".join(f"<li>{escape(r)}</li>" for r in reasons)
    return (
        f"<div class='banner bad' role='alert'><strong>FAIL</strong> {escape(summary)}"
        f"<ul>{lis}</ul></div>"
    )


def _per_class(report: Report) -> str:
    names = report.class_names
    per = sorted(report.per_class.items(), key=lambda kv: int(kv[0]))
    rows = [(label(names, k), k, v) for k, v in per]
    # the per-class figure of each task: accuracy, r2 per output, F1 per label
    what, figure = {"regression": ("output", "r2"), "multilabel": ("label", "F1")}.get(
        report.task, ("class", "accuracy")
    )
    return _table([what, "id", figure], rows)


def _gates(report: Report) -> str:
    names, per = report.class_names, report.per_class
    rows = []
    for g in report.gates:
        value = fmt(g.value)
        if g.metric.startswith("per_") and per:  # the worst class decides a per-class gate
            worst = min(per, key=lambda k: per[k])
            value += f" (class {label(names, worst)})"
        rows.append((g.metric, f"{g.op} {g.threshold}", value, _mark(g.passed)))
    head = "".join(f"<th>{h}</th>" for h in ("metric", "gate", "value", "result"))
    body = "".join(
        f"<tr><td>{escape(m)}</td><td>{escape(t)}</td><td>{escape(v)}</td><td>{r}</td></tr>"
        for m, t, v, r in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<div class='wide'>{table}</div>"


def render_html(report: Report | Mapping[str, Any]) -> str:
    """A self-contained HTML page of a report, a record or its JSON form (inline CSS and SVG,
    the curve as a PNG)."""
    report = as_report(report)
    name = escape(report.name)
    out = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>stemma report: {name}</title>",
        f"<style>{_STYLE}</style></head><body>",
        _banner(report),
        f"<h1>model {name}</h1>",
        f"<p><code>{escape(report.id)}</code></p>",
    ]
    if report.description:
        out.append(f"<p>{escape(report.description)}</p>")
    out.append("<h2>lineage</h2>" + lineage_svg(report.lineage))
    ds = [(role, ref.name, ref.id) for role, ref in sorted(report.datasets.items())]
    out.append("<h2>datasets</h2>" + _table(["role", "dataset", "id"], ds, clip=(1,)))
    if report.class_names:
        out.append(
            "<p>class labels by id: "
            + escape(", ".join(f"{i} \u2192 {n}" for i, n in enumerate(report.class_names)))
            + "</p>"
        )
    t = report.transfer
    counts = t.tally
    out.append("<h2>transfer</h2>")
    summary = [
        ("mapping", t.mapping),
        ("mode", t.mode),
        ("features cached", t.features_cached),
        ("unused source tensors", ", ".join(t.unused_source or ()) or "-"),
        ("frozen", counts.frozen),  # the report's tally of the tensor rows, by name
        ("new", counts.new),
        ("reinitialized", counts.reinitialized),
        ("transferred", counts.transferred),
    ]
    out.append(_table(["", ""], summary, "kv", clip=()))
    rows = [
        (r.name, "x".join(map(str, r.shape)), r.dtype, r.origin, r.frozen, r.source_name)
        for r in report.tensors
    ]
    headers = ["tensor", "shape", "dtype", "origin", "frozen", "source tensor"]
    out.append(_table(headers, rows, clip=(0, 5)))
    p = report.parameters
    out.append(
        f"<p>parameters: {p.total} total, {p.trainable} trainable, {p.transferred} transferred</p>"
    )
    out.append("<h2>metrics</h2>" + _table(["metric", "value"], sorted(report.metrics.items())))
    if report.per_class:
        out.append(_per_class(report))
    out.append(samples_html(report.samples))  # a detector's eval images with boxes
    out.append("<h2>gates</h2>")
    out.append(_gates(report) if report.gates else "<p>no gates declared</p>")
    out.append("<h2>checks</h2>")
    results = report.checks
    out += [_check_html(k, results[k]) for k in sorted(results)] or ["<p>no checks recorded</p>"]
    out.append("<h2>training curve</h2>")
    if report.curve:
        png = base64.b64encode(curve_png(report.curve)).decode("ascii")
        out.append(
            f"<img style='max-width:100%;height:auto' alt='training curve of {name}'"
            f" src='data:image/png;base64,{png}'>"
        )
    else:
        out.append("<p>no training curve recorded</p>")
    run = report.run
    out.append(
        f"<p><small>built {escape(fmt(run.started))} on"
        f" {escape(fmt(run.device))} in {escape(fmt(run.duration_s))} s,"
        f" stemma {escape(fmt(run.stemma))}</small></p></body></html>"
    )
    return "\n".join(out) + "\n"
