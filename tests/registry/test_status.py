"""The one status rule (`stemma.registry.rules.status`) and the SQL of the index views that must
agree with it, on every case."""

from __future__ import annotations

import itertools
from typing import Any

import duckdb
import pytest
from stemma.registry.rules import status
from stemma.registry.store import _sql


def test_status_names_each_case() -> None:
    assert status.status(True, False) == status.UNBUILT
    assert status.status(False, False) == status.UNBUILT
    assert status.status(False, True, None, "d") == status.REGISTERED
    assert status.status(True, True, "d", "d") == status.BUILT
    assert status.status(True, True, "d", "old") == status.STALE
    assert status.status(True, True, "d", "d", "p2", "p1") == status.STALE
    assert status.status(True, True, "d", "d", None, "p1") == status.BUILT  # source unbuilt
    assert status.staleness("d", "old", "p2", "p1") == status.SPEC_CHANGED  # the spec first
    assert status.staleness("d", "d", "p2", "p1") == status.SOURCE_CHANGED
    assert status.staleness("d", "d", "p1", "p1") is None


def _index() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(_sql.TABLES)
    con.execute(_sql.VIEWS.replace("main.", ""))
    con.execute(_sql.models_view([]).replace("main.", ""))
    return con


def _model_spec(con: duckdb.DuckDBPyConnection, name: str, digest: str, source: str | None) -> None:
    parents = [source] if source not in (None, "auto") else None  # as the index fills it
    con.execute(
        "INSERT INTO raw.model_specs (name, digest, source, train, parents)"
        " VALUES (?, ?, ?, 'd', ?)",
        [name, digest, source, parents],
    )


def _model_manifest(
    con: duckdb.DuckDBPyConnection,
    name: str,
    id_: str,
    digest: str,
    source_id: str | None,
    weights_md5: str | None = None,
) -> None:
    con.execute(
        "INSERT INTO raw.model_manifests (name, id, spec_digest, source_id, metrics, weights_md5)"
        " VALUES (?, ?, ?, ?, MAP {}, ?)",
        [name, id_, digest, source_id, weights_md5],
    )


# Each case: (has spec, has manifest, built from this spec, source: none | auto | declared,
# the source built, the recorded source id the source's id now).
CASES = list(
    itertools.product(
        (True, False),
        (True, False),
        (True, False),
        ("none", "auto", "declared"),
        (True, False),
        (True, False),
    )
)


@pytest.mark.parametrize("shard", range(4))
def test_models_view_status_agrees_with_the_rule(shard: int) -> None:
    con = _index()
    expected = {}
    for i, (spec, manifest, same, source, parent_built, same_source) in enumerate(CASES):
        if i % 4 != shard:
            continue
        name, parent = f"m{i}", f"p{i}"
        _model_spec(con, parent, "pd", None)
        if parent_built:
            _model_manifest(con, parent, f"pid{i}", "pd", None)
        declared = {"none": None, "auto": "auto", "declared": parent}[source]
        if spec:
            _model_spec(con, name, "sd", declared)
        recorded = f"pid{i}" if same_source else "older"
        if manifest:
            _model_manifest(con, name, f"id{i}", "sd" if same else "old", recorded)
        parent_id = f"pid{i}" if source == "declared" and parent_built else None
        if not (spec or manifest):
            continue  # nothing declared, no row
        expected[name] = status.status(
            spec, manifest, "sd", "sd" if same else "old", parent_id, recorded
        )
    got = dict(con.execute("SELECT name, status FROM models WHERE name LIKE 'm%'").fetchall())
    assert got == expected
    assert set(got.values()) <= set(status.STATUSES)


def test_models_view_judges_the_lock_case_as_the_rule_does() -> None:
    """The weights md5 a manifest records against its folder's dvc.lock: no lock file, a lock
    that records nothing for the weights, the same md5, another one; with the spec the
    build used or another (which the rule judges first)."""
    con = _index()
    expected = {}
    cases = itertools.product((None, "w1"), (False, True), (None, "w1", "w2"), (True, False))
    for i, (recorded, has_lock, locked, same) in enumerate(cases):
        name = f"m{i}"
        _model_spec(con, name, "sd", None)
        _model_manifest(con, name, f"id{i}", "sd" if same else "old", None, recorded)
        if has_lock:
            con.execute(
                "INSERT INTO raw.model_locks VALUES (?, ?, ?)",
                [name, f"models/{name}/dvc.lock", locked],
            )
        built = "sd" if same else "old"
        lock = locked if has_lock else None
        expected[name] = status.status(True, True, "sd", built, None, None, recorded, lock)
    got = dict(con.execute("SELECT name, status FROM models").fetchall())
    assert got == expected
    assert {got[n] for n in got} == {status.BUILT, status.STALE}
    assert status.staleness("sd", "sd", None, None, "w1", "w2") == status.LOCK_CHANGED


