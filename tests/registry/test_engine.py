"""store/_engine.py: DuckDB's private engine module where it is complete, else the public
package, and a query that runs the same on either."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator

import duckdb
import pytest
from stemma.registry import Registry
from stemma.registry.errors import QueryError
from stemma.registry.query.sql import query
from stemma.registry.store import _engine

HAS_PRIVATE = importlib.util.find_spec(_engine.PRIVATE) is not None


@pytest.fixture
def fresh_engine() -> Iterator[None]:
    """`duckdb()` chooses again inside the test, and again after it."""
    _engine.duckdb.cache_clear()
    yield
    _engine.duckdb.cache_clear()


def _answers(reg: Registry) -> tuple[list[tuple[object, ...]], str]:
    """A query's rows and a failing query's error, through whichever engine `duckdb()` gives."""
    rows = [tuple(row) for row in query(reg, "SELECT count(*), 41 + 1 FROM models").rows]
    with pytest.raises(QueryError) as failed:
        query(reg, "SELECT * FROM no_such_table")
    return rows, str(failed.value)


@pytest.mark.skipif(not HAS_PRIVATE, reason="this DuckDB has no engine module of its own")
def test_a_complete_private_module_is_the_engine() -> None:
    assert _engine.engine() is importlib.import_module(_engine.PRIVATE)
    assert _engine.engine(private=False) is duckdb


@pytest.mark.skipif(not HAS_PRIVATE, reason="this DuckDB has no engine module of its own")
def test_a_private_module_missing_a_name_gives_the_public_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(importlib.import_module(_engine.PRIVATE), "InvalidInputException")
    assert _engine.engine() is duckdb
    con = _engine.engine().connect()
    assert con.execute("SELECT 41 + 1").fetchone() == (42,)
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM no_such_table")


def test_without_the_private_module_queries_run_on_the_public_package(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, fresh_engine: None
) -> None:
    private = _answers(registry)
    monkeypatch.setattr(_engine, "PRIVATE", "no_such_engine_module")
    _engine.duckdb.cache_clear()
    assert _engine.duckdb() is duckdb
    assert _answers(registry) == private == ([(0, 42)], private[1])
