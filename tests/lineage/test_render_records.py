"""The renderers read each node and edge of a lineage graph as a typed record
(`nodes.LineageNode`, `nodes.LineageEdge`): every attribute the graph sets has a field, so a
record reads a node whole, and an attribute the record does not know is refused."""

from __future__ import annotations

import json

import pytest
from conftest import git, write
from factories import model_manifest
from stemma.lineage.graph import (
    DatasetRecord,
    ModelRecord,
    build_graph,
    graph_from_records,
)
from stemma.lineage.nodes import LineageEdge, LineageNode, new_graph, short_id
from stemma.lineage.render import render
from stemma.registry import Registry
from test_lineage import family  # noqa: F401  (the fixture)

MID = "sha256:" + "ab" * 32


def _records() -> tuple[list[ModelRecord], list[DatasetRecord]]:
    """base -> ft (auto), a merge of both, and a model whose source is not declared."""
    models = [
        ModelRecord("base", train="d", id=MID, status="built", metrics={"accuracy": 0.9}),
        ModelRecord("ft", "base", "finetune", MID, "d", "e", ("c",), auto=True),
        ModelRecord("merged", "base", "merge", None, "d", more=("ft",)),
        ModelRecord("orphan", "ghost", "adapter", None, "gone"),
    ]
    return models, [DatasetRecord("d", MID, "built"), DatasetRecord("e")]


def _attrs_set(attrs: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in attrs.items() if v is not None}


def test_every_node_and_edge_of_a_graph_reads_whole() -> None:
    g = graph_from_records(*_records())
    for key, attrs in g.nodes(data=True):
        node = LineageNode.of(g, key)
        assert node.to_dict() == {**_attrs_set(attrs), "key": key}
        assert LineageNode.dict_of(key, attrs) == node.to_dict()  # the render's shortcut
    for _, _, attrs in g.edges(data=True):
        assert LineageEdge(**attrs).to_dict() == _attrs_set(attrs)
        assert LineageEdge.dict_of(attrs) == _attrs_set(attrs)
    assert LineageNode.of(g, "model:ghost").status == "missing"
    assert LineageNode.of(g, "dataset:gone").kind == "dataset"


def test_version_and_hub_nodes_read_whole(family: Registry) -> None:  # noqa: F811
    repo = family.repo_root
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    model_manifest(Registry.open(repo), "base", accuracy=0.95)
    # a registered model (a manifest, no spec) whose card names a Hub parent
    doc = json.loads((family.model_dir("base") / "manifest.json").read_text())
    doc["name"] = "hubby"
    doc["spec"]["external_sources"] = [{"hub_id": "org/bert-x", "relation": "finetune"}]
    write(family.model_dir("hubby") / "manifest.json", json.dumps(doc))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v2")
    g = build_graph(Registry.open(repo), history=True)
    for key, attrs in g.nodes(data=True):
        assert LineageNode.of(g, key).to_dict() == {**_attrs_set(attrs), "key": key}
    versions = [LineageNode.of(g, k) for k, a in g.nodes(data=True) if a["kind"] == "version"]
    assert len(versions) >= 3 and all(v.commit and v.date and v.author for v in versions)
    assert versions[0].label == f"{versions[0].name}@{short_id(versions[0].id)}"
    hub = LineageNode.of(g, "model:hub:org/bert-x")
    assert (hub.hub_id, hub.status, hub.label) == ("org/bert-x", "external", "hub:org/bert-x")


def test_an_attribute_the_record_lacks_is_refused() -> None:
    g = new_graph()
    g.add_node("model:a", kind="model", name="a", colour="red")
    with pytest.raises(TypeError, match="colour"):
        render(g, ["model:a"], "json")
    g.add_node("model:b", kind="model", name="b")
    g.add_edge("model:a", "model:b", key="derived_from", weight=1)
    with pytest.raises(TypeError, match="weight"):
        LineageEdge(**g.edges["model:a", "model:b", "derived_from"])
    del g.nodes["model:a"]["colour"]
    with pytest.raises(TypeError, match="weight"):
        render(g, ["model:a", "model:b"], "json")
    with pytest.raises(TypeError, match="key"):
        LineageNode.dict_of("model:a", {"key": "model:b"})


def test_labels_and_json_form() -> None:
    node = LineageNode("model:x@sha256:0123456789abcdef", kind="version", name="x", id=MID)
    assert node.label == "x@abababababab"
    assert LineageNode("dataset:d").label == "d"  # no name attribute: the key's name part
    assert LineageNode("model:m", kind="model", auto=False).to_dict() == {
        "key": "model:m",
        "kind": "model",
        "auto": False,  # False is a value, not an absent attribute
    }
    assert LineageEdge(roles="eval,check").to_dict() == {"roles": "eval,check"}
    assert short_id(None) == "" and short_id(MID) == "ab" * 6