def test_datasets_view_status_agrees_with_the_rule() -> None:
    con = _index()
    expected = {}
    for i, (spec, manifest, same) in enumerate(itertools.product((True, False), repeat=3)):
        name = f"d{i}"
        if spec:
            con.execute(
                "INSERT INTO raw.dataset_specs (name, digest, source) VALUES (?, 'sd', 's')",
                [name],
            )
        if manifest:
            con.execute(
                "INSERT INTO raw.dataset_manifests (name, id, spec_digest) VALUES (?, ?, ?)",
                [name, f"id{i}", "sd" if same else "old"],
            )
        if spec or manifest:
            expected[name] = status.status(spec, manifest, "sd", "sd" if same else "old")
    assert dict(con.execute("SELECT name, status FROM datasets").fetchall()) == expected


def test_gather_reads_what_a_manifest_records() -> None:
    manifest = {
        "spec_digest": "sd",
        "source": {"model": "p", "id": "pid"},
        "datasets": {"train": {"name": "a", "id": "aid"}, "eval": {"name": "b", "id": "bid"}},
        "weights": {"md5": "w"},
    }
    built = status.Built.of(manifest)
    assert built == status.Built("sd", "pid", "w", (("a", "aid"), ("b", "bid")))
    ids = {"p": "pid", "a": "aid", "b": "bid"}
    inputs = status.gather("sd", built, ("p",), ids.get, ids.get, "w")
    assert inputs.status() == status.BUILT
    assert status.gather("sd", built, ("p",), {"p": "new"}.get, ids.get).staleness() == (
        status.SOURCE_CHANGED
    )
    assert status.gather("sd", built, (), dataset_id={"a": "aid"}.get).changed_datasets() == [
        ("b", None)
    ]
    locked = status.gather("sd", built, ("p",), ids.get, ids.get, locked_md5="other")
    assert locked.staleness() == status.LOCK_CHANGED
    assert status.gather(None, built).status() == status.REGISTERED
    assert status.gather("sd", None).status() == status.UNBUILT
    assert status.Built.of({}) == status.Built()  # an unreadable manifest: stale, not a crash


# Models added to the `populated` registry (base, ft, scratch) for every case of the rule.
_MORE_SPECS = {
    "datasets/digits-late/spec.yaml": "source: sklearn:digits\nsplit: {eval: 0.25, seed: 0}\n",
    "models/edited/spec.yaml": "architecture: {family: mlp, hidden: [32]}\n"
    "data: {train: digits-5to9}\n",
    "models/on-late/spec.yaml": "architecture: {family: mlp, hidden: [32]}\n"
    "data: {train: digits-late}\n",
    "models/child/spec.yaml": "source: {model: scratch, relation: finetune}\n"
    "data: {train: digits-5to9}\n",
    "models/imported/spec.yaml": "architecture: {family: mlp, hidden: [32]}\n"
    "data: {train: digits-5to9}\n",
}
_EXPECTED = {
    "base": status.BUILT,
    "child": status.BUILT,  # its source is unbuilt: nothing to compare, not stale
    "edited": status.STALE,  # its spec changed since the build
    "ft": status.STALE,  # its source was rebuilt since
    "imported": status.REGISTERED,
    "on-late": status.STALE,  # its training data was rebuilt since
    "scratch": status.UNBUILT,
}


@pytest.fixture
def every_status(populated: Any) -> Any:
    """A real registry with a model in each state of the rule (manifests from factories)."""
    from factories import dataset_manifest, model_manifest
    from stemma.registry import Registry
    from stemma.registry.store.files import digest

    root = populated.root
    for rel, text in _MORE_SPECS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    reg = Registry.open(root)
    for ds in ("digits-0to4", "digits-5to9", "digits-late"):
        dataset_manifest(reg, ds)
    for name in ("base", "ft", "edited", "on-late", "child", "imported"):
        model_manifest(Registry.open(root), name)
    model_manifest(Registry.open(root), "base", accuracy=0.5)  # rebuilt: ft is stale
    edited = root / "models/edited/spec.yaml"
    edited.write_text(edited.read_text() + "tags: [changed]\n")
    late = root / "datasets/digits-late/spec.yaml"
    late.write_text(late.read_text().replace("eval: 0.25", "eval: 0.3"))
    dataset_manifest(Registry.open(root), "digits-late")  # rebuilt: on-late is stale
    imported = Registry.open(root).model_manifest("imported")
    assert imported is not None
    (root / "models/imported/spec.yaml").unlink()
    doc = {k: v for k, v in imported.raw.items() if k != "id"}
    doc["spec"] = {"description": "Imported weights."}
    doc["spec_digest"] = digest(doc["spec"])
    Registry.open(root).write_model_manifest("imported", doc)
    return Registry.open(root)


