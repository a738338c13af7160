"""A model is stale when a dataset its manifest records was rebuilt (another manifest id) or
is gone: every gatherer of the status rule (`stemma.registry.rules.status`) says so."""

from __future__ import annotations

import pytest
from factories import dataset_manifest, model_manifest
from stemma.lineage.graph import build_graph, model_node, partial_graph
from stemma.migration.verify import verify_model
from stemma.registry import Registry
from stemma.registry.check.consistency import check
from stemma.registry.errors import StemmaError
from stemma.registry.pipeline import repro
from stemma.registry.query.listing import list_entries, model_staleness, model_status
from stemma.registry.query.sql import query
from stemma.registry.rules import status


def _built(reg: Registry) -> Registry:
    """Manifests (no training) for every dataset and model, with outputs on disk, so that
    nothing is stale and `repro` plans nothing."""
    for name in ("digits-0to4", "digits-5to9"):
        dataset_manifest(reg, name)
        (reg.root / "datasets" / name / "data.npz").write_bytes(b"x")
    for name in ("base", "ft", "scratch"):
        model_manifest(reg, name)
        (reg.root / "models" / name / "weights.safetensors").write_bytes(b"x")
    return Registry.open(reg.root)


def _statuses(reg: Registry) -> dict[str, dict[str, str]]:
    """Each model's status as every gatherer reports it."""
    names = reg.model_names()
    indexed = {e.name: e.status for e in list_entries(reg, "model")}
    sql = dict(query(reg, "SELECT name, status FROM models").rows)
    g = build_graph(reg)
    part = partial_graph(reg, names, reg.dataset_names())
    out = {}
    for name in names:
        out[name] = {
            "model_status": model_status(reg, name, reg.model_manifest(name)),
            "ls": indexed[name],
            "sql": sql[name],
            "graph": g.nodes[model_node(name)]["status"],
            "partial_graph": part.nodes[model_node(name)]["status"],
        }
    return out


def _rebuild_with_other_split(reg: Registry, name: str) -> None:
    spec = reg.root / "datasets" / name / "spec.yaml"
    spec.write_text(spec.read_text().replace("eval: 0.25", "eval: 0.3"))
    before = reg.dataset_manifest(name)
    after = dataset_manifest(Registry.open(reg.root), name)
    assert before is not None and after["id"] != before.id


@pytest.fixture
def built(populated: Registry) -> Registry:
    return _built(populated)


def test_all_built_before_any_change(built: Registry) -> None:
    for name, seen in _statuses(built).items():
        assert set(seen.values()) == {status.BUILT}, (name, seen)
    assert repro.plan(built).models == []


def test_rebuilt_training_data_makes_its_models_stale(built: Registry) -> None:
    _rebuild_with_other_split(built, "digits-0to4")
    reg = Registry.open(built.root)
    seen = _statuses(reg)
    assert set(seen["base"].values()) == {status.STALE}, seen["base"]
    assert model_staleness(reg, "base", reg.model_manifest("base")) == status.DATA_CHANGED
    for other in ("ft", "scratch"):  # ft's source was not rebuilt: still built itself
        assert set(seen[other].values()) == {status.BUILT}, (other, seen[other])
    assert repro.plan(reg).models == ["base", "ft"]
    data = [f for f in verify_model(reg, "base").findings if f.item == "data"]
    assert [f.status for f in data] == ["fail"], data
    assert any("digits-0to4" in v.message for v in check(reg))


def test_a_gone_dataset_makes_its_models_stale(built: Registry) -> None:
    (built.root / "datasets" / "digits-5to9" / "manifest.json").unlink()
    reg = Registry.open(built.root)
    seen = _statuses(reg)
    assert set(seen["scratch"].values()) == {status.STALE}, seen["scratch"]
    assert set(seen["base"].values()) == {status.BUILT}, seen["base"]


def test_a_check_dataset_the_manifest_records_counts(built: Registry) -> None:
    doc = model_manifest(built, "scratch")
    dm = built.dataset_manifest("digits-0to4")
    assert dm is not None
    datasets = {**doc["datasets"], "forgetting": {"name": "digits-0to4", "id": dm.id}}
    model_manifest(built, "scratch", datasets=datasets)
    reg = Registry.open(built.root)
    assert set(_statuses(reg)["scratch"].values()) == {status.BUILT}
    _rebuild_with_other_split(reg, "digits-0to4")
    reg = Registry.open(built.root)
    assert set(_statuses(reg)["scratch"].values()) == {status.STALE}


def test_the_rule_itself() -> None:
    assert status.staleness("d", "d", datasets=[("a", "a")]) is None
    assert status.staleness("d", "d", datasets=[("a", "b")]) == status.DATA_CHANGED
    assert status.staleness("d", "d", datasets=[("a", None)]) == status.DATA_CHANGED
    assert status.staleness("d", "old", datasets=[("a", "b")]) == status.SPEC_CHANGED
    assert status.staleness("d", "d", "p2", "p1", datasets=[("a", "b")]) == status.SOURCE_CHANGED
    assert status.status(True, True, "d", "d", datasets=[("a", "b")]) == status.STALE


@pytest.mark.parametrize("case", ["undeclared", "torn-manifest"])
def test_odd_records_every_gatherer_agrees(built: Registry, case: str) -> None:
    """Odd inputs: each gatherer gives the same status (the one rule, not a copy of it)."""
    doc = model_manifest(built, "scratch")
    datasets = dict(doc["datasets"])
    if case == "undeclared":
        datasets["drift"] = {"name": "nosuch", "id": "sha256:" + "3" * 64}
    model_manifest(built, "scratch", datasets=datasets)
    if case == "torn-manifest":
        path = built.root / "datasets" / "digits-5to9" / "manifest.json"
        path.write_text(path.read_text()[:40])
    reg = Registry.open(built.root)
    if case == "torn-manifest":  # the index refuses it, naming the file; the files say stale
        with pytest.raises(StemmaError, match=r"digits-5to9/manifest\.json"):
            list_entries(reg, "model")
        assert model_status(reg, "scratch", reg.model_manifest("scratch")) == status.STALE
        part = partial_graph(reg, reg.model_names(), reg.dataset_names())
        assert part.nodes[model_node("scratch")]["status"] == status.STALE
        return
    seen = _statuses(reg)["scratch"]
    assert set(seen.values()) == {status.STALE}, seen
