"""Writing the query index: one transaction that applies a set of changed files.

Specs are parsed in worker processes (see `_scan.SpecReader`) while this process hands
manifests to DuckDB, whose JSON reader extracts the indexed fields; a file that cannot be
indexed raises the located error of the registry (file, line or JSON pointer).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from . import _scan, _sql
from .errors import ParseError, SchemaError

if TYPE_CHECKING:
    import duckdb

    from .registry import Registry

# Manifests go to DuckDB in chunks, so memory stays flat on large registries.
CHUNK = 5000


class Clock:
    """Wall time per named step."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.start = self._last = time.perf_counter()

    def total(self) -> float:
        """Seconds since the clock started."""
        return time.perf_counter() - self.start

    def lap(self, name: str) -> None:
        """Add the time since the last lap to step `name`."""
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._last
        self._last = now


@dataclass(frozen=True)
class Changes:
    """Paths to (re-)read and paths that are gone."""

    read: list[str]  # new or changed paths
    removed: list[str]
    added: int
    # Size and mtime of each path to read, as the snapshot saw them: what the index records
    # for the file (see `_scan.read_text`).
    stamps: dict[str, tuple[int, int]]


def text_column(values: Sequence[str | None]) -> Any:
    """A NumPy column of strings: DuckDB scans it without converting row by row."""
    import numpy as np

    return np.array(values, dtype=object)


def int_column(values: Sequence[int]) -> Any:
    """A NumPy column of 64-bit integers."""
    import numpy as np

    return np.array(values, dtype=np.int64)


def apply(
    reg: Registry,
    connect: Callable[[], duckdb.DuckDBPyConnection],
    snap: _scan.Snapshot,
    changes: Changes,
    create: bool,
    clock: Clock,
) -> None:
    """Apply `changes` (found by comparing `snap` with the index) in one transaction on the
    connection `connect` opens read-write."""
    # Taken before any file is read: a file is "racy" when its mtime is within the window of
    # this moment, and so also of the moment it was read (which is later).
    now = _scan.now_ns()
    stamps = changes.stamps
    specs = [p for p in changes.read if p.endswith(_scan.SPEC)]
    manifests = [p for p in changes.read if p.endswith(_scan.MANIFEST)]
    # Specs are turned into JSON by worker processes while this one indexes manifests.
    reader = _scan.SpecReader(reg.root, reg.rel_root, specs, [stamps[p][0] for p in specs])
    try:
        con = connect()
    except BaseException:
        reader.close()
        raise
    try:
        con.execute("BEGIN TRANSACTION")
        if reader.workers:  # the spec workers and DuckDB share the cores
            con.execute(f"SET threads = {max(1, (os.cpu_count() or 1) - reader.workers)}")
        if create:
            con.execute(_sql.TABLES)
            con.execute(_sql.VIEWS)
        gone = changes.removed + changes.read
        if gone and not create:
            con.register("gone_files", {"path": text_column(gone)})
            kinds = {(p.split("/", 1)[0], p.rsplit("/", 1)[-1]) for p in gone}
            tables = [t for kind in kinds for t in _sql.RAW_BY_FILE.get(kind, ())]
            for table in tables:
                con.execute(f"DELETE FROM {table} WHERE path IN (SELECT path FROM gone_files)")
            con.unregister("gone_files")
        clock.lap("delete")
        read: list[str] = []

        def take_specs(parts: Iterable[tuple[list[str], list[str | None]]]) -> None:
            for paths, texts in parts:
                read.extend(_insert_specs(reg, con, paths, texts))

        # Spec parts are indexed as the workers finish them, between chunks of manifests.
        read += _insert_manifests(reg, con, manifests, stamps, lambda: take_specs(reader.ready()))
        clock.lap("manifests")
        take_specs(reader.rest())
        clock.lap("specs")
        # A file written moments ago is recorded as RACY: the next open reads it again. A
        # file that vanished before it could be read is recorded as missing.
        racy = {p: _scan.RACY for p in read if _scan.racy(stamps[p][1], now)}
        gone_since = {p: _scan.MISSING for p in set(changes.read).difference(read)}
        stored = snap.with_sizes(racy | gone_since) if racy or gone_since else snap
        con.execute("DELETE FROM raw.snapshot")
        con.execute("INSERT INTO raw.snapshot VALUES (?, ?, ?, ?)", list(stored.pack()))
        _update_edges(con, gone, create)
        clock.lap("edges")
        _update_models_view(con, create)
        con.execute("DELETE FROM raw.meta WHERE key = 'format'")
        con.execute("INSERT INTO raw.meta VALUES ('format', ?)", [_sql.FORMAT])
        con.execute("COMMIT")
        clock.lap("commit")
    except BaseException:
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        raise
    finally:
        reader.close()
        con.close()
        clock.lap("close")


def _update_edges(con: duckdb.DuckDBPyConnection, gone: list[str], create: bool) -> None:
    """Recompute the lineage edges of the models whose spec or manifest changed."""
    if create:
        con.execute(_sql.EDGES.format(only=""))
        return
    names = sorted({p.split("/")[1] for p in gone if p.startswith("models/")})
    if not names:
        return
    con.register("touched_models", {"name": text_column(names)})
    con.execute("DELETE FROM raw.edges WHERE src IN (SELECT name FROM touched_models)")
    con.execute(_sql.EDGES.format(only=_sql.ONLY_TOUCHED))
    con.unregister("touched_models")


