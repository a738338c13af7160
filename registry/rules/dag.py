"""The lineage core: cycles, build order and descendants of the models, by name.

One module for the rules that the pipeline (stage order, exploration candidates), the
consistency checks (cycles) and the lineage queries (ancestors, descendants, impact) share;
the SQL macros `ancestors()` and `descendants()` of the index are tested against `reach`.
Everything here is pure: names in, names out, no files.

Most models have one source, so `derived_from` mostly forms a forest (`Forest`): the
descendants of a model are one contiguous slice of a pre-order walk, and its ancestors the
walk up the parent map, both costing the size of the answer. Nodes caught in a cycle are
outside the walk and fall back to a breadth-first search. A merge has several parents
(`parents.parents_of`): the first is its tree parent, the others `more`; a forest with any
such edge answers every question by a breadth-first search over all edges.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from stemma.registry.errors import ConsistencyError


class LineageCycle(ConsistencyError):
    """Models that derive from each other, in a loop."""

    def __init__(self, loop: list[str]) -> None:
        super().__init__("lineage cycle: " + " -> ".join(loop))
        self.loop = loop


def reach(edges: Mapping[str, Iterable[str]], start: str) -> dict[str, int]:
    """Every node reached from `start` along `edges` (node -> next nodes), with its shortest
    depth, in breadth-first order; `start` itself is left out."""
    depth = {start: 0}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(edges.get(node, ())):
            if nxt not in depth:
                depth[nxt] = depth[node] + 1
                queue.append(nxt)
    del depth[start]
    return depth


def build_order(deps: Mapping[str, Iterable[str]], strict: bool = True) -> list[str]:
    """The nodes of `deps` (node -> nodes it is built from), each after its dependencies and
    otherwise by name: a depth-first walk from the sorted names, dependencies in sorted
    order. A cycle raises `LineageCycle` when `strict`, else the walk stops where it closes.
    Dependencies that are not keys of `deps` are left out."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the walk's path, 2: ordered

    def next_deps(node: str) -> list[str]:
        # popped from the end: the smallest name first
        return sorted((d for d in set(deps[node]) if d in deps), reverse=True)

    for start in sorted(deps):
        if start in state:
            continue
        state[start] = 1
        stack = [(start, next_deps(start))]
        while stack:
            node, todo = stack[-1]
            if todo:
                nxt = todo.pop()
                seen = state.get(nxt, 0)
                if seen == 0:
                    state[nxt] = 1
                    stack.append((nxt, next_deps(nxt)))
                elif seen == 1 and strict:
                    path = [n for n, _ in stack]
                    raise LineageCycle([*path[path.index(nxt) :], nxt])
                continue
            stack.pop()
            state[node] = 2
            order.append(node)
    return order


