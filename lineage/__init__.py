"""The lineage graph of a registry, ancestry and impact queries, renderers, and the audit.

from stemma.lineage import build_graph, ancestors, descendants, impact, render
g = build_graph(Registry.open("."))
print(render(g, impact(g, "digits-base"), "mermaid"))
"""

from .graph import build_graph, graph_from_records, read_records
from .query import LineageIndex, ancestors, descendants, impact, lineage_index, neighbourhood
from .render import render

__all__ = [
    "LineageIndex",
    "ancestors",
    "build_graph",
    "descendants",
    "graph_from_records",
    "impact",
    "lineage_index",
    "neighbourhood",
    "read_records",
    "render",
]