def _update_models_view(con: duckdb.DuckDBPyConnection, create: bool) -> None:
    """Recreate `models` when the set of metric names changed (one column per metric)."""
    keys = sorted(
        str(r[0])
        for r in con.execute(
            "SELECT DISTINCT unnest(map_keys(metrics)) FROM raw.model_manifests"
        ).fetchall()
    )
    joined = "\n".join(keys)
    rows = con.execute("SELECT value FROM raw.meta WHERE key = 'metric_keys'").fetchall()
    if create or not rows or rows[0][0] != joined:
        con.execute(_sql.models_view(keys))
        con.execute("DELETE FROM raw.meta WHERE key = 'metric_keys'")
        con.execute("INSERT INTO raw.meta VALUES ('metric_keys', ?)", [joined])


def _display(reg: Registry, path: str) -> str:
    return str(PurePosixPath(reg.rel_root, path)) if reg.rel_root not in ("", ".") else path


def _insert_specs(
    reg: Registry, con: duckdb.DuckDBPyConnection, paths: list[str], texts: list[str | None]
) -> list[str]:
    """Index specs from their canonical JSON (None: the file vanished); the paths indexed."""
    read = [p for p, t in zip(paths, texts, strict=True) if t is not None]
    if not read:
        return []
    con.register(
        "spec_rows",
        {"path": text_column(read), "spec": text_column([t for t in texts if t is not None])},
    )
    con.execute(_sql.STAGE_SPECS)
    con.unregister("spec_rows")
    con.execute(_sql.INSERT_MODEL_SPECS)
    con.execute(_sql.INSERT_DATASET_SPECS)
    flagged = con.execute(_sql.FLAGGED_SPECS).fetchall()
    con.execute("DROP TABLE staged_specs")
    if flagged:
        # A field the index needs is missing or of another type: the Python reference picks
        # the fields where it can and raises the located error where it cannot.
        rows = []
        for path, compact in flagged:
            display = _display(reg, path)
            text = _scan.read_text(reg.root, path, 1 << 16, reg.rel_root) or ""
            rows.append(_scan.spec_row(path, compact, display, text))
        con.register(
            "spec_fields",
            {c: text_column([r[i] for r in rows]) for i, c in enumerate(_scan.SPEC_COLUMNS)},
        )
        con.execute(_sql.INSERT_MODEL_SPEC_ROWS)
        con.execute(_sql.INSERT_DATASET_SPEC_ROWS)
        con.unregister("spec_fields")
    return read


def _insert_manifests(
    reg: Registry,
    con: duckdb.DuckDBPyConnection,
    paths: list[str],
    stamps: dict[str, tuple[int, int]],
    between: Callable[[], None],
) -> list[str]:
    """Parse manifests with DuckDB's JSON reader, a chunk at a time, calling `between`
    after each; the paths indexed."""
    chunks = [
        (kind == "models/", chunk)
        for kind in ("models/", "datasets/")
        for chunk in _chunks([p for p in paths if p.startswith(kind)], CHUNK)
    ]
    read: list[str] = []

    def load(chunk: list[str]) -> list[tuple[str, str]]:
        texts = (_scan.read_text(reg.root, p, stamps[p][0], reg.rel_root) for p in chunk)
        return [(p, t) for p, t in zip(chunk, texts, strict=True) if t is not None]

    for model, chunk in chunks:
        files = load(chunk)
        if files:
            _stage_manifests(reg, con, files, model)
            read += [p for p, _t in files]
        between()
    return read


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _stage_manifests(
    reg: Registry, con: duckdb.DuckDBPyConnection, files: list[tuple[str, str]], model: bool
) -> None:
    """Index manifests given as (path, text)."""
    import duckdb

    shape = _sql.MODEL_MANIFEST_SHAPE if model else _sql.DATASET_MANIFEST_SHAPE
    bad = _sql.MODEL_MANIFEST_BAD if model else _sql.DATASET_MANIFEST_BAD
    con.register(
        "manifest_rows",
        {
            "path": text_column([p for p, _t in files]),
            "content": text_column([t for _p, t in files]),
        },
    )
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE staged AS SELECT path, split_part(path, '/', 2) AS name,"
            f" from_json(content, {_sql.quote_literal(shape)}) AS j FROM manifest_rows"
        )
    except duckdb.InvalidInputException:
        _raise_first_error(reg, files, model)
        raise
    finally:
        with contextlib.suppress(duckdb.Error):  # the transaction may be aborted
            con.unregister("manifest_rows")
    wrong = con.execute(f"SELECT path FROM staged WHERE {bad} ORDER BY path LIMIT 1").fetchall()
    if wrong:
        _raise_first_error(reg, [f for f in files if f[0] == wrong[0][0]], model)
    if model:
        con.execute(_sql.INSERT_MODEL_MANIFESTS)
        con.execute(_sql.INSERT_LAYERS)
    else:
        con.execute(_sql.INSERT_DATASET_MANIFESTS)
    con.execute("DROP TABLE staged")


def _raise_first_error(reg: Registry, files: list[tuple[str, str]], model: bool) -> None:
    """Raise the located error (file, line or JSON pointer) of the first bad manifest."""
    import json

    from .records import DATASET_MANIFEST, MODEL_MANIFEST, parse_json_document

    for path, text in files:  # syntax first: cheap, and what makes DuckDB reject a whole chunk
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParseError(
                _display(reg, path), f"invalid JSON: {exc.msg}", line=exc.lineno
            ) from None
    schema = MODEL_MANIFEST if model else DATASET_MANIFEST
    for path, text in files:
        parse_json_document(text, schema, _display(reg, path))
    if len(files) == 1:
        raise SchemaError(
            _display(reg, files[0][0]),
            "cannot index this manifest: a field has an unexpected type",
        )
