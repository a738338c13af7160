"""Writing the query index: one transaction that applies a set of changed files.

Specs are parsed in worker processes (see `_scan.SpecReader`) while this process hands
manifests to DuckDB, whose JSON reader extracts the indexed fields; a file that cannot be
indexed raises the located error of the registry (file, line or JSON pointer).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
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
    specs = [p for p in changes.read if p.endswith("/" + _scan.SPEC)]
    manifests = [p for p in changes.read if p.endswith("/" + _scan.MANIFEST)]
    # Specs are parsed by worker processes while this one indexes manifests.
    reader = _scan.SpecReader(reg.root, reg.rel_root, specs)
    try:
        con = connect()
    except BaseException:
        reader.close()
        raise
    try:
        con.execute("BEGIN TRANSACTION")
        if create:
            con.execute(_sql.TABLES)
            con.execute(_sql.VIEWS)
        gone = changes.removed + changes.read
        if gone and not create:
            con.register("gone_files", {"path": text_column(gone)})
            kinds = {(p.split("/", 1)[0], p.rsplit("/", 1)[-1]) for p in gone}
            tables = [t for kind in kinds for t in _sql.RAW_BY_FILE.get(kind, ())]
            for table in ("raw.files", *tables):
                con.execute(f"DELETE FROM {table} WHERE path IN (SELECT path FROM gone_files)")
            con.unregister("gone_files")
        clock.lap("delete")
        stamps = _insert_manifests(reg, con, manifests)
        clock.lap("manifests")
        rows = reader.rows()
        clock.lap("specs_wait")
        stamps += _insert_specs(con, rows)
        clock.lap("specs_insert")
        # A file written moments ago is recorded with size -1: the next open re-reads it.
        con.register(
            "stamps",
            {
                "path": text_column([s[0] for s in stamps]),
                "size": int_column([-1 if _scan.racy(s[2], now) else s[1] for s in stamps]),
                "mtime_ns": int_column([s[2] for s in stamps]),
            },
        )
        con.execute("INSERT INTO raw.files SELECT path, size, mtime_ns FROM stamps")
        con.unregister("stamps")
        stored = _stored_snapshot(snap, changes, stamps, now)
        con.execute("DELETE FROM raw.snapshot")
        con.execute("INSERT INTO raw.snapshot VALUES (?, ?, ?)", list(stored.pack()))
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


def _stored_snapshot(
    snap: _scan.Snapshot, changes: Changes, stamps: list[tuple[str, int, int]], now: int
) -> _scan.Snapshot:
    """What `raw.files` holds after this update, in the order of `snap`: the stat of each
    file read (size -1 when racy), and files that vanished before they could be read left out.
    """
    read = set(changes.read)
    stamped = {p: (-1 if _scan.racy(m, now) else s, m) for p, s, m in stamps}
    out = _scan.Snapshot([], [], [])
    for path, size, mtime in zip(snap.paths, snap.sizes, snap.mtimes, strict=True):
        if path in read:
            if path not in stamped:
                continue
            size, mtime = stamped[path]
        out.paths.append(path)
        out.sizes.append(size)
        out.mtimes.append(mtime)
    return out


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
    con: duckdb.DuckDBPyConnection, rows: list[_scan.SpecRow]
) -> list[tuple[str, int, int]]:
    for kind, insert in (
        ("models/", _sql.INSERT_MODEL_SPECS),
        ("datasets/", _sql.INSERT_DATASET_SPECS),
    ):
        mine = [r for r in rows if r[0].startswith(kind)]
        if not mine:
            continue
        cols: dict[str, Any] = {"name": text_column([r[0].split("/")[1] for r in mine])}
        for i, column in enumerate(_scan.SPEC_COLUMNS):
            values: list[Any] = [r[i] for r in mine]
            cols[column] = (
                int_column(values) if column in ("size", "mtime_ns") else text_column(values)
            )
        con.register("spec_rows", cols)
        con.execute(insert)
        con.unregister("spec_rows")
    return [(r[0], r[1], r[2]) for r in rows]


def _insert_manifests(
    reg: Registry, con: duckdb.DuckDBPyConnection, paths: list[str]
) -> list[tuple[str, int, int]]:
    """Parse manifests with DuckDB's JSON reader, a chunk at a time."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [
        (kind == "models/", chunk)
        for kind in ("models/", "datasets/")
        for chunk in _chunks([p for p in paths if p.startswith(kind)], CHUNK)
    ]
    stamps: list[tuple[str, int, int]] = []
    # A reader thread fetches the next chunk while DuckDB parses this one (it drops the GIL).
    with ThreadPoolExecutor(1) as pool:
        pending = [
            pool.submit(_read_chunk, reg.root, reg.rel_root, chunk) for _model, chunk in chunks[:1]
        ]
        for i, (model, _chunk) in enumerate(chunks):
            files = pending.pop().result()
            if i + 1 < len(chunks):
                pending.append(pool.submit(_read_chunk, reg.root, reg.rel_root, chunks[i + 1][1]))
            if files:
                _stage_manifests(reg, con, files, model)
                stamps += [(f.path, f.size, f.mtime_ns) for f in files]
    return stamps


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _read_chunk(root: Path, prefix: str, paths: list[str]) -> list[_scan.FileText]:
    return list(_scan.read_files(root, paths, prefix))


def _stage_manifests(
    reg: Registry, con: duckdb.DuckDBPyConnection, files: list[_scan.FileText], model: bool
) -> None:
    import duckdb

    shape = _sql.MODEL_MANIFEST_SHAPE if model else _sql.DATASET_MANIFEST_SHAPE
    bad = _sql.MODEL_MANIFEST_BAD if model else _sql.DATASET_MANIFEST_BAD
    con.register(
        "manifest_rows",
        {
            "path": text_column([f.path for f in files]),
            "name": text_column([f.path.split("/")[1] for f in files]),
            "content": text_column([f.text for f in files]),
        },
    )
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE staged AS SELECT path, name, "
            f"from_json(content, {_sql.quote_literal(shape)}) AS j FROM manifest_rows"
        )
    except duckdb.InvalidInputException:
        _raise_first_error(reg, files, model)
        raise
    finally:
        with contextlib.suppress(duckdb.Error):  # the transaction may be aborted
            con.unregister("manifest_rows")
    wrong = con.execute(f"SELECT path FROM staged WHERE {bad} ORDER BY path LIMIT 1").fetchall()
    if wrong:
        _raise_first_error(reg, [f for f in files if f.path == wrong[0][0]], model)
    if model:
        con.execute(_sql.INSERT_MODEL_MANIFESTS)
        con.execute(_sql.INSERT_LAYERS)
    else:
        con.execute(_sql.INSERT_DATASET_MANIFESTS)
    con.execute("DROP TABLE staged")


def _raise_first_error(reg: Registry, files: list[_scan.FileText], model: bool) -> None:
    """Raise the located error (file, line or JSON pointer) of the first bad manifest."""
    import json

    from .records import DATASET_MANIFEST, MODEL_MANIFEST, parse_json_document

    for f in files:  # syntax first: cheap, and what makes DuckDB reject a whole chunk
        try:
            json.loads(f.text)
        except json.JSONDecodeError as exc:
            raise ParseError(
                _display(reg, f.path), f"invalid JSON: {exc.msg}", line=exc.lineno
            ) from None
    schema = MODEL_MANIFEST if model else DATASET_MANIFEST
    for f in files:
        parse_json_document(f.text, schema, _display(reg, f.path))
    if len(files) == 1:
        raise SchemaError(
            _display(reg, files[0].path),
            "cannot index this manifest: a field has an unexpected type",
        )
