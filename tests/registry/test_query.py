"""The DuckDB query index: views, lineage macros, read-only safety, refresh, history, CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
from array import array
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from conftest import git, write
from factories import Fact
from stemma.registry import Registry
from stemma.registry.errors import ParseError, QueryError, SchemaError, StemmaError
from stemma.registry.query.sql import export_parquet, query, schema
from stemma.registry.rules import dag
from stemma.registry.store import _snapshot, _specrow, index
from stemma.registry.store import derived as _store
from stemma.registry.store.files import digest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import synth

RUN = {"started": "2026-03-01T10:00:00Z", "duration_s": 2.5, "stemma": "0.1.0", "device": "cpu"}

SPECS = {
    "datasets/d-a/spec.yaml": """
        description: Digits 0-4.
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
        tags: [digits]
    """,
    "datasets/d-b/spec.yaml": """
        # a comment line, which the fast reader skips
        source: sklearn:digits
        select:
          classes: [5, 6, 7, 8, 9]
          relabel: contiguous
    """,
    "models/base/spec.yaml": """
        description: Base model.
        architecture: {family: mlp, hidden: [16]}
        data: {train: d-a}
        tags: [digits, base]
    """,
    "models/ft1/spec.yaml": """
        source: {model: base, relation: finetune}
        data: {train: d-b, eval: d-a}
        strategy: {mapping: by-name, reinit: ["head.*"]}
    """,
    "models/ft2/spec.yaml": """
        source: {model: base, relation: adapter}
        data: {train: d-b}
        tags: [adapter]
    """,
    "models/ft1a/spec.yaml": """
        source: {model: ft1}
        data: {train: d-b}
    """,
    "models/scratch/spec.yaml": """
        architecture:
          family: mlp
          hidden: [8, 8]
        data: {train: d-b}
    """,
    "models/unbuilt/spec.yaml": """
        source: {model: ft1a, relation: distill}
        data: {train: d-a}
    """,
}
METRICS = {
    "base": {"accuracy": 0.97, "loss": 0.08},
    "ft1": {"accuracy": 0.91, "loss": 0.21, "f1_macro": 0.9},
    "ft2": {"accuracy": 0.84, "loss": 0.4},
    "ft1a": {"accuracy": 0.88, "loss": 0.3, "f1_macro": 0.87},
    "scratch": {"accuracy": 0.79, "loss": 0.55},
}


def dataset_doc(reg: Registry, name: str, samples: int) -> dict[str, Any]:
    """A schema-valid dataset manifest, written."""
    spec = reg.dataset_spec(name)
    classes = list(spec.select.classes or [0, 1])
    doc: dict[str, Any] = {
        "kind": "dataset",
        "schema_version": 1,
        "name": name,
        "spec": dict(spec.raw),
        "spec_digest": spec.digest,
        "data": {
            "path": "data.npz",
            "md5": "0" * 32,
            "sha256": "sha256:" + "0" * 64,
            "bytes": samples * 64,
            "format": "npz",
        },
        "shape": [samples, 8, 8],
        "dtype": "float32",
        "classes": classes,
        "splits": {
            "train": {"samples": samples, "class_counts": {}},
            "eval": {"samples": samples // 4, "class_counts": {}},
        },
        "run": RUN,
    }
    doc["id"] = reg.write_dataset_manifest(name, doc)
    return doc


def model_doc(reg: Registry, name: str, metrics: dict[str, float]) -> dict[str, Any]:
    """A schema-valid model manifest consistent with the specs, written."""
    spec = reg.model_spec(name)
    src = spec.source
    source = None
    if src is not None:
        parent = reg.model_manifest(src.model)
        assert parent is not None
        source = {"model": src.model, "relation": src.relation, "id": parent.id}
    hidden = 16 if name != "scratch" else 8
    tensors = [
        {
            "name": "body.0.weight",
            "shape": [hidden, 64],
            "dtype": "float32",
            "origin": "transferred" if source else "new",
            "frozen": source is not None,
            "source_name": "body.0.weight" if source else None,
        },
        {
            "name": "head.weight",
            "shape": [5, hidden],
            "dtype": "float32",
            "origin": "reinitialized" if source else "new",
            "frozen": False,
        },
    ]
    total = hidden * 64 + 5 * hidden
    doc: dict[str, Any] = {
        "kind": "model",
        "schema_version": 1,
        "name": name,
        "spec": dict(spec.raw),
        "spec_digest": spec.digest,
        "source": source,
        "datasets": {
            role: {"name": ds, "id": reg.dataset_manifest(ds).id}  # type: ignore[union-attr]
            for role, ds in (("train", spec.train), ("eval", spec.eval))
        },
        "weights": {
            "path": "weights.safetensors",
            "md5": "1" * 32,
            "sha256": "sha256:" + "2" * 64,
            "bytes": total * 4,
            "format": "safetensors",
        },
        "architecture": {"config": {"family": "mlp", "hidden": [hidden]}, "tensors": tensors},
        "parameters": {
            "total": total,
            "trainable": total - (hidden * 64 if source else 0),
            "transferred": hidden * 64 if source else 0,
        },
        "metrics": metrics,
        "gates": [
            {
                "metric": "accuracy",
                "op": ">=",
                "threshold": 0.8,
                "value": metrics["accuracy"],
                "passed": metrics["accuracy"] >= 0.8,
            }
        ],
        "run": RUN,
    }
    doc["id"] = reg.write_model_manifest(name, doc)
    return doc


@pytest.fixture
def zoo(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> tuple[Registry, dict[str, dict[str, Any]]]:
    """Two datasets and six models (one unbuilt), manifests for all but `unbuilt`. Their
    ctimes cannot be dated back as `age` dates their mtimes: in this process files count as
    old enough to trust at once (subprocesses keep the racy window)."""
    monkeypatch.setattr(_snapshot, "RACY_NS", 0)
    for rel, text in SPECS.items():
        write(registry.root / rel, text)
    reg = Registry.open(registry.root)
    docs = {"d-a": dataset_doc(reg, "d-a", 100), "d-b": dataset_doc(reg, "d-b", 80)}
    for name in ("base", "ft1", "ft2", "ft1a", "scratch"):
        docs[name] = model_doc(reg, name, METRICS[name])
    age(reg)
    return Registry.open(registry.root), docs


def age(reg: Registry) -> None:
    """Date every spec and manifest an hour back: files written moments ago are "racy" and
    re-read by every refresh, which tests that compare index bytes must not see."""
    for path in [*reg.root.glob("*/*/spec.yaml"), *reg.root.glob("*/*/manifest.json")]:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))


def rows(reg: Registry, sql: str, history: bool = False) -> list[dict[str, Any]]:
    return query(reg, sql, history=history).to_dicts()


def spec_of(reg: Registry, name: str) -> dict[str, Any]:
    return dict(reg.model_spec(name).raw)


# -- views ------------------------------------------------------------------------------


def test_models_view_matches_manifests_and_specs(zoo: Any) -> None:
    reg, docs = zoo
    got = {r["name"]: r for r in rows(reg, "SELECT * FROM models")}
    assert sorted(got) == ["base", "ft1", "ft1a", "ft2", "scratch", "unbuilt"]
    for name, doc in docs.items():
        if doc["kind"] != "model":
            continue
        row, spec = got[name], spec_of(reg, name)
        assert row["id"] == doc["id"]
        assert row["status"] == "built"
        assert row["source"] == (doc["source"] or {}).get("model")
        assert row["relation"] == (doc["source"] or {}).get("relation")
        assert row["source_id"] == (doc["source"] or {}).get("id")
        assert row["params_total"] == doc["parameters"]["total"]
        assert row["params_trainable"] == doc["parameters"]["trainable"]
        assert row["params_transferred"] == doc["parameters"]["transferred"]
        assert row["accuracy"] == doc["metrics"]["accuracy"]
        assert row["loss"] == doc["metrics"]["loss"]
        assert row["metrics"] == doc["metrics"]
        assert row["f1_macro"] == doc["metrics"].get("f1_macro")  # one column per metric
        assert row["tags"] == spec.get("tags", [])
        assert row["family"] == "mlp"
        assert row["train"] == spec["data"]["train"]
        assert row["eval"] == spec["data"].get("eval", spec["data"]["train"])
        assert row["weights_bytes"] == doc["weights"]["bytes"]
        assert row["created"].isoformat() == "2026-03-01T10:00:00+00:00"
    assert got["unbuilt"]["status"] == "unbuilt" and got["unbuilt"]["id"] is None
    assert got["unbuilt"]["source"] == "ft1a" and got["unbuilt"]["relation"] == "distill"


def test_metric_filter_and_join_match_independent_expectations(zoo: Any) -> None:
    reg, docs = zoo
    models = {n: d for n, d in docs.items() if d["kind"] == "model"}
    got = [
        r["name"] for r in rows(reg, "SELECT name FROM models WHERE accuracy >= 0.85 ORDER BY name")
    ]
    assert got == sorted(n for n, d in models.items() if d["metrics"]["accuracy"] >= 0.85)
    joined = rows(
        reg,
        """
        SELECT e.src AS child, p.name AS parent, c.accuracy - p.accuracy AS delta
        FROM edges e JOIN models c ON c.name = e.src JOIN models p ON p.name = e.dst
        WHERE e.kind = 'derived_from' AND c.id IS NOT NULL ORDER BY child""",
    )
    expected = sorted(
        (
            n,
            d["source"]["model"],
            d["metrics"]["accuracy"] - models[d["source"]["model"]]["metrics"]["accuracy"],
        )
        for n, d in models.items()
        if d["source"]
    )
    assert [(r["child"], r["parent"], pytest.approx(r["delta"])) for r in joined] == expected
    metric_rows = {(r["name"], r["key"]): r["value"] for r in rows(reg, "SELECT * FROM metrics")}
    assert metric_rows == {(n, k): v for n, d in models.items() for k, v in d["metrics"].items()}


def test_layers_and_datasets_views(zoo: Any) -> None:
    reg, docs = zoo
    layers = rows(reg, "SELECT * FROM layers ORDER BY name, position")
    expected = [
        (n, t["name"], t["shape"], t["origin"], t["frozen"], t.get("source_name"))
        for n, d in sorted(docs.items())
        if d["kind"] == "model"
        for t in d["architecture"]["tensors"]
    ]
    assert [
        (r["name"], r["tensor"], r["shape"], r["origin"], r["frozen"], r["source_name"])
        for r in layers
    ] == expected
    assert all(r["numel"] == r["shape"][0] * r["shape"][1] for r in layers)
    ds = {r["name"]: r for r in rows(reg, "SELECT * FROM datasets")}
    for name in ("d-a", "d-b"):
        doc = docs[name]
        assert ds[name]["id"] == doc["id"] and ds[name]["status"] == "built"
        assert ds[name]["samples"] == sum(s["samples"] for s in doc["splits"].values())
        assert ds[name]["classes"] == doc["classes"]
        assert ds[name]["source"] == "sklearn:digits"
        assert ds[name]["shape"] == doc["shape"]


def test_edges_come_from_specs_so_unbuilt_models_appear(zoo: Any) -> None:
    reg, _docs = zoo
    got = {(r["src"], r["dst"], r["kind"], r["relation"]) for r in rows(reg, "SELECT * FROM edges")}
    expected = set()
    for name in reg.model_names():
        spec = reg.model_spec(name)
        if spec.source:
            expected.add((name, spec.source.model, "derived_from", spec.source.relation))
        expected.add((name, spec.train, "trained_on", None))
        expected.add((name, spec.eval, "evaluated_on", None))
    assert got == expected
    assert ("unbuilt", "ft1a", "derived_from", "distill") in got


def assert_macros_agree(reg: Registry, names: list[str]) -> None:
    """The SQL macros against the lineage core, `dag.reach`, over the specs' sources."""
    parent = {
        n: src.model for n in reg.model_names() if (src := reg.model_spec(n).source) is not None
    }
    children: dict[str, list[str]] = {}
    for child, up in parent.items():
        children.setdefault(up, []).append(child)
    up_edges = {child: [up] for child, up in parent.items()}
    with index.open_index(reg) as opened:  # one connection for the many macro calls
        for name in names:
            up = dict(opened.con.execute("SELECT * FROM ancestors(?)", [name]).fetchall())
            assert up == dag.reach(up_edges, name)
            down = dict(opened.con.execute("SELECT * FROM descendants(?)", [name]).fetchall())
            assert down == dag.reach(children, name)


