"""Ancestry and impact queries over the lineage graph, backed by a compact index.

A model has at most one source, so the `derived_from` edges form a forest: the index keeps
the registry's lineage core over it (`stemma.registry.rules.dag.Forest`), whose descendants are one
slice of a pre-order walk and ancestors the walk up the parent map. Both cost the size of the
answer, not of the graph, so they stay fast on a million nodes.

`impact(NAME)` is what `dvc repro` would rebuild if NAME changed: NAME, every model that
derives from it (directly, or as a candidate of an exploration with `source: auto`), and, for
a dataset, every model that trains or is checked on it, in the pipeline's build order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, TypeAlias

from stemma.registry.errors import DatasetNotFound, ModelNotFound
from stemma.registry.rules.dag import Forest, build_order, reach

from .nodes import (
    DERIVED_FROM,
    EVALUATED_ON,
    TRAINED_ON,
    DatasetRecord,
    ModelRecord,
    dataset_node,
    model_node,
)

if TYPE_CHECKING:
    import networkx as nx

_CACHE_KEY = "lineage_index"


class LineageIndex:
    """Parent map, child lists, pre-order walk and build order of the name-level lineage
    (the walk and the order are the registry's lineage core, `stemma.registry.rules.dag`)."""

    def __init__(
        self,
        models: Iterable[str],
        datasets: Iterable[str],
        parent: Mapping[str, str],
        uses: Mapping[str, Iterable[str]],
        candidates: Mapping[str, Iterable[str]] | None = None,
        more: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Build from node keys: model -> source, model -> datasets, model -> candidates,
        model -> a merge's further parents (`more`)."""
        self.forest = Forest(models, parent, more)
        self.models = self.forest.nodes
        self.datasets = sorted(set(datasets) | {d for ds in uses.values() for d in ds})
        self.nodes = frozenset(self.models) | frozenset(self.datasets)
        self.parent = self.forest.parent
        self.children = self.forest.all_children  # every edge, a merge's parents included
        self.uses = {m: sorted(set(ds)) for m, ds in uses.items()}
        users: dict[str, list[str]] = {}
        for m in self.models:
            for d in self.uses.get(m, ()):
                users.setdefault(d, []).append(m)
        self.users = users
        self.candidates = {m: sorted(c) for m, c in (candidates or {}).items() if c}
        candidate_of: dict[str, list[str]] = {}
        for m, cands in sorted(self.candidates.items()):
            for c in cands:
                candidate_of.setdefault(c, []).append(m)
        self.candidate_of = candidate_of

    @functools.cached_property
    def rank(self) -> dict[str, int]:
        """The pipeline's order: datasets, then models, each after what it is built from."""
        deps = {
            m: [*self.candidates.get(m, ()), *self.forest.all_parents.get(m, ())]
            for m in self.models
        }
        rank: dict[str, int] = {d: i for i, d in enumerate(self.datasets)}
        for m in build_order(deps, strict=False):
            rank[m] = len(rank)
        return rank

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_records(
        cls,
        models: Iterable[ModelRecord],
        datasets: Iterable[DatasetRecord] = (),
        edges: Iterable[tuple[str, str, str]] = (),
    ) -> LineageIndex:
        """Index straight from records, without building a networkx graph; `edges`: further
        (model node, node, edge key) edges after the records' own, taken as `from_graph`
        takes a graph's (an audit adds the base's edges that the head lacks)."""
        keys, parent, uses, cands, more = [], {}, {}, {}, {}
        for m in models:
            key = model_node(m.name)
            keys.append(key)
            if m.source is not None:
                parent[key] = model_node(m.source)
                if m.more:
                    more[key] = [model_node(p) for p in m.more]
            used = [d for d in (m.train, m.eval, *m.checks) if d is not None]
            if used:
                uses[key] = [dataset_node(d) for d in used]
            if m.candidates:
                cands[key] = [model_node(c) for c in m.candidates]
        for u, v, kind in edges:
            _take_edge(parent, more, uses, u, v, kind)
        return cls(keys, (dataset_node(d.name) for d in datasets), parent, uses, cands, more)

    @classmethod
    def from_graph(cls, g: nx.MultiDiGraph) -> LineageIndex:
        """Index of the name-level part of a lineage graph (version nodes are left out)."""
        models, datasets = [], []
        cands: dict[str, list[str]] = {}
        for node, attrs in g.nodes(data=True):
            kind = attrs.get("kind")
            if kind == "model":
                models.append(node)
                if attrs.get("candidates"):
                    cands[node] = [model_node(c) for c in attrs["candidates"]]
            elif kind == "dataset":
                datasets.append(node)
        parent: dict[str, str] = {}
        more: dict[str, list[str]] = {}
        uses: dict[str, list[str]] = {}
        for u, v, key in g.edges(keys=True):
            if g.nodes[u].get("kind") == "model":
                _take_edge(parent, more, uses, u, v, key)
        return cls(models, datasets, parent, uses, cands, more)

    # -- queries ----------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The node key for NAME (a model first, then a dataset) or a node key itself."""
        if name in self.nodes:
            return name
        if model_node(name) in self.nodes:
            return model_node(name)
        if dataset_node(name) in self.nodes:
            return dataset_node(name)
        import difflib

        names = [k.partition(":")[2] for k in self.models]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if name.startswith("dataset:"):
            raise DatasetNotFound(name.partition(":")[2], hint)
        raise ModelNotFound(name.partition(":")[2] if name.startswith("model:") else name, hint)

    def ancestors(self, name: str) -> list[str]:
        """Source models of NAME, nearest first (for a dataset: none)."""
        return self.forest.ancestors(self.resolve(name))

    def descendants(self, name: str) -> list[str]:
        """Models deriving from NAME, in pre-order; for a dataset, its users and theirs."""
        node = self.resolve(name)
        if node in self.users:
            return self.forest.union(self.users[node])
        return self.forest.descendants(node)

    def impact(self, name: str) -> list[str]:
        """NAME and everything `dvc repro` would rebuild after it changed, in build order."""
        node = self.resolve(name)
        if not self.candidate_of:
            found = [node, *self.descendants(node)]
        else:
            starts = [node, *self.users.get(node, ())]
            deps = {
                k: sorted(set(self.children.get(k, ())) | set(self.candidate_of.get(k, ())))
                for k in {*self.children, *self.candidate_of}
            }
            found = list(dict.fromkeys([*starts, *_reach_all(deps, starts)]))
        wanted = set(found)
        if len(wanted) * 8 > len(self.rank):  # most of the graph: filtering beats sorting
            return [k for k in self.rank if k in wanted]  # the rank dict is in build order
        # Every indexed node has a rank, and ranks are distinct: a plain key is enough.
        return sorted(wanted, key=self.rank.__getitem__)

    def datasets_of(self, name: str) -> list[str]:
        """Datasets a model trains, evaluates or is checked on."""
        return list(self.uses.get(self.resolve(name), ()))


def _reach_all(edges: Mapping[str, list[str]], starts: list[str]) -> list[str]:
    out: dict[str, None] = {}
    for start in starts:
        out.update(dict.fromkeys(reach(edges, start)))
    return list(out)


def _take_edge(
    parent: dict[str, str],
    more: dict[str, list[str]],
    uses: dict[str, list[str]],
    u: str,
    v: str,
    kind: str,
) -> None:
    """Add model `u`'s edge of `kind` to `v` to the index's maps: a merge has several
    `derived_from` edges, the first the tree parent; a dataset edge is a use."""
    if kind == DERIVED_FROM:
        if u in parent:
            more.setdefault(u, []).append(v)
        else:
            parent[u] = v
    elif kind in (TRAINED_ON, EVALUATED_ON):
        uses.setdefault(u, []).append(v)


GraphLike: TypeAlias = "nx.MultiDiGraph | LineageIndex"


def lineage_index(g: GraphLike) -> LineageIndex:
    """The index of a graph, built once and kept in `g.graph` (rebuilt if the graph grew)."""
    if isinstance(g, LineageIndex):
        return g
    stamp = _stamp(g)
    cached = g.graph.get(_CACHE_KEY)
    if cached is not None and cached[0] == stamp:
        index: LineageIndex = cached[1]
        return index
    index = LineageIndex.from_graph(g)
    g.graph[_CACHE_KEY] = (stamp, index)
    return index


def remember_index(g: nx.MultiDiGraph, index: LineageIndex) -> None:
    """Keep `index` (built from the records `g` was drawn from) as the graph's index."""
    g.graph[_CACHE_KEY] = (_stamp(g), index)


def _stamp(g: nx.MultiDiGraph) -> tuple[int, int]:
    # len(g.edges) counts in one pass over the adjacency; number_of_edges() sums degrees.
    return len(g), len(g.edges)


def ancestors(g: GraphLike, name: str) -> list[str]:
    """Node keys of NAME's source models, nearest first."""
    return lineage_index(g).ancestors(name)


def descendants(g: GraphLike, name: str) -> list[str]:
    """Node keys of the models deriving from NAME (or using dataset NAME), in pre-order."""
    return lineage_index(g).descendants(name)


def impact(g: GraphLike, name: str) -> list[str]:
    """NAME plus what `dvc repro` would rebuild if it changed, in build order."""
    return lineage_index(g).impact(name)


def neighbourhood(g: GraphLike, name: str) -> list[str]:
    """NAME, its ancestors, its descendants and the datasets NAME uses (for `show`)."""
    index = lineage_index(g)
    node = index.resolve(name)
    keys = [*reversed(index.ancestors(node)), node, *index.descendants(node)]
    if node.startswith("model:"):
        keys += index.datasets_of(node)
    return list(dict.fromkeys(keys))