def test_sql_status_agrees_with_the_rule_on_a_real_registry(every_status: Any) -> None:
    """`_sql`'s status expression, read through `stemma query`, against `status.gather` as
    `ls` (files), the lineage graph and `validate` apply it, on every case."""
    from stemma.lineage.graph import build_graph, model_node
    from stemma.registry.check.consistency import STALE_MANIFEST, check
    from stemma.registry.query import listing
    from stemma.registry.query.sql import query

    reg = every_status
    sql = dict(query(reg, "select name, status from models").rows)
    rule = {n: listing.model_status(reg, n, reg.model_manifest(n)) for n in reg.model_names()}
    assert rule == _EXPECTED
    assert sql == rule
    g = build_graph(reg)
    assert {n: g.nodes[model_node(n)]["status"] for n in reg.model_names()} == rule
    stale = {v.subject for v in check(reg) if v.code == STALE_MANIFEST}
    assert stale == {f"model:{n}" for n, s in rule.items() if s == status.STALE}
    reasons = {
        n: listing.model_staleness(reg, n, m)
        for n in reg.model_names()
        if (m := reg.model_manifest(n)) is not None
    }
    assert reasons == {
        "base": None,
        "child": None,
        "edited": status.SPEC_CHANGED,
        "ft": status.SOURCE_CHANGED,
        "imported": None,
        "on-late": status.DATA_CHANGED,
    }
    datasets = dict(query(reg, "select name, status from datasets").rows)
    assert datasets == {
        n: listing.dataset_status(reg, n, reg.dataset_manifest(n)) for n in reg.dataset_names()
    }
    assert set(datasets.values()) == {status.BUILT}


def test_tagging_refuses_what_the_rule_calls_stale(every_status: Any) -> None:
    """`stemma tag` judges the commit it tags by the same rule, except its data case."""
    from conftest import git
    from stemma.registry.errors import ConsistencyError
    from stemma.registry.versions import resolve as v

    reg = every_status
    git(reg.repo_root, "add", "-A")
    git(reg.repo_root, "commit", "-qm", "every status")
    for name in ("base", "child", "on-late"):  # on-late: its data was rebuilt since
        v.tag(reg, name, "v1.0.0")
    refused = {"edited": "the spec changed", "ft": "the source 'base' changed"}
    for name, why in refused.items():
        with pytest.raises(ConsistencyError, match=f"{why} since the last build"):
            v.tag(reg, name, "v1.0.0")


_MERGE_SPECS = {
    "datasets/d/spec.yaml": "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n",
    "models/base/spec.yaml": "architecture: {family: mlp, hidden: [16]}\ndata: {train: d}\n",
    "models/ft-a/spec.yaml": "source: {model: base}\ndata: {train: d}\n",
    "models/ft-b/spec.yaml": "source: {model: base}\ndata: {train: d}\n",
    "models/merged/spec.yaml": "source:\n  relation: merge\n  models: [ft-a, ft-b]\n"
    "  base: base\n  merge: {method: ties, density: 0.5}\ndata: {train: d}\n",
}


def test_a_merge_is_judged_on_all_its_parents(registry: Any) -> None:
    """A merge records its parents' ids as one (`parents.combined_id`): `ls`, SQL and `tag`
    compare all of them, so it is built while they are, and stale once one is rebuilt."""
    from conftest import git
    from factories import dataset_manifest, model_manifest
    from stemma.registry import Registry
    from stemma.registry.errors import ConsistencyError
    from stemma.registry.query import listing
    from stemma.registry.query.sql import query
    from stemma.registry.rules.parents import combined_id
    from stemma.registry.versions import resolve as v

    root = registry.root
    for rel, text in _MERGE_SPECS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    dataset_manifest(Registry.open(root), "d")
    ids = {n: model_manifest(Registry.open(root), n)["id"] for n in ("base", "ft-a", "ft-b")}
    parents = [{"model": n, "id": ids[n]} for n in ("ft-a", "ft-b", "base")]
    source = {"model": "ft-a", "relation": "merge", "id": None, "parents": parents}
    source["id"] = combined_id([p["id"] for p in parents])
    model_manifest(Registry.open(root), "merged", source=source)

    def merged_status() -> tuple[str, str]:
        reg = Registry.open(root)
        sql = dict(query(reg, "select name, status from models").rows)["merged"]
        return listing.model_status(reg, "merged", reg.model_manifest("merged")), sql

    assert merged_status() == (status.BUILT, status.BUILT)
    git(registry.repo_root, "add", "-A")
    git(registry.repo_root, "commit", "-qm", "built")
    v.tag(Registry.open(root), "merged", "v1.0.0")
    model_manifest(Registry.open(root), "ft-b", accuracy=0.5)  # one parent rebuilt
    assert merged_status() == (status.STALE, status.STALE)
    git(registry.repo_root, "add", "-A")
    git(registry.repo_root, "commit", "-qm", "ft-b rebuilt")
    with pytest.raises(ConsistencyError, match="a parent changed since the last build"):
        v.tag(Registry.open(root), "merged", "v1.1.0")