def test_lineage_macros_agree_with_the_lineage_core(zoo: Any) -> None:
    reg, _docs = zoo
    assert_macros_agree(reg, reg.model_names())


def test_lineage_macros_on_a_synthetic_registry(tmp_path: Path) -> None:
    synth.generate(tmp_path / "reg", 150, shape="fanout", seed=3)
    reg = Registry.open(tmp_path / "reg")
    assert rows(reg, "SELECT count(*) AS n FROM descendants('m000000')")[0]["n"] == 149
    picks = random.Random(0).sample(reg.model_names(), 12)
    assert_macros_agree(reg, ["m000000", *picks])


def test_lineage_macros_terminate_on_a_cycle(zoo: Any) -> None:
    reg, _docs = zoo
    write(
        reg.root / "models/base/spec.yaml",
        """
        source: {model: ft1a}
        data: {train: d-a}
    """,
    )
    assert {r["name"] for r in rows(reg, "SELECT * FROM ancestors('ft1')")} == {"base", "ft1a"}
    assert {r["name"] for r in rows(reg, "SELECT * FROM descendants('ft1')")} == {
        "base",
        "ft1a",
        "unbuilt",
        "ft2",
    }


# -- safety -----------------------------------------------------------------------------


def forbidden(tmp: Path) -> list[str]:
    out = tmp / "out"
    return [
        "INSERT INTO raw.meta VALUES ('x', 'y')",
        "CREATE TABLE t (a INTEGER)",
        "CREATE TEMP TABLE t AS SELECT 1",
        "CREATE OR REPLACE VIEW models AS SELECT 1",
        "DROP VIEW models",
        "DELETE FROM raw.model_manifests",
        "UPDATE raw.model_manifests SET id = 'x'",
        f"COPY models TO '{out}.csv'",
        f"COPY (SELECT * FROM models) TO '{out}.parquet' (FORMAT parquet)",
        f"EXPORT DATABASE '{out}'",
        f"ATTACH '{out}.duckdb' AS other",
        "ATTACH ':memory:' AS other",
        "DETACH index",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "SET threads = 1",
        "SET VARIABLE x = 1",
        "PRAGMA enable_profiling",
        "INSTALL httpfs",
        "LOAD httpfs",
        "CHECKPOINT",
        "VACUUM",
        "CALL pragma_version()",
        "EXPLAIN ANALYZE DELETE FROM raw.meta",
        "SELECT 1; DROP VIEW models",
        "SELECT * FROM query('CREATE TEMP TABLE t AS SELECT 1')",
    ]


