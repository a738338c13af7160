"""The audit report as Markdown for a pull-request comment (GitHub-flavoured, with Mermaid)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .nodes import DERIVED_FROM
from .render import to_mermaid

if TYPE_CHECKING:
    from .audit import AuditReport

MAX_NODES = 60  # a comment stays readable; the rest is counted, not drawn
MAX_CELL = 80


def _cell(value: Any) -> str:
    """A table cell: JSON for values, backticked, pipes escaped, long values cut."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if len(text) > MAX_CELL:
        text = text[: MAX_CELL - 1] + "…"
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _text(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names) if names else "–"


def markdown(report: AuditReport) -> str:
    """The whole report."""
    n = len(report.violations)
    fresh = sum(1 for v in report.violations if v.new)
    out = ["## stemma audit", ""]
    verdict = (
        "**No violations**"
        if n == 0
        else (f"**{n} violation{'s' if n != 1 else ''}** ({fresh} new in this change)")
    )
    out += [f"{verdict} · base `{report.base}` · head `{report.head}`", ""]
    out += _summary(report)
    out += _violations(report)
    out += _structure(report)
    out += _spec_changes(report)
    out += _metrics(report)
    out += _lineage(report)
    return "\n".join(out).rstrip("\n") + "\n"


def _summary(report: AuditReport) -> list[str]:
    specs = {c.subject for c in report.spec_changes}
    rebuilt = {r.subject for r in report.rebuilt}

    def count(prefix: str, subjects: set[str]) -> int:
        return sum(1 for s in subjects if s.startswith(prefix))

    return [
        "| | Added | Removed | Re-parented | Spec changed | Rebuilt |",
        "|---|---:|---:|---:|---:|---:|",
        f"| Models | {len(report.models_added)} | {len(report.models_removed)} |"
        f" {len(report.reparented)} | {count('model:', specs)} | {count('model:', rebuilt)} |",
        f"| Datasets | {len(report.datasets_added)} | {len(report.datasets_removed)} | – |"
        f" {count('dataset:', specs)} | {count('dataset:', rebuilt)} |",
        "",
    ]


def _violations(report: AuditReport) -> list[str]:
    out = ["### Violations", ""]
    if not report.violations:
        return [*out, "None.", ""]
    out += ["| | Code | Subject | Where | Reason |", "|---|---|---|---|---|"]
    for v in report.violations:
        where = f"`{v.path}" + (f":{v.line}" if v.line is not None else "") + "`"
        where += f" `{v.pointer}`" if v.pointer else ""
        out.append(
            f"| {'new' if v.new else 'pre-existing'} | `{v.code}` | `{v.subject}` |"
            f" {_text(where)} | {_text(v.message)} |"
        )
    return [*out, ""]


def _structure(report: AuditReport) -> list[str]:
    rows = [
        ("Added models", _names(report.models_added)),
        ("Removed models", _names(report.models_removed)),
        ("Added datasets", _names(report.datasets_added)),
        ("Removed datasets", _names(report.datasets_removed)),
    ]
    rows = [(k, v) for k, v in rows if v != "–"]
    for p in report.reparented:
        rows.append(
            (
                "Re-parented",
                f"`{p.model}`: `{p.before or '(scratch)'}` → `{p.after or '(scratch)'}`",
            )
        )
    for r in report.rebuilt:
        before = r.before[7:19] if r.before else "(none)"
        after = r.after[7:19] if r.after else "(none)"
        rows.append(("Rebuilt", f"`{r.subject}`: `{before}` → `{after}`"))
    if not rows:
        return []
    return ["### Changes", "", *[f"- {k}: {v}" for k, v in rows], ""]


def _spec_changes(report: AuditReport) -> list[str]:
    if not report.spec_changes:
        return []
    out = ["### Spec changes", "", "| Subject | Field | Before | After |", "|---|---|---|---|"]
    for c in report.spec_changes:
        before = "–" if c.op == "added" else _cell(c.before)
        after = "–" if c.op == "removed" else _cell(c.after)
        out.append(f"| `{c.subject}` | `{c.pointer}` | {before} | {after} |")
    return [*out, ""]


def _metrics(report: AuditReport) -> list[str]:
    if not report.metric_deltas:
        return []
    out = [
        "### Metric deltas",
        "",
        "| Model | Metric | Before | After | Δ |",
        "|---|---|---:|---:|---:|",
    ]
    for d in report.metric_deltas:
        out.append(
            f"| `{d.model}` | {d.metric} | {_num(d.before)} | {_num(d.after)} |"
            f" {_num(d.delta, signed=True)} |"
        )
    return [*out, ""]


def drawn_nodes(report: AuditReport) -> tuple[list[str], int]:
    """Nodes of the change's sub-graph (`pick_nodes` on the report's graph), and how many
    affected ones were left out."""
    g = report.graph
    return pick_nodes(
        report.marks,
        g.__contains__,
        lambda u: [v for _, v, k in g.out_edges(u, keys=True) if k == DERIVED_FROM],
    )


def pick_nodes(
    marks: Mapping[str, str],
    present: Callable[[str], bool],
    sources: Callable[[str], Iterable[str]],
) -> tuple[list[str], int]:
    """The nodes a report draws: the marked nodes that are not merely affected (and that
    `present` finds in the graph), their sources (`sources`: the nodes a node derives from)
    for context, and as many affected descendants as fit in MAX_NODES; plus how many
    affected ones were left out. Every affected node is in the graph: it is found there."""
    core = sorted(k for k, m in marks.items() if m != "affected" and present(k))
    context = sorted({v for u in core for v in sources(u)} - set(core))
    affected = sorted(k for k, m in marks.items() if m == "affected")
    room = max(0, MAX_NODES - len(core) - len(context))
    return [*core, *context, *affected[:room]], max(0, len(affected) - room)


def _lineage(report: AuditReport) -> list[str]:
    nodes, omitted = drawn_nodes(report)
    if not nodes:
        return []
    out = ["### Lineage of the change", ""]
    legend = ", ".join(
        m for m in ("added", "removed", "changed", "affected") if m in report.marks.values()
    )
    if legend:
        out += [f"Marked: {legend}.", ""]
    out += [
        "```mermaid",
        to_mermaid(report.graph, nodes, marks=report.marks).rstrip("\n"),
        "```",
        "",
    ]
    if omitted:
        out += [f"{omitted} more affected model{'s' if omitted != 1 else ''} not drawn.", ""]
    return out