class Forest:
    """The lineage of `nodes`: parent map, sorted child lists, pre-order walk; `more` holds
    the further parents of merges (node -> parents after the first)."""

    def __init__(
        self,
        nodes: Iterable[str],
        parent: Mapping[str, str],
        more: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.parent = dict(parent)
        self.more = {k: [p for p in v if p != self.parent.get(k)] for k, v in (more or {}).items()}
        self.more = {k: v for k, v in self.more.items() if v}
        extra = {p for ps in self.more.values() for p in ps}
        self.nodes = sorted(
            set(nodes) | set(self.parent) | set(self.parent.values()) | set(self.more) | extra
        )
        children: dict[str, list[str]] = {}
        for child in self.nodes:  # sorted, so every child list comes out sorted
            if child in self.parent:
                children.setdefault(self.parent[child], []).append(child)
        self.children = children
        # every edge, the merges' further parents included (the same as `children` without)
        self.all_children: dict[str, list[str]] = {k: list(v) for k, v in children.items()}
        self.all_parents: dict[str, list[str]] = {k: [v] for k, v in self.parent.items()}
        for child in sorted(self.more):
            for above in self.more[child]:
                self.all_children.setdefault(above, []).append(child)
                self.all_parents.setdefault(child, []).append(above)
        order: list[str] = []
        stack = [n for n in reversed(self.nodes) if n not in self.parent]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(reversed(children.get(node, ())))
        self.order = order  # nodes in a cycle (or below one) are not in it
        self.tin = {node: i for i, node in enumerate(order)}
        size = dict.fromkeys(order, 1)
        for node in reversed(order):
            up = self.parent.get(node)
            if up is not None:
                size[up] += size[node]
        self.size = size

    @classmethod
    def of(cls, nodes: Iterable[str], parents: Mapping[str, Sequence[str]]) -> Forest:
        """The lineage from node -> its parents (`parents.parent_map`): the first of each
        list is the tree parent, the others merge edges."""
        first = {k: v[0] for k, v in parents.items() if v}
        return cls(nodes, first, {k: v[1:] for k, v in parents.items() if len(v) > 1})

    def ancestors(self, node: str) -> list[str]:
        """The sources of `node`, nearest first (stopping where a cycle closes)."""
        if self.more:
            return list(reach(self.all_parents, node))
        out: list[str] = []
        seen = {node}
        up = self.parent.get(node)
        while up is not None and up not in seen:
            out.append(up)
            seen.add(up)
            up = self.parent.get(up)
        return out

    def descendants(self, node: str) -> list[str]:
        """Every node deriving from `node`, in pre-order (breadth-first inside a cycle or
        where merges make the lineage a DAG)."""
        if self.more:
            return list(reach(self.all_children, node))
        if node in self.tin:
            start = self.tin[node]
            return self.order[start + 1 : start + self.size[node]]
        return list(reach(self.children, node))

    def union(self, tops: Iterable[str]) -> list[str]:
        """`tops` and their descendants, each once: subtrees nested in an earlier one are
        skipped by walking the tops in pre-order, so every slice is copied once."""
        tops = list(dict.fromkeys(tops))
        out: list[str] = []
        if self.more:  # a DAG: one breadth-first search from every top
            seen: set[str] = set()
            for top in tops:
                for node in [top, *reach(self.all_children, top)]:
                    if node not in seen:
                        seen.add(node)
                        out.append(node)
            return out
        covered = -1
        for top in sorted((t for t in tops if t in self.tin), key=self.tin.__getitem__):
            start = self.tin[top]
            if start >= covered:
                covered = start + self.size[top]
                out += self.order[start:covered]
        seen = set(out)
        for top in tops:  # caught in a cycle: outside the walk
            if top not in self.tin:
                for node in [top, *reach(self.children, top)]:
                    if node not in seen:
                        seen.add(node)
                        out.append(node)
        return out

    def cycles(self) -> list[list[str]]:
        """Each loop once, as the nodes met walking up from the first of them by name (with
        merges: the first loop a depth-first walk over every edge meets)."""
        if self.more:
            try:
                build_order(self.all_parents, strict=True)
            except LineageCycle as exc:
                return [exc.loop[:-1]]
            return []
        found, seen = [], set()
        for start in sorted(self.parent):
            path: list[str] = []
            node: str | None = start
            while node is not None and node not in seen and node not in path:
                path.append(node)
                node = self.parent.get(node)
            if node is not None and node in path:
                found.append(path[path.index(node) :])
            seen.update(path)
        return found


def exploration_candidates(
    name: str, names: Iterable[str], pattern: str, forest: Forest
) -> list[str]:
    """The models an exploration for `name` (`source: {model: auto}`) may pick from: the
    `names` matching the candidates glob, less `name` itself and its descendants in
    `forest` (a descendant as source would close a loop). `stemma pipeline` and
    `stemma repro` both take the candidates from here."""
    import fnmatch

    banned = {name, *forest.descendants(name)}
    return [m for m in names if fnmatch.fnmatch(m, pattern) and m not in banned]
