"""Draw a part of the lineage graph: an indented tree, Mermaid, Graphviz DOT, or JSON.

Every renderer takes the graph and the node keys to show (a query's answer) and draws the
edges among them. The graph's edges point from a model to what it depends on; drawings flow
the other way, from a source to what derives from it, like a family tree. `marks` tags nodes
as added, removed, changed or affected (the audit's sub-graph); `focus` is the node asked
about. Output is deterministic: nodes and edges are sorted. A node's and an edge's attributes
are read as their records (`nodes.LineageNode`, `nodes.LineageEdge`), by field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .nodes import (
    DERIVED_FROM,
    EVALUATED_ON,
    PREVIOUS,
    TRAINED_ON,
    LineageEdge,
    LineageNode,
    short_id,
)
from .query import lineage_index

if TYPE_CHECKING:
    import networkx as nx

FORMATS = ("tree", "mermaid", "dot", "json")
MARKS = ("added", "removed", "changed", "affected")
_STYLES = {
    "added": "fill:#dafbe1,stroke:#1a7f37,color:#0d1117",
    "removed": "fill:#ffebe9,stroke:#cf222e,color:#0d1117,stroke-dasharray:5 5",
    "changed": "fill:#fff8c5,stroke:#9a6700,color:#0d1117",
    "affected": "fill:#ddf4ff,stroke:#0969da,color:#0d1117",
}
_DOT_FILL = {"added": "#dafbe1", "removed": "#ffebe9", "changed": "#fff8c5", "affected": "#ddf4ff"}


def render(
    g: nx.MultiDiGraph,
    nodes: Iterable[str],
    fmt: str = "tree",
    focus: str | None = None,
    marks: Mapping[str, str] | None = None,
    pretty: bool = True,
) -> str:
    """Render `nodes` of `g` in one of FORMATS (json indented, or compact without `pretty`)."""
    keys = _keep(g, nodes)
    marks = marks or {}
    if fmt == "tree":
        return to_tree(g, keys, focus, marks)
    if fmt == "mermaid":
        return to_mermaid(g, keys, focus, marks)
    if fmt == "dot":
        return to_dot(g, keys, focus, marks)
    if fmt == "json":
        doc = to_dict(g, keys, focus, marks)
        if not pretty:  # the C encoder: json.dumps runs in pure Python with an indent
            return json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n"
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _keep(g: nx.MultiDiGraph, nodes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(n for n in nodes if n in g))


def _edges(
    g: nx.MultiDiGraph, keys: Iterable[str]
) -> list[tuple[str, str, str, Mapping[str, Any]]]:
    """Edges among `keys` as (dependent, dependency, kind, attributes), in no set order."""
    inside = set(keys)
    if 2 * len(inside) < len(g):
        found = g.edges(inside, keys=True, data=True)
        return [(u, v, str(k), a) for u, v, k, a in found if v in inside]
    # Most of the graph: its adjacency read whole, as networkx keeps it. The edge view wraps
    # each node's and each neighbour's adjacency on the way (at 10,000 models, ~60 ms more).
    return [
        (u, v, str(k), a)
        for u, nbrs in g.adjacency()
        if u in inside
        for v, kinds in nbrs.items()
        if v in inside
        for k, a in kinds.items()
    ]


def _drawn(g: nx.MultiDiGraph, keys: Iterable[str]) -> list[tuple[str, str, bool, str]]:
    """Edges to draw as (dependency, dependent, solid, label): a model's edges to one dataset
    (train, eval, check) are merged into one arrow, their labels in the order of their kinds."""
    merged: dict[tuple[str, str, bool], list[str]] = {}
    order = {k: i for i, k in enumerate((DERIVED_FROM, TRAINED_ON, EVALUATED_ON, PREVIOUS))}
    # the arrows are sorted below: only the order of the edges between two nodes matters here
    for u, v, kind, attrs in sorted(_edges(g, keys), key=lambda e: (order.get(e[2], 9), e[2])):
        text = _edge_text(kind, attrs)
        labels = merged.setdefault((v, u, kind == DERIVED_FROM), [])
        if text and text not in labels:
            labels.append(text)
    return [(v, u, solid, ", ".join(labels)) for (v, u, solid), labels in sorted(merged.items())]


def _records(g: nx.MultiDiGraph, keys: Iterable[str]) -> dict[str, LineageNode]:
    """The nodes `keys` of `g` (each one in it) as records, by key."""
    view = g.nodes
    return {key: LineageNode(key, **view[key]) for key in keys}


def _node(g: nx.MultiDiGraph, nodes: Mapping[str, LineageNode], key: str) -> LineageNode | None:
    """The record of node `key`: from `nodes`, else read from `g` (None: not in the graph)."""
    node = nodes.get(key)
    return node if node is not None or key not in g else LineageNode.of(g, key)


def _name(g: nx.MultiDiGraph, nodes: Mapping[str, LineageNode], key: str) -> str:
    """A node's name as the tree shows it (a key not in the graph: its name part)."""
    node = _node(g, nodes, key)
    return node.label if node is not None else key.partition(":")[2] or key


