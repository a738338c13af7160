"""The lineage of a report as an inline SVG: one box per model, root at the top.

Drawn by hand (no graph library, no script, no network) so the page opens offline. A
report's lineage is a chain (each model has at most one source), so the layout is a column;
long names are cut to fit their box and keep the full text in a <title> tooltip.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from stemma.registry.publish._reportdoc import LineageEntry

_BOX_W, _BOX_H, _GAP, _PAD = 360, 46, 40, 8
_LABEL_X = _PAD + _BOX_W + 12  # the relation is written beside its arrow
_WIDTH = _LABEL_X + 220
_MAX_CHARS = 40  # what fits in a box at 14 px


def _cut(text: str, limit: int = _MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def lineage_svg(chain: Sequence[LineageEntry]) -> str:
    """An <svg> of `chain` (the model first, then its ancestors), drawn root first."""
    nodes = list(reversed(chain))
    height = _PAD * 2 + len(nodes) * _BOX_H + (len(nodes) - 1) * _GAP
    names = ", ".join(n.name for n in nodes)
    parts = [
        f"<svg class='lineage' xmlns='http://www.w3.org/2000/svg' role='img'"
        f" viewBox='0 0 {_WIDTH} {height}' width='{_WIDTH}' height='{height}'>",
        f"<title>lineage: {escape(names)}</title>",
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='8'"
        " markerHeight='8' orient='auto-start-reverse'><path d='M0 0L10 5L0 10z'"
        " fill='#57606a'/></marker></defs>",
    ]
    for i, node in enumerate(nodes):
        y = _PAD + i * (_BOX_H + _GAP)
        if i:  # the arrow from the parent above, with the child's relation and freshness
            current = bool(node.current)
            color = "#57606a" if current else "#cf222e"
            dash = "" if current else " stroke-dasharray='5 4'"
            top, x = y - _GAP, _PAD + _BOX_W // 2
            relation = node.relation or "finetune"
            note = relation if current else f"{relation} (stale link)"
            parts.append(
                f"<line x1='{x}' y1='{top}' x2='{x}' y2='{y - 2}' stroke='{color}'"
                f" stroke-width='2'{dash} marker-end='url(#arrow)'/>"
                f"<text x='{x + 8}' y='{top + _GAP // 2 + 5}' font-size='12'"
                f" fill='{color}'>{escape(note)}</text>"
            )
        me = i == len(nodes) - 1
        built = node.built
        fill = "#ddf4ff" if me else ("#f6f8fa" if built else "#fff8c5")
        name = node.name
        parts.append(
            f"<g class='node'><title>{escape(name)}"
            f"{' ' + escape(node.id) if node.id else ' (not built)'}</title>"
            f"<rect x='{_PAD}' y='{y}' width='{_BOX_W}' height='{_BOX_H}' rx='6'"
            f" fill='{fill}' stroke='{'#0969da' if me else '#8c959f'}'"
            f" stroke-width='{2 if me else 1}'/>"
            f"<text x='{_PAD + 10}' y='{y + 19}' font-size='14' font-weight='600'"
            f" fill='#1f2328'>{escape(_cut(name))}</text>"
            f"<text x='{_PAD + 10}' y='{y + 37}' font-size='12' fill='#57606a'"
            f" font-family='monospace'>{escape(node.short_id)}</text></g>"
        )
    if chain and chain[-1].cycle:
        parts.append(
            f"<text x='{_LABEL_X}' y='{_PAD + 20}' font-size='12' fill='#cf222e'>"
            f"cycle back to {escape(chain[-1].cycle)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
