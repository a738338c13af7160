"""Merges: the four methods against mergekit's own functions, and a merge's several parents
everywhere lineage is read (edges, status, repro order, card, errors)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from conftest import write
from factories import dataset_manifest, model_manifest
from stemma.migration import merge
from stemma.registry import Registry
from stemma.registry.rules.dag import Forest, LineageCycle, build_order
from stemma.registry.rules.parents import combined_id, parents_of, problems

# -- the methods against mergekit ---------------------------------------------------------


def _tensors(seed: int, n: int, shape: tuple[int, ...] = (6, 5)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def test_linear_matches_mergekit() -> None:
    mk = pytest.importorskip("mergekit.merge_methods.linear")
    from mergekit.merge_methods.base import TensorBatch

    a, b, c = _tensors(0, 3)
    for normalize in (True, False):
        weights = [0.2, 0.5, 1.3]
        ref = mk.linear_merge.merge_batch(
            TensorBatch([t.unsqueeze(0) for t in (a, b, c)]),
            weight=torch.tensor([weights]),
            normalize=normalize,
        )[0]
        got = merge.linear([a, b, c], weights, normalize)
        torch.testing.assert_close(got, ref)


def _gta(method: str, base: torch.Tensor, others: list[torch.Tensor], **params: Any) -> Any:
    from mergekit.merge_methods.base import TensorGroup
    from mergekit.merge_methods.registry import get

    group = TensorGroup.from_tensors([base, *others], base_index=0)
    ids = range(1, len(others) + 1)
    full = {
        "int8_mask": False,
        "rescale": False,
        "lambda": params.get("lam", 1.0),
        "normalize": params["normalize"],
        "weight": dict(zip(ids, params["weights"], strict=True)),
        "density": dict(zip(ids, params.get("density", [1.0] * len(others)), strict=True)),
    }
    return get(method).merge_group(group, **full)


def test_task_arithmetic_matches_mergekit() -> None:
    pytest.importorskip("mergekit")
    base, a, b = _tensors(1, 3)
    for normalize, lam in ((False, 1.0), (True, 0.7)):
        ref = _gta(
            "task_arithmetic", base, [a, b], weights=[0.6, 0.9], normalize=normalize, lam=lam
        )
        got = merge.task_arithmetic(base, [a, b], [0.6, 0.9], normalize=normalize, lam=lam)
        torch.testing.assert_close(got, ref)


def test_ties_matches_mergekit() -> None:
    pytest.importorskip("mergekit")
    base, a, b, c = _tensors(2, 4, (8, 7))
    for density, normalize in (([0.5, 0.3, 0.8], True), ([1.0, 0.2, 0.6], False)):
        w = [1.0, 0.5, 0.8]
        ref = _gta(
            "ties", base, [a, b, c], weights=w, density=density, normalize=normalize, lam=0.9
        )
        got = merge.ties(base, [a, b, c], w, density, normalize, 0.9)
        torch.testing.assert_close(got, ref)


def test_slerp_matches_mergekit() -> None:
    sl = pytest.importorskip("mergekit.merge_methods.slerp")
    v0, v1 = _tensors(3, 2, (5, 4, 3))
    for t in (0.0, 0.25, 0.5, 0.9, 1.0):
        ref = sl.slerp(torch.tensor([t]), v0.unsqueeze(0), v1.unsqueeze(0))[0]
        torch.testing.assert_close(merge.slerp(t, v0, v1), ref)
    # nearly parallel: linear interpolation, as mergekit does
    ref = sl.slerp(torch.tensor([0.3]), v0.unsqueeze(0), (v0 * 2).unsqueeze(0))[0]
    torch.testing.assert_close(merge.slerp(0.3, v0, v0 * 2), ref)


# -- the one rule: parents_of ---------------------------------------------------------------


def test_parents_of_every_shape_of_source() -> None:
    assert parents_of({"source": {"model": "a"}}) == ("a",)
    assert parents_of({"source": {"model": "auto"}}) == ()
    assert parents_of({}) == ()
    spec = {"source": {"relation": "merge", "models": ["a", "b"], "base": "c"}}
    assert parents_of(spec) == ("a", "b", "c")
    dup = {"source": {"relation": "merge", "models": ["a", "a"], "merge": {"method": "linear"}}}
    assert problems(dup) == [
        ("/source/models/1", "parent 'a' is named twice (also at /source/models/0)")
    ]
    assert combined_id(["sha256:1"]) == "sha256:1"
    assert combined_id(["sha256:1", None]) is None
    assert combined_id(["sha256:1", "sha256:2"]) != combined_id(["sha256:2", "sha256:1"])


def test_dag_with_merges() -> None:
    forest = Forest.of(
        ["base", "a", "b", "m", "x"], {"a": ["base"], "b": ["base"], "m": ["a", "b"], "x": ["m"]}
    )
    assert set(forest.descendants("b")) == {"m", "x"}
    assert set(forest.ancestors("m")) == {"a", "b", "base"}
    assert forest.union(["b"]) == ["b", "m", "x"]
    order = build_order({"base": [], "a": ["base"], "b": ["base"], "m": ["b", "a"]})
    assert order.index("m") > max(order.index("a"), order.index("b"))
    loop = Forest.of(["a", "b", "m"], {"a": ["m"], "m": ["a", "b"]})
    assert loop.cycles() == [["a", "m"]]
    with pytest.raises(LineageCycle):
        build_order({"a": ["m"], "m": ["a", "b"], "b": []})


# -- a registry with two fine-tunes of a base and their merge -------------------------------

MERGE_SPECS = {
    "datasets/d/spec.yaml": "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n",
    "models/base/spec.yaml": """
        architecture: {family: mlp, hidden: [16]}
        data: {train: d}
        training: {epochs: 1, batch_size: 64, optimizer: adam, lr: 0.01, seed: 0}
    """,
    "models/ft-a/spec.yaml": """
        source: {model: base}
        data: {train: d}
        training: {epochs: 1, lr: 0.01, optimizer: adam, seed: 1}
    """,
    "models/ft-b/spec.yaml": """
        source: {model: base}
        data: {train: d}
        training: {epochs: 1, lr: 0.02, optimizer: adam, seed: 2}
    """,
    "models/merged/spec.yaml": """
        description: TIES merge of the two fine-tunes.
        source:
          relation: merge
          models: [ft-a, ft-b]
          base: base
          merge: {method: ties, density: 0.5, weight: [1.0, 0.5]}
        data: {train: d}
        gates: {accuracy: ">= 0.1"}
    """,
}


def _merge_manifest(reg: Registry) -> dict[str, Any]:
    parents = [{"model": n, "id": reg.model_manifest(n).id} for n in ("ft-a", "ft-b", "base")]
    source = {
        "model": "ft-a",
        "relation": "merge",
        "id": combined_id([p["id"] for p in parents]),
        "parents": parents,
    }
    return model_manifest(reg, "merged", source=source)


@pytest.fixture
def merged(registry: Registry) -> Registry:
    """The registry with every manifest written by the factories (no training)."""
    for rel, text in MERGE_SPECS.items():
        write(registry.root / rel, text)
    reg = Registry.open(registry.root)
    dataset_manifest(reg, "d")
    for name in ("base", "ft-a", "ft-b"):
        model_manifest(reg, name)
    _merge_manifest(reg)
    return Registry.open(registry.root)


def test_edges_show_every_parent(merged: Registry, cli: Any) -> None:
    res = cli(
        ["query", "--json", "select src, dst, relation from edges where kind = 'derived_from'"],
        merged.root,
    )
    assert res.code == 0, res.stderr
    got = {(r["src"], r["dst"], r["relation"]) for r in json.loads(res.stdout)}
    assert {("merged", p, "merge") for p in ("ft-a", "ft-b", "base")} <= got
    res = cli(["query", "--json", "select name from ancestors('merged')"], merged.root)
    assert {r["name"] for r in json.loads(res.stdout)} == {"ft-a", "ft-b", "base"}
    res = cli(["query", "--json", "select name, status from models"], merged.root)
    assert {r["name"]: r["status"] for r in json.loads(res.stdout)}["merged"] == "built"


def test_a_rebuilt_parent_makes_the_merge_stale_and_repro_orders_it_after_both(
    merged: Registry, cli: Any
) -> None:
    from stemma.registry.pipeline.render import build_order
    from stemma.registry.pipeline.repro import plan
    from stemma.registry.query.listing import model_status

    order = build_order(merged)
    assert order.index("merged") > max(order.index("ft-a"), order.index("ft-b"))
    steps = plan(merged)  # no weights on disk: every model is to build
    assert steps.models.index("merged") > max(steps.models.index(p) for p in ("ft-a", "ft-b"))
    target = [t for t in steps.targets if t.endswith(":build-merged") or "merged" in t][-1]
    assert {t.split(":")[0] for t in steps.parents[target]} >= {
        "models/ft-a/dvc.yaml",
        "models/ft-b/dvc.yaml",
    }
    # one parent's spec edited, then rebuilt: the merge is stale (in Python and in SQL)
    spec = merged.root / "models/ft-b/spec.yaml"
    spec.write_text(spec.read_text().replace("lr: 0.02", "lr: 0.03"))
    reg = Registry.open(merged.root)
    model_manifest(reg, "ft-b", accuracy=0.8)
    reg = Registry.open(merged.root)
    assert model_status(reg, "merged", reg.model_manifest("merged")) == "stale"
    res = cli(["query", "--json", "select name, status from models"], merged.root)
    assert {r["name"]: r["status"] for r in json.loads(res.stdout)}["merged"] == "stale"
    res = cli(["validate"], merged.root)
    assert "models/merged/manifest.json" in res.stdout + res.stderr
    # rebuilt from the parents as they are: built again
    _merge_manifest(reg)
    reg = Registry.open(merged.root)
    assert model_status(reg, "merged", reg.model_manifest("merged")) == "built"


def test_card_lists_both_base_models(merged: Registry) -> None:
    from huggingface_hub import ModelCard
    from stemma.registry.publish.card import render

    for name in ("ft-a", "ft-b"):
        spec = merged.root / f"models/{name}/spec.yaml"
        spec.write_text(f"hub_id: org/{name}\n" + spec.read_text())
    reg = Registry.open(merged.root)
    _meta, text = render(reg, reg.model_manifest("merged"))
    card = ModelCard(text)
    assert card.data.base_model == ["org/ft-a", "org/ft-b"]
    assert card.data.base_model_relation == "merge"


@pytest.mark.parametrize(
    ("source", "pointer", "says"),
    [
        (
            "{relation: merge, models: [ft-a, nope], merge: {method: linear}}",
            "/source/models/1",
            "'nope' does not exist",
        ),
        (
            "{relation: merge, models: [ft-a, ft-a], merge: {method: linear}}",
            "/source/models/1",
            "named twice",
        ),
        (
            "{relation: merge, models: [ft-a, ft-b], base: merged, merge: {method: ties}}",
            "/source/",
            "cycle",
        ),
    ],
)
def test_bad_parent_lists_give_one_located_line(
    merged: Registry, cli: Any, source: str, pointer: str, says: str
) -> None:
    spec = merged.root / "models/merged/spec.yaml"
    spec.write_text(f"source: {source}\ndata: {{train: d}}\n")
    res = cli(["validate"], merged.root)
    assert res.code == 1
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if says in ln]
    assert lines and "models/merged/spec.yaml" in lines[0] and pointer in lines[0], (
        res.stdout + res.stderr
    )
    assert "Traceback" not in res.stdout + res.stderr