# -- tree ------------------------------------------------------------------------------


def to_tree(
    g: nx.MultiDiGraph,
    keys: list[str],
    focus: str | None = None,
    marks: Mapping[str, str] | None = None,
) -> str:
    """An indented tree drawn with box characters, sources above what derives from them.

    Datasets are listed beside the models that use them; a dataset asked about is the root
    and the models using it hang below it.
    """
    marks = marks or {}
    nodes = _records(g, keys)
    inside = [k for k in keys if nodes[k].kind in ("model", "dataset")]
    members = set(inside)
    # The edges among the members, from the graph's name-level index.
    index = lineage_index(g)
    # every parent of a model (a merge has several: `parents.parents_of`), first the source
    every = {
        m: [index.parent[m], *index.forest.more.get(m, ())] for m in inside if m in index.parent
    }
    ups = {m: found for m in inside if (found := [p for p in every.get(m, ()) if p in members])}
    uses = {m: [d for d in ds if d in members] for m, ds in index.uses.items() if m in members}
    children: dict[str, list[str]] = {}
    for m in sorted(members):
        if m in ups:  # a merge hangs under each of its parents; drawn in full under the first
            for p in ups[m]:
                children.setdefault(p, []).append(m)
        elif focus is not None and focus in uses.get(m, ()):
            children.setdefault(focus, []).append(m)
    for kids in children.values():
        kids.sort()
    shown = None if focus is None else _node(g, nodes, focus)
    focus_is_dataset = shown is not None and shown.kind == "dataset"
    roots = [focus] if focus_is_dataset and focus in members else []
    roots += [
        m
        for m in sorted(members)
        if nodes[m].kind == "model"
        and m not in ups
        and not (focus_is_dataset and focus in uses.get(m, ()))
    ]
    if not any(nodes[m].kind == "model" for m in members):
        roots = sorted(members)
    lines: list[str] = []
    done: dict[str, str] = {}  # drawn node -> the parent it was drawn under ("" for a root)

    def relation(key: str) -> str:
        rel = str(nodes[key].relation or "")
        if len(every.get(key, ())) > 1:  # a merge names all its parents, drawn here or not
            rel = f"{rel or 'merge'} of " + ", ".join(_name(g, nodes, p) for p in every[key])
        return f" ({rel})" if rel else ""

    def line(key: str) -> str:
        node = nodes[key]
        text = node.label
        if node.kind == "dataset":
            text += " (dataset)"
        elif key in ups:
            text += relation(key)
        status = str(node.status or "")
        short = short_id(node.id)
        text += f" [{status}{' ' + short if short else ''}]" if status else ""
        used = list(dict.fromkeys(d.partition(":")[2] for d in uses.get(key, ()) if d != focus))
        if used and not focus_is_dataset:
            text += " · data: " + ", ".join(used)
        if key in marks:
            text += f" *{marks[key]}*"
        if key == focus:
            text += "  ◀"
        return text

    def walk(root: str) -> None:
        # Iterative: a lineage can be deeper than Python's recursion limit.
        stack = [(root, "", True, True, "")]
        while stack:
            key, prefix, last, top, above = stack.pop()
            branch = "" if top else ("└── " if last else "├── ")
            if key in done:
                # a merge met again under another parent: one line pointing to the full one
                first = done[key]
                where = f" under {_name(g, nodes, first)}" if first else ""
                lines.append(
                    f"{prefix}{branch}{nodes[key].label}{relation(key)} ↑ drawn above{where}"
                )
                continue
            done[key] = above
            lines.append(prefix + branch + line(key))
            kids = [c for c in children.get(key, ()) if c not in done or len(ups.get(c, ())) > 1]
            deeper = prefix if top else prefix + ("    " if last else "│   ")
            for i in reversed(range(len(kids))):
                stack.append((kids[i], deeper, i == len(kids) - 1, False, key))

    for root in roots:
        walk(root)
    # Models in a cycle have no root above them: list them so nothing is hidden.
    for key in sorted(members):
        if nodes[key].kind == "model" and key not in done:
            walk(key)
    return "\n".join(lines) + "\n" if lines else ""


# -- Mermaid ---------------------------------------------------------------------------


