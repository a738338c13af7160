"""The one status rule (`stemma.registry.rules.status`) and the SQL of the index views that must
agree with it, on every case."""

from __future__ import annotations

import itertools

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
    con: duckdb.DuckDBPyConnection, name: str, id_: str, digest: str, source_id: str | None
) -> None:
    con.execute(
        "INSERT INTO raw.model_manifests (name, id, spec_digest, source_id, metrics)"
        " VALUES (?, ?, ?, ?, MAP {})",
        [name, id_, digest, source_id],
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
