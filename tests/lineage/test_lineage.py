"""The lineage graph, its queries and renderers, at the working tree and at a git revision."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import networkx as nx
import pytest
from conftest import git, write
from factories import dataset_manifest, model_manifest
from stemma.lineage import query
from stemma.lineage.graph import (
    DERIVED_FROM,
    EVALUATED_ON,
    PREVIOUS,
    TRAINED_ON,
    DatasetRecord,
    ModelRecord,
    build_graph,
    graph_from_records,
    model_node,
)
from stemma.lineage.query import LineageIndex
from stemma.lineage.render import mermaid_ids, render, to_dict
from stemma.registry import Registry
from stemma.registry.errors import ModelNotFound


def built(reg: Registry) -> Registry:
    """Dataset manifests and manifests for base and ft (scratch stays unbuilt)."""
    for name in reg.dataset_names():
        dataset_manifest(reg, name)
    model_manifest(Registry.open(reg.repo_root), "base")
    model_manifest(Registry.open(reg.repo_root), "ft")
    return Registry.open(reg.repo_root)


@pytest.fixture
def family(populated: Registry) -> Registry:
    """base -> ft -> {ft-a, ft-b}, ft-a -> ft-a1; scratch alone; two datasets."""
    for name, parent in (("ft-a", "ft"), ("ft-b", "ft"), ("ft-a1", "ft-a")):
        write(
            populated.root / "models" / name / "spec.yaml",
            f"source: {{model: {parent}, relation: adapter}}\n"
            "data: {train: digits-5to9, eval: digits-0to4}\n",
        )
    return built(Registry.open(populated.repo_root))


def test_graph_nodes_edges_and_attributes(family: Registry) -> None:
    g = build_graph(family)
    models = {n for n, a in g.nodes(data=True) if a["kind"] == "model"}
    assert models == {f"model:{n}" for n in ("base", "ft", "ft-a", "ft-a1", "ft-b", "scratch")}
    assert g.nodes["model:base"]["status"] == "built"
    assert g.nodes["model:base"]["id"] == family.model_manifest("base").id  # type: ignore[union-attr]
    assert (
        g.nodes["model:scratch"]["status"] == "unbuilt" and g.nodes["model:scratch"]["id"] is None
    )
    assert g.nodes["dataset:digits-0to4"]["kind"] == "dataset"
    edge = g.get_edge_data("model:ft", "model:base", key=DERIVED_FROM)
    assert edge["relation"] == "finetune"
    assert edge["source_id"] == family.model_manifest("base").id  # type: ignore[union-attr]
    assert g.has_edge("model:ft-a", "dataset:digits-5to9", key=TRAINED_ON)
    assert g.has_edge("model:ft-a", "dataset:digits-0to4", key=EVALUATED_ON)
    # base trains and evaluates on the same dataset: two edges, told apart by key
    assert set(g["model:base"]["dataset:digits-0to4"]) == {TRAINED_ON, EVALUATED_ON}
    assert not g.has_edge("model:base", "model:ft")  # edges point at what a node depends on


def test_queries_on_a_small_registry(family: Registry) -> None:
    g = build_graph(family)
    assert query.ancestors(g, "ft-a1") == ["model:ft-a", "model:ft", "model:base"]
    assert query.ancestors(g, "base") == []
    assert query.descendants(g, "ft") == ["model:ft-a", "model:ft-a1", "model:ft-b"]
    assert query.descendants(g, "scratch") == []
    assert query.impact(g, "ft") == ["model:ft", "model:ft-a", "model:ft-a1", "model:ft-b"]
    assert query.impact(g, "base")[0] == "model:base"
    # a dataset: every model using it, and theirs, the dataset first
    assert query.impact(g, "digits-0to4") == [
        "dataset:digits-0to4",
        "model:base",
        "model:ft",
        "model:ft-a",
        "model:ft-a1",
        "model:ft-b",
    ]
    assert set(query.descendants(g, "digits-5to9")) == {
        "model:ft",
        "model:ft-a",
        "model:ft-a1",
        "model:ft-b",
        "model:scratch",
    }
    assert query.neighbourhood(g, "ft-a") == [
        "model:base",
        "model:ft",
        "model:ft-a",
        "model:ft-a1",
        "dataset:digits-0to4",
        "dataset:digits-5to9",
    ]
    with pytest.raises(ModelNotFound, match="did you mean 'ft-a'"):
        query.ancestors(g, "ft-aa")


def test_impact_is_the_pipeline_build_order(family: Registry) -> None:
    from stemma.registry.pipeline.render import build_order

    order = [f"model:{n}" for n in build_order(family)]
    found = query.impact(build_graph(family), "base")
    assert found == [k for k in order if k in set(found)]


def random_forest(n: int, seed: int) -> list[ModelRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parent = rng.randrange(i) if i and rng.random() < 0.8 else None
        out.append(
            ModelRecord(
                f"m{i:04d}",
                None if parent is None else f"m{parent:04d}",
                "finetune",
                train=f"d{i % 3}",
            )
        )
    return out


def test_index_agrees_with_networkx_on_a_random_forest() -> None:
    records = random_forest(400, seed=1)
    g = graph_from_records(records, [DatasetRecord(f"d{j}") for j in range(3)])
    index = LineageIndex.from_records(records, [DatasetRecord(f"d{j}") for j in range(3)])
    lineage = nx.DiGraph(
        (u, v) for u, v, k in g.edges(keys=True) if k == DERIVED_FROM
    )  # child -> parent
    lineage.add_nodes_from(n for n, a in g.nodes(data=True) if a["kind"] == "model")
    for rec in records[::7]:
        key = f"model:{rec.name}"
        assert set(index.ancestors(key)) == nx.descendants(lineage, key)
        assert set(index.descendants(key)) == nx.ancestors(lineage, key)
        assert query.descendants(g, key) == index.descendants(key)
        impact = index.impact(key)
        assert impact[0] == key
        # build order: every model after its source
        pos = {k: i for i, k in enumerate(impact)}
        assert all(
            pos[k] > pos[f"model:{r.source}"]
            for r in records
            if (k := f"model:{r.name}") in pos and f"model:{r.source}" in pos
        )


def test_cycles_and_missing_sources_do_not_hang() -> None:
    records = [
        ModelRecord("a", "c"),
        ModelRecord("b", "a"),
        ModelRecord("c", "b"),
        ModelRecord("d", "c"),
        ModelRecord("e", "ghost"),
    ]
    g = graph_from_records(records, [])
    assert g.nodes["model:ghost"]["status"] == "missing"
    assert query.ancestors(g, "d") == ["model:c", "model:b", "model:a"]
    assert set(query.descendants(g, "a")) == {"model:b", "model:c", "model:d"}
    assert set(query.impact(g, "b")) == {"model:a", "model:b", "model:c", "model:d"}
    assert query.descendants(g, "ghost") == ["model:e"]
    tree = render(g, list(g.nodes), "tree")
    assert all(name in tree for name in "abcde")  # nodes in a cycle are still listed


def test_auto_sources_widen_the_impact() -> None:
    records = [
        ModelRecord("p"),
        ModelRecord("q"),
        ModelRecord("pick", None, auto=True, candidates=("p", "q")),
        ModelRecord("child", "pick"),
    ]
    g = graph_from_records(records, [])
    assert query.descendants(g, "q") == []  # nothing derives from q yet...
    assert query.impact(g, "q") == ["model:q", "model:pick", "model:child"]  # ...but it may


def test_graph_at_a_git_revision(family: Registry, tmp_path: Path) -> None:
    repo = family.repo_root
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "family")
    write(
        family.root / "models" / "late" / "spec.yaml",
        "source: {model: ft-b}\ndata: {train: digits-5to9}\n",
    )
    now = build_graph(Registry.open(repo))
    then = build_graph(Registry.at_revision(repo, "HEAD"))
    assert "model:late" in now and "model:late" not in then
    assert query.descendants(then, "ft-b") == []
    assert query.descendants(now, "ft-b") == ["model:late"]
    assert then.nodes["model:base"]["id"] == now.nodes["model:base"]["id"]


def test_history_adds_version_nodes(family: Registry) -> None:
    repo = family.repo_root
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    first = family.model_manifest("base").id  # type: ignore[union-attr]
    reg = Registry.open(repo)
    model_manifest(reg, "base", accuracy=0.95)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v2")
    reg = Registry.open(repo)
    second = reg.model_manifest("base").id  # type: ignore[union-attr]
    g = build_graph(reg, history=True)
    v1, v2 = f"model:base@{first}", f"model:base@{second}"
    assert g.nodes[v1]["kind"] == "version" and g.nodes[v2]["kind"] == "version"
    assert g.has_edge("model:base", v2, key=PREVIOUS) and g.has_edge(v2, v1, key=PREVIOUS)
    ft_v = f"model:ft@{reg.model_manifest('ft').id}"  # type: ignore[union-attr]
    assert g.has_edge(ft_v, v1, key=DERIVED_FROM)  # ft was built from the first base
    # version nodes stay out of the name-level queries
    assert query.descendants(g, "base")[0] == "model:ft"


# -- renderers ---------------------------------------------------------------------------


def test_tree_rendering(family: Registry) -> None:
    g = build_graph(family)
    text = render(g, ["model:base", *query.descendants(g, "base")], "tree", focus="model:base")
    lines = text.splitlines()
    assert lines[0].startswith("base [built ")
    assert lines[0].endswith("◀")
    assert [re.sub(r" \[.*", "", ln) for ln in lines[1:]] == [
        "└── ft (finetune)",
        "    ├── ft-a (adapter)",
        "    │   └── ft-a1 (adapter)",
        "    └── ft-b (adapter)",
    ]
    ds = render(g, query.impact(g, "digits-5to9"), "tree", focus="dataset:digits-5to9")
    assert ds.splitlines()[0].startswith("digits-5to9 (dataset)")
    assert ds.splitlines()[1].startswith("├── ft [built")  # its source is not drawn
    assert "└── scratch [unbuilt]" in ds


def test_mermaid_is_valid_looking(family: Registry) -> None:
    g = build_graph(family)
    keys = query.neighbourhood(g, "ft")
    text = render(
        g, keys, "mermaid", focus="model:ft", marks={"model:ft-a": "changed", "model:ft-b": "added"}
    )
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    ids = mermaid_ids(keys)
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", i) for i in ids.values())
    assert len(set(ids.values())) == len(ids)
    node_re = re.compile(r'^  [A-Za-z0-9_]+(\["[^"]*"\]|\[\("[^"]*"\)\]|\(\["[^"]*"\]\))$')
    edge_re = re.compile(r'^  [A-Za-z0-9_]+ (-->|-\.->)(\|"[^"]*"\|)? [A-Za-z0-9_]+$')
    body = [ln for ln in lines[1:] if not ln.startswith(("  classDef", "  class "))]
    assert body and all(node_re.match(ln) or edge_re.match(ln) for ln in body), body
    assert "  classDef changed " in text and "  classDef added " in text
    assert "  class model_ft_a changed" in text and "  class model_ft_b added" in text
    assert '  model_base -->|"finetune"| model_ft' in lines
    assert '  dataset_digits_5to9 -.->|"train, eval"| model_ft' in lines  # one merged arrow
    assert "digits_0to4" not in text  # only the datasets of the focus are in `show`
    everything = render(g, list(g.nodes), "mermaid").splitlines()
    assert '  dataset_digits_0to4 -.->|"eval"| model_ft_a' in everything


def test_mermaid_ids_are_unique_after_sanitising() -> None:
    ids = mermaid_ids(["model:a-b", "model:a_b", "model:a.b"])
    assert len(set(ids.values())) == 3


def test_dot_and_json(family: Registry) -> None:
    g = build_graph(family)
    keys = query.neighbourhood(g, "ft")
    dot = render(g, keys, "dot", focus="model:ft")
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert '"model:base" -> "model:ft" [label="finetune"];' in dot
    assert dot.count("->") == len({(u, v) for u, v, _ in g.subgraph(keys).edges(keys=True)})
    data = json.loads(render(g, keys, "json", focus="model:ft"))
    assert data == to_dict(g, keys, "model:ft")
    assert data["order"] == keys
    assert [n["key"] for n in data["nodes"]] == sorted(keys)
    assert {
        "from": "model:ft",
        "to": "model:base",
        "kind": "derived_from",
        "relation": "finetune",
        "auto": False,
        "source_id": g.nodes["model:base"]["id"],
    } in data["edges"]
    edges = [(e["from"], e["to"], e["kind"]) for e in data["edges"]]
    assert edges == sorted(edges)
    with pytest.raises(ValueError, match="unknown format"):
        render(g, keys, "svg")


# -- CLI ----------------------------------------------------------------------------------


def test_cli_lineage_commands(family: Registry, cli) -> None:
    repo = family.repo_root
    res = cli(["lineage", "show", "ft-a"], repo)
    assert res.code == 0 and "ft-a (adapter)" in res.stdout and "ft-b" not in res.stdout
    res = cli(["lineage", "ancestors", "ft-a1", "--format", "json"], repo)
    assert json.loads(res.stdout)["order"] == [
        "model:base",
        "model:ft",
        "model:ft-a",
        "model:ft-a1",
    ]
    res = cli(["lineage", "descendants", "ft", "-f", "mermaid"], repo)
    assert res.stdout.startswith("flowchart TD") and "model_ft_a1" in res.stdout
    res = cli(["lineage", "impact", "base"], repo)
    assert res.stdout.splitlines()[0] == "  1. model:base"
    res = cli(["lineage", "impact", "digits-0to4", "-f", "dot"], repo)
    assert res.code == 0 and "digraph" in res.stdout
    res = cli(["lineage", "show", "nope"], repo)
    assert res.code == 1 and res.stderr.startswith("error: no model named 'nope'")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "c")
    res = cli(["lineage", "descendants", "ft", "--rev", "HEAD", "-f", "json"], repo)
    assert json.loads(res.stdout)["order"][0] == "model:ft"


def test_graph_at_a_revision_of_a_registry_in_a_subfolder(family: Registry, tmp_path: Path) -> None:
    import shutil

    repo = tmp_path / "mono"
    (repo / "other").mkdir(parents=True)
    git(repo, "init", "-q")
    write(repo / "other" / "README.md", "not the registry\n")
    shutil.copytree(family.repo_root, repo / "ml", ignore=shutil.ignore_patterns(".git", ".dvc"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "mono")
    then = build_graph(Registry.at_revision(repo / "ml", "HEAD"))
    now = build_graph(Registry.open(repo / "ml"))
    assert sorted(then.nodes(data="id")) == sorted(now.nodes(data="id"))
    assert sorted(then.edges(keys=True)) == sorted(now.edges(keys=True))
    assert query.descendants(then, "ft") == ["model:ft-a", "model:ft-a1", "model:ft-b"]


def test_build_order_ranks_each_model_after_its_source_cycles_included() -> None:
    for seed in range(10):
        rng = random.Random(seed)
        names = [f"m{i:03d}" for i in range(150)]
        rng.shuffle(names)
        records = []
        for name in names:
            parent = rng.choice(names) if rng.random() < 0.8 else None
            records.append(ModelRecord(name, None if parent == name else parent))
        index = LineageIndex.from_records(records)
        assert sorted(index.rank) == sorted(model_node(n) for n in names)
        looped = {k for loop in index.forest.cycles() for k in loop}
        for r in records:
            node = model_node(r.name)
            if r.source is not None and node not in looped:
                assert index.rank[model_node(r.source)] < index.rank[node]


def test_deep_chains_render_and_query() -> None:
    records = [ModelRecord("m00000")] + [
        ModelRecord(f"m{i:05d}", f"m{i - 1:05d}") for i in range(1, 1500)
    ]
    g = graph_from_records(records, [])
    assert len(query.ancestors(g, "m01499")) == 1499
    assert query.descendants(g, "m00000")[-1] == "model:m01499"
    tree = render(g, ["model:m00000", *query.descendants(g, "m00000")], "tree")
    assert tree.splitlines()[-1] == " " * 4 * 1498 + "└── m01499 [unbuilt]"


def test_records_from_the_index_match_records_from_the_files(family: Registry) -> None:
    from stemma.lineage import graph as graph_module

    root = family.root
    write(  # a model that picks its source by exploration, with checks
        root / "models/picked/spec.yaml",
        "source: {model: auto, candidates: 'ft*', relation: adapter}\n"
        "data: {train: digits-5to9}\n"
        "checks: {forgetting: {data: digits-0to4, max_drop: 0.1}, drift: {data: digits-5to9}}\n",
    )
    (root / "models/ft/spec.yaml").write_text(  # stale: the spec changed since the build
        (root / "models/ft/spec.yaml").read_text() + "description: changed\n"
    )
    shutil.move(root / "models/base/spec.yaml", root / "base-spec.yaml")  # registered
    reg = Registry.open(family.repo_root)
    indexed = graph_module._indexed_records(reg)
    assert indexed == graph_module._file_records(Registry.open(family.repo_root))
    states = {m.name: m.status for m in indexed[0]}
    assert states["base"] == "registered" and states["ft"] == "stale"
    assert {m.name: m.candidates for m in indexed[0]}["picked"] == ("ft", "ft-a", "ft-a1", "ft-b")