def mermaid_ids(keys: Iterable[str]) -> dict[str, str]:
    """Safe, unique Mermaid node ids for node keys (letters, digits and '_' only)."""
    ids: dict[str, str] = {}
    used: set[str] = set()
    for key in sorted(set(keys)):
        base = re.sub(r"[^A-Za-z0-9_]", "_", key)
        cand, n = base, 2
        while cand in used:
            cand, n = f"{base}_{n}", n + 1
        used.add(cand)
        ids[key] = cand
    return ids


def _quote(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def to_mermaid(
    g: nx.MultiDiGraph,
    keys: list[str],
    focus: str | None = None,
    marks: Mapping[str, str] | None = None,
) -> str:
    """A Mermaid flowchart (renders in GitHub Markdown inside a ```mermaid block)."""
    marks = marks or {}
    ids = mermaid_ids(keys)
    out = ["flowchart TD"]
    for mark in MARKS:
        if mark in marks.values():
            out.append(f"  classDef {mark} {_STYLES[mark]}")
    if focus in ids:
        out.append("  classDef focus stroke-width:3px")
    records = _records(g, keys)
    for key in sorted(keys):
        kind, label = records[key].kind, _quote(records[key].label)
        shape = (
            f"[({label})]"
            if kind == "dataset"
            else f"([{label}])"
            if kind == "version"
            else f"[{label}]"
        )
        out.append(f"  {ids[key]}{shape}")
    for src, dst, solid, text in _drawn(g, keys):
        arrow = "-->" if solid else "-.->"
        out.append(f"  {ids[src]} {arrow}{'|' + _quote(text) + '|' if text else ''} {ids[dst]}")
    for mark in MARKS:
        group = sorted(ids[k] for k, m in marks.items() if m == mark and k in ids)
        if group:
            out.append(f"  class {','.join(group)} {mark}")
    if focus in ids:
        out.append(f"  class {ids[focus]} focus")
    return "\n".join(out) + "\n"


def _edge_text(kind: str, attrs: Mapping[str, Any]) -> str:
    """An edge's label; its attributes are read (as a `LineageEdge`) only where it shows them."""
    if kind == DERIVED_FROM:
        edge = LineageEdge(**attrs)
        rel = str(edge.relation or "")
        return f"{rel} (auto)" if edge.auto and rel else rel
    if kind == TRAINED_ON:
        return "train"
    if kind == EVALUATED_ON:
        return str(LineageEdge(**attrs).roles or "eval")
    if kind == PREVIOUS:
        return "previous"
    return kind


# -- DOT -------------------------------------------------------------------------------


def _dq(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(
    g: nx.MultiDiGraph,
    keys: list[str],
    focus: str | None = None,
    marks: Mapping[str, str] | None = None,
) -> str:
    """A Graphviz digraph (`dot -Tsvg`)."""
    marks = marks or {}
    out = [
        "digraph lineage {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica"];',
    ]
    records = _records(g, keys)
    for key in sorted(keys):
        node = records[key]
        opts = [f"label={_dq(node.label)}"]
        if node.kind == "dataset":
            opts.append("shape=cylinder")
        elif node.kind == "version":
            opts.append("shape=ellipse")
        if key in marks:
            opts.append(f'fillcolor="{_DOT_FILL.get(marks[key], "white")}"')
            if marks[key] == "removed":
                opts.append('style="rounded,filled,dashed"')
        if key == focus:
            opts.append("penwidth=3")
        out.append(f"  {_dq(key)} [{', '.join(opts)}];")
    for src, dst, solid, text in _drawn(g, keys):
        opts = [f"label={_dq(text)}"] + ([] if solid else ["style=dashed"])
        out.append(f"  {_dq(src)} -> {_dq(dst)} [{', '.join(opts)}];")
    out.append("}")
    return "\n".join(out) + "\n"


# -- JSON ------------------------------------------------------------------------------


def to_dict(
    g: nx.MultiDiGraph,
    keys: list[str],
    focus: str | None = None,
    marks: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Nodes and edges as plain data; `order` keeps the query's order (build order for an
    impact), and edges keep the graph's direction (`from` depends on `to`)."""
    marks = marks or {}
    nodes = []
    view = g.nodes
    for key in sorted(keys):
        node = LineageNode.dict_of(key, view[key])
        nodes.append({**node, "mark": marks[key]} if key in marks else node)
    ends = _edges(g, keys)
    ends.sort(key=lambda e: e[:3])
    edges = [LineageEdge.dict_of(a) | {"from": u, "to": v, "kind": k} for u, v, k, a in ends]
    return {"focus": focus, "order": list(keys), "nodes": nodes, "edges": edges}
