"""The lineage core (`stemma.registry.rules.dag`) against networkx on random forests and DAGs."""

from __future__ import annotations

import random

import networkx as nx
import pytest
from stemma.registry.errors import ConsistencyError
from stemma.registry.rules.dag import Forest, LineageCycle, build_order, reach


def random_parents(n: int, seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    return {f"m{i:03d}": f"m{rng.randrange(i):03d}" for i in range(1, n) if rng.random() < 0.9}


def test_forest_matches_networkx() -> None:
    parent = random_parents(300, seed=1)
    names = [f"m{i:03d}" for i in range(300)]
    forest = Forest(names, parent)
    g = nx.DiGraph((child, up) for child, up in parent.items())
    g.add_nodes_from(names)
    for name in random.Random(2).sample(names, 40):
        assert set(forest.descendants(name)) == nx.ancestors(g, name)
        assert forest.ancestors(name) == list(nx.dfs_preorder_nodes(g, name))[1:]
        assert reach({c: [u] for c, u in parent.items()}, name) == {
            n: d for n, d in nx.single_source_shortest_path_length(g, name).items() if n != name
        }
    tops = ["m010", "m001", "m010", "m150"]
    union = forest.union(tops)
    assert len(union) == len(set(union))
    assert set(union) == {n for t in tops for n in [t, *forest.descendants(t)]}
    assert forest.cycles() == []


def test_build_order_puts_every_model_after_what_it_is_built_from() -> None:
    rng = random.Random(3)
    deps = {f"m{i:03d}": [f"m{rng.randrange(i):03d}" for _ in range(i and 2)] for i in range(200)}
    order = build_order(deps)
    assert sorted(order) == sorted(deps)
    at = {n: i for i, n in enumerate(order)}
    assert all(at[d] < at[n] for n, ds in deps.items() for d in ds)
    # The pipeline's order: a depth-first walk from the sorted names, deps in sorted order.
    assert build_order({"b": [], "a": ["c"], "c": []}) == ["c", "a", "b"]
    assert build_order({"a": ["x"]}) == ["a"]  # a dependency that is not a node is left out
    chain = {f"n{i:05d}": [f"n{i - 1:05d}"] if i else [] for i in range(5000)}
    assert build_order(chain) == sorted(chain)  # deep chains need no recursion


def test_cycles_are_found_once_and_named() -> None:
    forest = Forest([], {"a": "b", "b": "c", "c": "a", "d": "a", "e": "e", "f": "g"})
    assert forest.cycles() == [["a", "b", "c"], ["e"]]
    assert forest.descendants("a") == ["c", "d", "b"]  # breadth-first inside a cycle
    assert forest.ancestors("d") == ["a", "b", "c"]
    with pytest.raises(LineageCycle, match=r"^lineage cycle: a -> b -> c -> a$") as err:
        build_order({"a": ["b"], "b": ["c"], "c": ["a"]})
    assert isinstance(err.value, ConsistencyError) and err.value.loop == ["a", "b", "c", "a"]
    assert build_order({"a": ["b"], "b": ["a"]}, strict=False) == ["b", "a"]