def test_forbidden_statements_are_refused_and_change_nothing(zoo: Any, tmp_path: Path) -> None:
    reg, _docs = zoo
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    reference = "SELECT * FROM models ORDER BY name"
    before = query(reg, reference)
    db = index.index_path(reg)
    db_bytes = db.read_bytes()
    for sql in forbidden(outputs):
        with pytest.raises(QueryError) as err:
            query(reg, sql)
        assert "\n" not in str(err.value), sql
    assert query(reg, reference) == before
    assert db.read_bytes() == db_bytes
    assert not any(outputs.iterdir())  # no file written by COPY, EXPORT or ATTACH


def test_files_in_the_working_folder_stay_unreadable(
    zoo: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """DuckDB lets queries read its temporary folder: it lies beside the index, not in the
    folder the command runs from."""
    reg, _docs = zoo
    monkeypatch.chdir(tmp_path)
    write(tmp_path / ".tmp/secret.txt", "secret")
    with pytest.raises(QueryError, match=r"read_text\(\) is refused"):
        query(reg, "SELECT content FROM read_text('.tmp/secret.txt')")


def test_refusal_messages_say_why(zoo: Any) -> None:
    reg, _docs = zoo
    with pytest.raises(QueryError, match="INSERT statements are refused"):
        query(reg, "INSERT INTO raw.meta VALUES ('x', 'y')")
    with pytest.raises(QueryError, match=r"read_csv\(\) is refused"):
        query(reg, "SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(QueryError, match="exactly one SQL statement"):
        query(reg, "SELECT 1; SELECT 2")


# -- refresh ----------------------------------------------------------------------------


def test_edit_and_delete_are_seen_by_the_next_query(zoo: Any) -> None:
    reg, docs = zoo
    assert rows(reg, "SELECT accuracy FROM models WHERE name = 'ft2'") == [{"accuracy": 0.84}]
    new = model_doc(reg, "ft2", {"accuracy": 0.93, "loss": 0.2, "top5": 0.99})
    got = rows(reg, "SELECT id, accuracy, top5 FROM models WHERE name = 'ft2'")
    assert got == [{"id": new["id"], "accuracy": 0.93, "top5": 0.99}]
    stats = index.refresh(reg)  # the new file is re-read until it is a few seconds old
    assert (stats.added, stats.changed, stats.removed) in ((0, 0, 0), (0, 1, 0))
    (reg.root / "models/ft2/manifest.json").unlink()
    assert rows(reg, "SELECT status, id FROM models WHERE name = 'ft2'") == [
        {"status": "unbuilt", "id": None}
    ]
    assert rows(reg, "SELECT count(*) AS n FROM metrics WHERE name = 'ft2'") == [{"n": 0}]
    assert rows(reg, "SELECT count(*) AS n FROM layers WHERE name = 'ft2'") == [{"n": 0}]
    for f in (reg.root / "models/scratch").iterdir():
        f.unlink()
    (reg.root / "models/scratch").rmdir()
    assert "scratch" not in {r["name"] for r in rows(reg, "SELECT name FROM models")}
    assert docs["base"]["id"] == rows(reg, "SELECT id FROM models WHERE name='base'")[0]["id"]


def test_a_changed_spec_makes_the_model_stale(zoo: Any) -> None:
    reg, _docs = zoo
    text = (reg.root / "models/ft1/spec.yaml").read_text()
    (reg.root / "models/ft1/spec.yaml").write_text(text + "tags: [changed]\n")
    got = {r["name"]: r["status"] for r in rows(reg, "SELECT name, status FROM models")}
    assert got["ft1"] == "stale" and got["base"] == "built"
    model_doc(reg, "base", {"accuracy": 0.5, "loss": 1.0})  # a rebuilt parent
    got = {r["name"]: r["status"] for r in rows(reg, "SELECT name, status FROM models")}
    assert got["ft2"] == "stale" and got["base"] == "built" and got["scratch"] == "built"


def test_reparenting_a_model_moves_its_lineage_edges(zoo: Any) -> None:
    reg, _docs = zoo
    write(
        reg.root / "models/ft2/spec.yaml",
        """
        source: {model: ft1a, relation: distill}
        data: {train: d-b}
    """,
    )
    got = rows(reg, "SELECT dst, relation FROM edges WHERE src = 'ft2' AND kind = 'derived_from'")
    assert got == [{"dst": "ft1a", "relation": "distill"}]
    assert rows(reg, "SELECT status FROM models WHERE name = 'ft2'") == [{"status": "stale"}]
    assert_macros_agree(reg, reg.model_names())


def test_manifest_edits_move_only_the_edges_manifests_declare(zoo: Any) -> None:
    """Edges come from the manifest for a model with no spec or with `source: auto`, and
    from the spec otherwise: after each manifest edit the refreshed edges equal those of an
    index built from nothing."""
    reg, docs = zoo
    write(reg.root / "models/picked/spec.yaml", "source: {model: auto}\ndata: {train: d-a}\n")
    age(reg)

    def manifest(name: str, parent: str) -> None:
        doc = dict(docs["ft1"], source={"model": parent, "relation": "distill", "id": "x"})
        write(reg.root / f"models/{name}/manifest.json", json.dumps(doc))

    def edges() -> set[tuple[Any, ...]]:
        return {tuple(r.values()) for r in rows(reg, "SELECT * FROM edges")}

    def from_nothing() -> set[tuple[Any, ...]]:
        shutil.rmtree(index.index_path(reg).parent)
        return edges()

    steps = [("orphan", "ft1"), ("picked", "ft2"), ("orphan", "base"), ("picked", "base")]
    for name, parent in [*steps, ("ft2", "scratch")]:
        manifest(name, parent)
        got = edges()
        assert got == from_nothing()
        declared = {(d, r) for s, d, k, r in got if s == name and k == "derived_from"}
        assert declared == ({(parent, "distill")} if name != "ft2" else {("base", "adapter")})


def test_snapshot_comparison_finds_each_changed_file() -> None:
    n = 10_000
    names = {"models": [f"m{i}" for i in range(n)], "datasets": ["d0", "d1"]}
    w = _snapshot.PER_FOLDER
    assert _snapshot.FILES == ("spec.yaml", "manifest.json", "dvc.lock") and w == 12
    numbers = array("q")
    for i in range(n + 2):  # spec, manifest and dvc.lock per folder: (size, mtime, ctime, inode)
        numbers.extend((100 + i, 10 * i, 10 * i, i, 200 + i, 10 * i + 1, 10 * i + 1, i + n))
        numbers.extend((300 + i, 10 * i + 2, 10 * i + 2, i + 2 * n))
    before = _snapshot.Snapshot(names, numbers)
    after = _snapshot.Snapshot(names, array("q", numbers))
    after.numbers[w * 7000 + 4] += 1  # m7000's manifest grew
    after.numbers[w * 5 + 1] += 1  # m5's spec was touched
    after.numbers[w * 3 + 4 : w * 3 + 8] = array("q", [_snapshot.MISSING] * 4)  # m3's manifest
    after.numbers[w * 2 + 10] += 1  # m2's dvc.lock was written again
    after.numbers[w * (n + 1)] = 7  # d1's spec changed
    changed = [
        "models/m2/dvc.lock",
        "models/m5/spec.yaml",
        "models/m7000/manifest.json",
        "datasets/d1/spec.yaml",
    ]
    assert after.diff(before) == (changed, ["models/m3/manifest.json"], 0)
    assert before.diff(before) == ([], [], 0)
    assert before.digests() != after.digests()
    stored = _snapshot.Snapshot.unpack(*after.pack()[2:])
    assert stored.names == after.names and stored.numbers == after.numbers
    # Folders added and removed are matched by name.
    gone = [_snapshot.MISSING] * 4
    moved = _snapshot.Snapshot(
        {"models": ["new", *names["models"][2:]], "datasets": ["d0", "d1"]},
        array("q", [1, 1, 1, 1, 2, 2, 2, 2, *gone]) + numbers[2 * w :],
    )
    assert moved.diff(before) == (
        ["models/new/spec.yaml", "models/new/manifest.json"],
        [f"models/m{i}/{f}" for i in (0, 1) for f in _snapshot.FILES],
        2,
    )
    assert after.stamps(["models/m5/spec.yaml", "datasets/d1/spec.yaml"]) == {
        "models/m5/spec.yaml": (105, 51, 50, 5),
        "datasets/d1/spec.yaml": (7, 10 * (n + 1), 10 * (n + 1), n + 1),
    }
    assert after.stamps(["models/m2/dvc.lock"]) == {"models/m2/dvc.lock": (302, 22, 23, 2 + 2 * n)}
    racy = after.with_sizes({"models/m9/spec.yaml": _snapshot.RACY})
    assert racy.size(27) == _snapshot.RACY and after.size(27) == 109
    # A file that vanished before it was read is stored as the next snapshot will see it.
    vanished = after.with_sizes({"models/m9/spec.yaml": _snapshot.MISSING})
    assert vanished.numbers[108:112] == array("q", [_snapshot.MISSING] * 4)
    assert after.diff(racy) == (["models/m9/spec.yaml"], [], 0)
    assert len(after.by_path()) == 3 * (n + 2) - 1  # m3's manifest is gone
    assert after.paths() == list(after.by_path())


def test_snapshot_lists_every_spec_and_manifest(tmp_path: Path) -> None:
    synth.generate(tmp_path / "reg", 30, shape="mixed", seed=2, family_size=10, unbuilt=0.2)
    (tmp_path / "reg/models/m000004/spec.yaml").unlink()  # a folder with a manifest only
    snap = _snapshot.snapshot(tmp_path / "reg")
    files = [*(tmp_path / "reg").glob("*/*/spec.yaml"), *(tmp_path / "reg").glob("*/*/*.json")]
    assert sorted(snap.by_path()) == sorted(str(p.relative_to(tmp_path / "reg")) for p in files)
    stat = (tmp_path / "reg/models/m000007/spec.yaml").stat()
    assert snap.by_path()["models/m000007/spec.yaml"] == _snapshot.stamp(stat)
    assert snap.paths() == list(snap.by_path())  # the files a new index reads, in order


def test_odd_folder_names_survive_folders_coming_and_going(zoo: Any) -> None:
    reg, _docs = zoo
    odd = "new\nline ü"
    write(reg.root / f"models/{odd}/spec.yaml", "data: {train: d-a}\n")
    assert rows(reg, f"SELECT name FROM models WHERE name = '{odd}'") == [{"name": odd}]
    write(reg.root / "models/later/spec.yaml", "data: {train: d-a}\n")  # the folders change
    assert len(rows(reg, "SELECT name FROM models WHERE name IN ('later', 'base')")) == 2


def test_a_file_that_cannot_be_read_is_named(zoo: Any, cli: Any) -> None:
    reg, _docs = zoo
    spec = reg.root / "models/ft2/spec.yaml"
    spec.unlink()
    spec.symlink_to("spec.yaml")  # a link to itself: stat fails with ELOOP
    res = cli(["ls", "--json"], reg.repo_root)
    where = "models/ft2/spec.yaml" if reg.rel_root in ("", ".") else f"{reg.rel_root}/models/ft2"
    assert res.code == 1 and res.stdout == ""
    assert res.stderr.startswith(f"error: {where}") and res.stderr.count("\n") == 1, res.stderr
    assert "cannot read: Too many levels of symbolic links" in res.stderr


def test_same_size_rewrite_within_the_same_mtime_is_seen(zoo: Any) -> None:
    reg, _docs = zoo
    path = reg.root / "models/base/manifest.json"
    text = path.read_text()
    path.write_text(text)  # written just now: its mtime is too recent to be trusted
    rows(reg, "SELECT 1 AS x")
    st = path.stat()
    assert '"accuracy": 0.97' in text
    path.write_text(text.replace('"accuracy": 0.97', '"accuracy": 0.12'))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before
    assert rows(reg, "SELECT accuracy FROM models WHERE name = 'base'") == [{"accuracy": 0.12}]


def test_a_broken_manifest_is_reported_with_its_file(zoo: Any) -> None:
    reg, _docs = zoo
    path = reg.root / "models/ft1/manifest.json"
    good = path.read_text()
    path.write_text(good[:200])
    with pytest.raises(ParseError, match=r"models/ft1/manifest.json:\d+: invalid JSON"):
        query(reg, "SELECT * FROM models")
    path.write_text(good.replace('"accuracy": 0.91', '"accuracy": "high"'))
    with pytest.raises(SchemaError, match=r"models/ft1/manifest.json at /metrics/accuracy"):
        query(reg, "SELECT * FROM models")
    path.write_text(good)
    assert len(query(reg, "SELECT * FROM models")) == 6


def test_a_broken_spec_is_reported_with_its_line(zoo: Any) -> None:
    reg, _docs = zoo
    (reg.root / "models/ft2/spec.yaml").write_text("source: {model: base\ndata: {train: d-b}\n")
    with pytest.raises(ParseError, match=r"models/ft2/spec.yaml:\d+: invalid YAML"):
        query(reg, "SELECT * FROM models")
    (reg.root / "models/ft2/spec.yaml").write_text("data: {train: 5}\n")
    with pytest.raises(SchemaError, match=r"models/ft2/spec.yaml:1 at /data/train"):
        query(reg, "SELECT * FROM models")


ODD_SPECS = {
    # name -> spec text: fields the index picks in SQL, and specs SQL leaves to Python
    "plain": "data: {train: d-a}\n",
    "ft": "source: {model: base}\ndata: {train: d-a, eval: d-b}\n",
    "auto": "source: {model: auto, relation: distill}\ndata:\n  train: d-a\n",
    "nulls": "description: null\ntags: null\narchitecture: null\ndata: {train: d-a}\n",
    "nofamily": "architecture: {hidden: [4]}\ntags: []\ndata: {train: d-a}\n",
    "quoted": 'description: "say \\"hi\\" \\\\ \\u00e9"\ntags: [\'x y\', "z"]\n'
    "data: {train: d-a}\n",
    "unicode": "description: Modèle dérivé ✓\ndata: {train: d-a}\n",
    "emptysource": "source: {}\ndata: {train: d-a}\n",  # falsy: no source, Python decides
    "listsource": "source: []\ndata: {train: d-a}\n",
    "numberdesc": "description: 5\ndata: {train: d-a}\n",  # refused: not text
    "nulleval": "data: {train: d-a, eval: null}\n",  # refused: eval must be a name
    "merged": "source: {relation: merge, models: [ft, plain], merge: {method: linear}}\n"
    "data: {train: d-a}\n",
}


def test_spec_fields_picked_in_sql_match_the_python_reference(registry: Registry) -> None:
    write(registry.root / "datasets/d-a/spec.yaml", "source: sklearn:digits\ntags: [t]\n")
    refused = {"numberdesc", "nulleval"}
    for name, text in ODD_SPECS.items():
        write(registry.root / f"models/{name}/spec.yaml", text)
    for bad in sorted(refused):
        with pytest.raises(SchemaError, match=rf"models/{bad}/spec.yaml"):
            query(registry, "SELECT * FROM models")
        (registry.root / f"models/{bad}/spec.yaml").unlink()
    columns = "path, digest, source, relation, train, eval, family, description, parents"
    with index.open_index(registry) as idx:
        got = {
            r[0]: r
            for r in idx.con.execute(
                f"SELECT {columns}, tags FROM raw.model_specs UNION ALL "
                "SELECT path, digest, source, NULL, NULL, NULL, NULL, description, NULL, tags "
                "FROM raw.dataset_specs"
            ).fetchall()
        }
    paths = [f"models/{n}/spec.yaml" for n in ODD_SPECS if n not in refused]
    for path in [*paths, "datasets/d-a/spec.yaml"]:
        text = (registry.root / path).read_text()
        doc = yaml.safe_load(text)
        compact = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        expected = _specrow.spec_row(path, compact, path, text)
        assert expected[2] == digest(doc)
        assert got[path][:8] == (expected[0], *expected[2:9]), path
        assert got[path][8] == (json.loads(expected[9]) if expected[9] else None), path
        assert got[path][9] == doc.get("tags"), path


def test_a_bad_spec_fails_the_refresh_until_it_is_fixed(zoo: Any) -> None:
    reg, _docs = zoo
    (reg.root / "models/ft1a/spec.yaml").write_text("data: [unclosed\n")
    with pytest.raises(StemmaError, match=r"^models/ft1a/spec.yaml:\d+: invalid YAML"):
        query(Registry.open(reg.root), "SELECT * FROM models")
    (reg.root / "models/ft1a/spec.yaml").write_text("source: {model: ft1}\ndata: {train: d-a}\n")
    got = query(Registry.open(reg.root), "SELECT train FROM models WHERE name = 'ft1a'")
    assert got.to_dicts() == [{"train": "d-a"}]


def test_damaged_or_old_index_is_rebuilt(zoo: Any) -> None:
    reg, _docs = zoo
    expected = query(reg, "SELECT * FROM models ORDER BY name")
    db = index.index_path(reg)
    db.write_bytes(b"not a database")
    assert query(reg, "SELECT * FROM models ORDER BY name") == expected
    con = duckdb.connect(str(db))
    con.execute("UPDATE raw.meta SET value = 'old' WHERE key = 'format'")
    con.close()
    assert query(reg, "SELECT * FROM models ORDER BY name") == expected
    assert index.refresh(reg).rebuilt is False
    side = Fact(reg.repo_root, "snapshot")
    stored = side.read_bytes()
    head, _, body = stored.partition(b"\n")

    def rebuilds(damage: bytes | None) -> bool:
        write(reg.root / "models/late/spec.yaml", "data: {train: d-a}\n")  # a change to apply
        if damage is None:
            side.unlink()
        else:
            side.write_bytes(damage)
        stats = index.refresh(reg)
        assert len(query(reg, "SELECT * FROM models ORDER BY name")) == len(expected) + 1
        (reg.root / "models/late/spec.yaml").unlink()
        assert len(query(reg, "SELECT * FROM models ORDER BY name")) == len(expected)
        return stats.rebuilt

    # The stored snapshot gone, unreadable, or not matching its digests: rebuilt.
    assert rebuilds(None)
    assert rebuilds(b"not a snapshot")
    assert rebuilds(head + b"\n" + body[:-8] + bytes(8))
    # A stored snapshot that does not match the index (an older one put back): rebuilt.
    before = side.read_bytes()
    write(reg.root / "models/late/spec.yaml", "data: {train: d-a}\n")
    index.refresh(reg)
    assert rebuilds(before)
    # Another change with both in step: applied, not rebuilt.
    assert not rebuilds(side.read_bytes())


def test_a_locked_index_falls_back_to_a_private_copy(zoo: Any, monkeypatch: Any) -> None:
    fcntl = pytest.importorskip("fcntl")
    reg, _docs = zoo
    expected = query(reg, "SELECT name, accuracy FROM models ORDER BY name")
    monkeypatch.setattr(index, "LOCK_WAIT_S", 0.05)
    lock = index.index_path(reg).parent / index.LOCK_NAME
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with index.open_index(reg) as opened:
            assert opened.stats.private
            private = Path(
                opened.con.execute(
                    "SELECT path FROM duckdb_databases() WHERE database_name = 'index'"
                ).fetchall()[0][0]
            )
            assert private != index.index_path(reg)
        assert not private.exists()  # the private copy is removed on close
        assert query(reg, "SELECT name, accuracy FROM models ORDER BY name") == expected


def test_a_second_open_in_one_process_uses_a_private_index(zoo: Any) -> None:
    """DuckDB's lock on the index file belongs to the process: a second instance on it would
    release the first one's lock when it closes."""
    reg, _docs = zoo
    shared = index.index_path(reg)
    with index.open_index(reg) as first:
        assert not first.stats.private
        model_doc(reg, "ft2", {"accuracy": 0.61, "loss": 0.5})  # a change to apply
        with index.open_index(reg) as second:
            assert second.stats.private
            got = second.con.execute("SELECT accuracy FROM models WHERE name = 'ft2'").fetchall()
            assert got == [(0.61,)]
        assert shared.exists() and _store.load(reg.repo_root, "snapshot")  # through `first`
        assert first.con.execute("SELECT accuracy FROM models WHERE name = 'ft2'").fetchall()
    stats = index.refresh(reg)
    assert not stats.private and not stats.rebuilt and stats.changed == 1
    assert rows(reg, "SELECT accuracy FROM models WHERE name = 'ft2'") == [{"accuracy": 0.61}]


def test_an_unreadable_models_folder_is_named(zoo: Any) -> None:
    reg, _docs = zoo
    shutil.rmtree(reg.root / "models")
    (reg.root / "models").write_text("not a folder")
    with pytest.raises(ParseError, match=r"^models: cannot read: Not a directory$"):
        query(reg, "SELECT * FROM models")


def test_a_folder_name_that_is_not_utf8_is_named(zoo: Any, cli: Any) -> None:
    reg, _docs = zoo
    expected = query(reg, "SELECT name FROM models ORDER BY name")
    odd = os.fsdecode(b"bad\xff")  # no text: the index could not hold it
    write(reg.root / "models" / odd / "spec.yaml", "data: {train: d-a}\n")
    with pytest.raises(ParseError, match=r"^models/bad\udcff: .* not valid UTF-8$"):
        query(reg, "SELECT name FROM models")
    res = cli(["ls"], reg.root)
    assert (
        res.code == 1
        and res.stderr == "error: models/bad\\udcff: the folder name is not valid UTF-8\n"
    )
    shutil.rmtree(reg.root / "models" / odd)
    assert query(reg, "SELECT name FROM models ORDER BY name") == expected


def test_an_index_held_open_elsewhere_does_not_block_a_refresh(zoo: Any, tmp_path: Path) -> None:
    reg, _docs = zoo
    query(reg, "SELECT 1 AS x")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True);"
            " print('ready', flush=True); sys.stdin.read()",
            str(index.index_path(reg)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        model_doc(reg, "ft2", {"accuracy": 0.55, "loss": 0.5})
        assert rows(reg, "SELECT accuracy FROM models WHERE name='ft2'") == [{"accuracy": 0.55}]
    finally:
        holder.communicate("")
    assert rows(reg, "SELECT accuracy FROM models WHERE name='ft2'") == [{"accuracy": 0.55}]


# -- history ----------------------------------------------------------------------------


def test_history_view_lists_each_committed_version(zoo: Any) -> None:
    reg, docs = zoo
    repo = reg.repo_root
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    first = git(repo, "rev-parse", "HEAD")
    second_doc = model_doc(reg, "ft1", {"accuracy": 0.95, "loss": 0.1})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    second = git(repo, "rev-parse", "HEAD")
    got = rows(
        reg,
        "SELECT name, id, commit, author, metrics['accuracy'] AS acc FROM versions"
        " WHERE name = 'ft1' ORDER BY acc",
        history=True,
    )
    assert got == [
        {
            "name": "ft1",
            "id": docs["ft1"]["id"],
            "commit": first,
            "author": "Test Author",
            "acc": 0.91,
        },
        {
            "name": "ft1",
            "id": second_doc["id"],
            "commit": second,
            "author": "Test Author",
            "acc": 0.95,
        },
    ]
    n = rows(reg, "SELECT count(DISTINCT name) AS n FROM versions", history=True)[0]["n"]
    assert n == 5
    with pytest.raises(QueryError, match="versions"):
        query(reg, "SELECT * FROM versions")


# -- Python API and CLI -------------------------------------------------------------------


def test_the_engine_module_is_the_one_duckdb_exports() -> None:
    from stemma.registry.store import _engine

    for name in _engine.USED:
        assert getattr(_engine.duckdb(), name) is getattr(duckdb, name), name
    con = _engine.duckdb().connect()
    assert isinstance(con, duckdb.DuckDBPyConnection)
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM no_such_table")


def test_result_converts_to_arrow_and_pandas(zoo: Any) -> None:
    reg, _docs = zoo
    result = query(reg, "SELECT name, accuracy, tags, metrics FROM models ORDER BY name")
    pytest.importorskip("pyarrow")
    table = result.arrow()
    assert table.column_names == ["name", "accuracy", "tags", "metrics"]
    assert table.column("name").to_pylist() == [r[0] for r in result.rows]
    pytest.importorskip("pandas")
    assert list(result.df()["name"]) == [r[0] for r in result.rows]


def test_schema_lists_views_and_macros(zoo: Any) -> None:
    reg, _docs = zoo
    views = schema(reg)
    assert {"models", "datasets", "edges", "layers", "metrics", "ancestors(name)"} <= set(views)
    assert ("metrics", "MAP(VARCHAR, DOUBLE)") in views["models"]
    assert ("f1_macro", "DOUBLE") in views["models"]


def test_cli_formats(zoo: Any, cli: Any) -> None:
    reg, docs = zoo
    sql = "SELECT name, accuracy, tags FROM models WHERE id IS NOT NULL ORDER BY name"
    expected = [
        {"name": n, "accuracy": d["metrics"]["accuracy"], "tags": spec_of(reg, n).get("tags", [])}
        for n, d in sorted(docs.items())
        if d["kind"] == "model"
    ]
    res = cli(["query", sql, "--format", "json"], reg.repo_root)
    assert res.code == 0 and json.loads(res.stdout) == expected
    res = cli(["query", sql, "--format", "csv"], reg.repo_root)
    assert res.code == 0
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [(r["name"], float(r["accuracy"]), json.loads(r["tags"])) for r in table] == [
        (e["name"], e["accuracy"], e["tags"]) for e in expected
    ]
    res = cli(["query", sql], reg.repo_root)
    assert res.code == 0 and all(e["name"] in res.stdout for e in expected)
    res = cli(["query", "--schema", "--format", "json"], reg.repo_root)
    assert res.code == 0 and "descendants(name)" in json.loads(res.stdout)


def test_cli_errors_are_one_line_with_exit_codes(zoo: Any, cli: Any) -> None:
    reg, _docs = zoo
    for sql in ("SELEC name FROM models", "DROP VIEW models", "SELECT nope FROM models"):
        res = cli(["query", sql], reg.repo_root)
        assert res.code == 1, sql
        assert res.stdout == ""
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert cli(["query"], reg.repo_root).code == 2


def test_export_parquet_reads_back(zoo: Any, cli: Any, tmp_path: Path) -> None:
    reg, _docs = zoo
    res = cli(["export", "parquet", str(tmp_path / "out")], reg.repo_root)
    assert res.code == 0
    con = duckdb.connect()
    for view in ("models", "datasets", "edges", "layers", "metrics"):
        path = tmp_path / "out" / f"{view}.parquet"
        assert str(path) in res.stdout
        back = con.execute(f"SELECT * FROM read_parquet('{path}') ORDER BY ALL").fetchall()
        assert back == list(query(reg, f"SELECT * FROM {view} ORDER BY ALL").rows)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left
    res = cli(["export", "parquet", str(tmp_path / "more"), "--json"], reg.repo_root)
    written = json.loads(res.stdout)["written"]
    assert str(tmp_path / "more" / "models.parquet") in written


def test_export_parquet_keeps_utc_and_one_key_column(zoo: Any, tmp_path: Path) -> None:
    """Timestamps are written as instants in UTC, and every view names its model `name`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    reg, docs = zoo
    written = export_parquet(reg, tmp_path / "out")
    schemas = {p.stem: pq.read_schema(p) for p in written}
    for view in ("models", "datasets"):
        created = schemas[view].field("created").type
        assert pa.types.is_timestamp(created) and created.tz == "UTC", (view, created)
    for view in ("models", "datasets", "layers", "metrics"):
        assert "name" in schemas[view].names and "model" not in schemas[view].names, view
    started = {n: d["run"]["started"] for n, d in docs.items() if d["kind"] == "model"}
    table = pq.read_table(tmp_path / "out" / "models.parquet").to_pylist()
    assert {
        r["name"]: r["created"].isoformat().replace("+00:00", "Z") for r in table if r["created"]
    } == started


def test_the_console_script_exits_with_the_command_status(zoo: Any) -> None:
    """`stemma query` and `stemma ls` end without the interpreter's teardown: their output,
    errors and exit status are what they would be otherwise."""
    reg, _docs = zoo
    stemma = Path(sys.executable).with_name("stemma")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(stemma), *args], cwd=reg.repo_root, capture_output=True, text=True, check=False
        )

    ok = run("query", "SELECT count(*) AS n FROM models", "--format", "json")
    assert (ok.returncode, json.loads(ok.stdout), ok.stderr) == (0, [{"n": 6}], "")
    bad = run("query", "SELECT * FROM nope")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: query failed: Catalog Error")
    assert bad.stderr.count("\n") == 1
    listed = run("--traceback", "ls")
    assert listed.returncode == 0 and "ft1a" in listed.stdout
    assert run("query", "SELECT 1", "--format", "nope").returncode == 2  # a usage error


def test_query_never_imports_torch_or_dvc(zoo: Any) -> None:
    reg, _docs = zoo
    code = (
        "import sys\nfrom stemma.cli.app import main\n"
        "try:\n    main(['query', 'SELECT count(*) FROM models', '--format', 'json'])\n"
        "except SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'dvc') if m in sys.modules], file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=reg.repo_root, capture_output=True, text=True, check=True
    )
    assert json.loads(proc.stdout) == [{"count_star()": 6}]
    assert proc.stderr.strip().splitlines()[-1] == "[]"


def test_synthetic_registry_is_schema_valid_and_consistent(tmp_path: Path) -> None:
    synth.generate(tmp_path / "reg", 40, shape="mixed", seed=1, family_size=15, unbuilt=0.1)
    reg = Registry.open(tmp_path / "reg")
    built = 0
    for name in reg.model_names():
        spec = reg.model_spec(name)  # validates the spec against its schema
        manifest = reg.model_manifest(name)  # and the manifest against its own
        if manifest is None:
            continue
        built += 1
        assert manifest.spec_digest == spec.digest
        assert manifest.id == manifest.computed_id
        if spec.source is not None:
            parent = reg.model_manifest(spec.source.model)
            assert parent is not None and manifest.source_id == parent.id
    assert 0 < built < 40
    got = rows(reg, "SELECT status, count(*) AS n FROM models GROUP BY status ORDER BY status")
    assert got == [{"status": "built", "n": built}, {"status": "unbuilt", "n": 40 - built}]
    assert (
        digest(dict(reg.dataset_spec("ds00-train").raw))
        == reg.dataset_manifest("ds00-train").spec_digest
    )  # type: ignore[union-attr]


def test_an_unbounded_query_stops_at_its_time_limit(zoo: Any, cli: Any) -> None:
    reg, _docs = zoo
    endless = (
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"
    )
    with pytest.raises(QueryError, match=r"stopped after 0.5 s"):
        query(reg, endless, timeout=0.5)
    res = cli(["query", "--timeout", "0.5", endless], reg.repo_root)
    assert res.code == 1
    assert res.stderr.splitlines() == [
        "error: query stopped after 0.5 s (its time limit; raise it with --timeout)"
    ]
    assert query(reg, "SELECT 1 AS one").rows == ((1,),)  # the index is usable afterwards


def test_index_files_stay_unreadable(zoo: Any, monkeypatch: Any) -> None:
    reg, _docs = zoo
    monkeypatch.chdir(reg.repo_root)
    for sql in (
        "SELECT * FROM read_blob('.stemma/index.duckdb')",
        "SELECT * FROM read_blob('.ste' || 'mma/index.duckdb')",
        "SELECT * FROM glob('.stemma/*')",
        "SELECT * FROM read_text('.stemma/index.duckdb.tmp/../index.duckdb')",
        "SELECT count(*) FROM '.stemma/index.duckdb'",
        "SELECT * FROM query('SELECT 1')",
    ):
        with pytest.raises(QueryError, match="refused"):
            query(reg, sql)


def test_read_only_statements_beyond_select_run(zoo: Any) -> None:
    reg, _docs = zoo
    assert query(reg, "EXPLAIN SELECT name FROM models").rows
    assert query(reg, "DESCRIBE models").rows[0][0] == "name"
    assert query(reg, "SUMMARIZE models").rows
    assert query(reg, "PIVOT models ON status USING count(*) GROUP BY family").rows
