"""Read-only SQL over the registry: `query(reg, sql)`, the view schema and a Parquet export.

User SQL runs on a read-only connection to the index with external access disabled and the
configuration locked, and only a single SELECT (or EXPLAIN of one) is accepted: statements
that write, attach, copy to files, load extensions or change settings are refused with a
`QueryError` and change nothing.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stemma.registry.errors import QueryError
from stemma.registry.query import _watched
from stemma.registry.store import _engine, _sql
from stemma.registry.store._engine import one_line
from stemma.registry.store.files import Outputs
from stemma.registry.store.index import open_index
from stemma.registry.versions.resolve import all_history, statuses

if TYPE_CHECKING:
    import duckdb
    from stemma.registry.store.handle import Registry

_EXPLAIN = re.compile(r"\s*explain\s+(?:analyze\s+|\([^)]*\)\s*)?(.*)", re.I | re.S)


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query, with column names and DuckDB type names."""

    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)

    def to_dicts(self) -> list[dict[str, Any]]:
        """One dict per row, column name -> value."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_json(self) -> list[dict[str, Any]]:
        """Rows as JSON-ready dicts (timestamps as ISO strings, non-finite floats as null)."""
        return [{k: jsonable(v) for k, v in d.items()} for d in self.to_dicts()]

    def arrow(self) -> Any:
        """The rows as a `pyarrow.Table` (needs pyarrow)."""
        try:
            pa = importlib.import_module("pyarrow")  # optional: not a dependency
        except ImportError:
            raise QueryError("QueryResult.arrow() needs pyarrow: pip install pyarrow") from None
        columns = {}
        for i, (name, type_name) in enumerate(zip(self.columns, self.types, strict=True)):
            values = [row[i] for row in self.rows]
            arrow_type = _arrow_type(pa, type_name)
            try:
                columns[name] = pa.array(values, type=arrow_type)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                columns[name] = pa.array(values)
        return pa.table(columns)

    def df(self) -> Any:
        """The rows as a `pandas.DataFrame` (needs pandas)."""
        try:
            pd = importlib.import_module("pandas")  # optional: not a dependency
        except ImportError:
            raise QueryError("QueryResult.df() needs pandas: pip install pandas") from None
        return pd.DataFrame.from_records(list(self.rows), columns=list(self.columns))


def _arrow_type(pa: Any, type_name: str) -> Any:
    """The Arrow type of a DuckDB column type, where one maps simply (else None: inferred)."""
    simple = {
        "VARCHAR": pa.string(),
        "BIGINT": pa.int64(),
        "INTEGER": pa.int32(),
        "HUGEINT": None,
        "DOUBLE": pa.float64(),
        "FLOAT": pa.float32(),
        "BOOLEAN": pa.bool_(),
        "TIMESTAMP": pa.timestamp("us"),
        "DATE": pa.date32(),
    }
    if type_name in simple:
        return simple[type_name]
    if type_name.endswith("[]"):
        inner = _arrow_type(pa, type_name[:-2])
        return None if inner is None else pa.list_(inner)
    match = re.fullmatch(r"MAP\((\w+), (\w+)\)", type_name)
    if match:
        key, value = _arrow_type(pa, match.group(1)), _arrow_type(pa, match.group(2))
        if key is not None and value is not None:
            return pa.map_(key, value)
    return None


def jsonable(value: Any) -> Any:
    """A query value as plain JSON data."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if type(value).__name__ == "Decimal":
        return float(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


# Limits of one user query: time (seconds) and the engine's memory.
TIMEOUT_S = 30.0
MEMORY_LIMIT = "2GB"
# Table functions that read files, or run SQL given as text: with external access disabled
# DuckDB still lets queries read the index's own files, which hold nothing users may not see
# through the views but are stemma's, not theirs.
_FILE_FUNCTIONS = re.compile(
    r"read_\w+|glob|parquet_\w+|sniff_csv|query|query_table|\w+_scan|iceberg_\w+|delta_\w+",
    re.I,
)
_STEMMA_FILES = re.compile(r"\.stemma[/\\]|index\.duckdb", re.I)
_PIVOT = re.compile(r"\s*(?:un)?pivot(?:_wider|_longer)?\b", re.I)


def query(
    reg: Registry,
    sql: str,
    history: bool = False,
    timeout: float = TIMEOUT_S,
    memory_limit: str = MEMORY_LIMIT,
) -> QueryResult:
    """Run one read-only statement (SELECT, EXPLAIN, DESCRIBE, SUMMARIZE, PIVOT) over the
    registry's views and return its rows; stopped with a `QueryError` after `timeout`
    seconds or past `memory_limit`."""
    duckdb = _engine.duckdb()

    # A handle that queries again runs on its copy of the index while its monitor says
    # nothing changed (`_watched`); otherwise the files are checked first, as always.
    con, busy = (None, False) if history else _watched.acquire(reg, memory_limit)
    if con is not None:
        try:
            return _run(con, sql, timeout, memory_limit)
        finally:
            _watched.done(reg)
    prepared = not history and not busy and _watched.prepare(reg)  # watches BEFORE the check
    keep, kept = prepared, False
    try:
        with open_index(reg) as index:
            con = index.con
            if keep:
                try:
                    con = index.take_copy()
                except duckdb.Error:
                    keep, con = False, index.con
            if history:
                _load_history(reg, con)
            _lock_down(con, memory_limit)
            try:
                return _run(con, sql, timeout, memory_limit)
            finally:
                if keep:  # after the query: one thread at a time on the copy
                    _watched.keep(reg, con, memory_limit)
                    kept = True
    finally:
        if prepared and not kept:
            _watched.abandon(reg)


def _run(
    con: duckdb.DuckDBPyConnection, sql: str, timeout: float, memory_limit: str
) -> QueryResult:
    """Check `sql` and run it on the locked-down `con` within `timeout` seconds."""
    duckdb = _engine.duckdb()

    check_sql(con, sql)
    # DuckDB has no statement timeout: a watchdog interrupts the connection instead.
    timer = _WATCHDOG.arm(con, timeout)
    try:
        cursor = con.execute(sql)
        rows = cursor.fetchall()
        description = cursor.description or []
    except duckdb.InterruptException:
        raise QueryError(
            f"query stopped after {timeout:g} s (its time limit; raise it with --timeout)"
        ) from None
    except duckdb.OutOfMemoryException:
        raise QueryError(f"query stopped: it needs more than {memory_limit} memory") from None
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {one_line(exc)}") from None
    finally:
        _WATCHDOG.disarm(timer)
    return QueryResult(
        columns=tuple(str(d[0]) for d in description),
        types=tuple(str(d[1]) for d in description),
        rows=tuple(tuple(r) for r in rows),
    )


class _Watchdog:
    """One daemon thread that interrupts each query's connection at its deadline: starting
    a timer thread per query costs as much wall time as a small query on a kept copy."""

    def __init__(self) -> None:
        import threading

        self._cond = threading.Condition()
        self._jobs: dict[int, tuple[float, Any]] = {}  # token -> (deadline, connection)
        self._next = 0
        self._thread: threading.Thread | None = None

    def arm(self, con: Any, timeout: float) -> int:
        """Interrupt `con` after `timeout` seconds unless `disarm`ed first; its token."""
        import threading
        import time

        with self._cond:
            self._next += 1
            self._jobs[self._next] = (time.monotonic() + timeout, con)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
            self._cond.notify()
            return self._next

    def disarm(self, token: int) -> None:
        """The query of `token` is over: never interrupt it."""
        with self._cond:
            self._jobs.pop(token, None)

    def _run(self) -> None:
        import time

        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, con) in list(self._jobs.items()):
                    if deadline <= now:
                        del self._jobs[token]
                        con.interrupt()
                soonest = min((d for d, _c in self._jobs.values()), default=now + 60.0)
                self._cond.wait(max(soonest - now, 0.001))


_WATCHDOG = _Watchdog()


def check_sql(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but a single SELECT (or EXPLAIN of one), naming what was given."""
    duckdb = _engine.duckdb()

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"cannot parse the query: {one_line(exc)}") from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one SQL statement, not {len(statements)}")
    _refuse_file_access(sql)
    kind = _kind(statements[0])
    if kind == "MULTI" and _PIVOT.match(sql):
        return  # PIVOT runs as a few statements of its own, all reads
    if kind == "EXPLAIN":
        match = _EXPLAIN.fullmatch(sql)
        try:
            inner = con.extract_statements(match.group(1)) if match else []
        except duckdb.Error:
            inner = []
        if len(inner) == 1 and _kind(inner[0]) == "SELECT":
            return
        raise QueryError("EXPLAIN is allowed only for a SELECT")
    if kind != "SELECT":
        raise QueryError(
            f"{kind} statements are refused: queries are read-only (only SELECT is allowed)"
        )


def _refuse_file_access(sql: str) -> None:
    """Refuse a query that calls a file-reading table function or names a file as a table."""
    duckdb = _engine.duckdb()

    tokens = duckdb.tokenize(sql)
    previous = ""
    for i, (start, kind) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(sql)
        text = sql[start:end].strip()
        following = sql[end:].lstrip()[:1] if kind == duckdb.token_type.identifier else ""
        name = text.strip('"')
        if following == "(" and _FILE_FUNCTIONS.fullmatch(name):
            raise QueryError(f"{name}() is refused: queries read the registry's views, not files")
        quoted = kind == duckdb.token_type.string_const or text.startswith('"')
        if quoted and (previous in ("from", "join") or _STEMMA_FILES.search(text)):
            raise QueryError(
                f"{text[:80]} is refused as a table: queries read the registry's views, not files"
            )
        previous = text.lower()


def _kind(statement: Any) -> str:
    return str(statement.type).rsplit(".", 1)[-1].upper()


def _lock_down(con: duckdb.DuckDBPyConnection, memory_limit: str = MEMORY_LIMIT) -> None:
    """No files, no extensions, no Python objects, bounded memory, and no way to change
    that back."""
    for setting in (
        f"memory_limit = {_sql.quote_literal(memory_limit)}",
        "max_temp_directory_size = '0B'",
        "python_enable_replacements = false",
        "autoinstall_known_extensions = false",
        "autoload_known_extensions = false",
        "allow_community_extensions = false",
        "TimeZone = 'UTC'",  # timestamps print as the UTC the manifests record
        "enable_external_access = false",
        "lock_configuration = true",
    ):
        con.execute(f"SET {setting}")


def _load_history(reg: Registry, con: duckdb.DuckDBPyConnection) -> None:
    """Fill the temporary `versions` table from the git history of every manifest."""
    import json

    import numpy as np

    found = all_history(reg)
    versions = [v.to_dict() for v in found]

    def col(key: str) -> Any:
        return np.array(
            [None if v.get(key) is None else str(v[key]) for v in versions], dtype=object
        )

    rows = {
        "name": col("name"),
        "id": col("id"),
        "commit": col("commit"),
        "date": col("date"),
        "author": col("author"),
        "source_id": col("source_id"),
        "metrics": np.array([json.dumps(v.get("metrics") or {}) for v in versions], dtype=object),
        "status": np.array(statuses(reg, found) if found else [], dtype=object),
    }
    con.register("version_rows", rows)
    try:
        con.execute(_sql.VERSIONS_TABLE)
    finally:
        con.unregister("version_rows")


def schema(reg: Registry, history: bool = False) -> dict[str, list[tuple[str, str]]]:
    """Every view (and table macro) users can query, with its columns and their types."""
    with open_index(reg) as index:
        con = index.con
        if history:
            _load_history(reg, con)
        out: dict[str, list[tuple[str, str]]] = {}
        names = [*_sql.PUBLIC_VIEWS, *([_sql.HISTORY_VIEW] if history else [])]
        for name in names:
            rows = con.execute(f"DESCRIBE {name}").fetchall()
            out[name] = [(str(r[0]), str(r[1])) for r in rows]
        for macro in _sql.MACROS:
            rows = con.execute(f"DESCRIBE SELECT * FROM {macro}('')").fetchall()
            out[f"{macro}(name)"] = [(str(r[0]), str(r[1])) for r in rows]
    return out


def export_parquet(
    reg: Registry, folder: Path, history: bool = False, overwrite: bool = False
) -> list[Path]:
    """Write every view as `<folder>/<view>.parquet` where `Outputs` allows (an existing file
    only with `overwrite`, never a registry file, a link, a pipe or a device); the files
    written. Every target is checked before the first is written."""
    import shutil
    import tempfile

    duckdb = _engine.duckdb()

    outputs = Outputs.for_registry(reg.repo_root, reg.root, overwrite)
    real = outputs.folder(folder)
    folder = Path(folder)
    names = [*_sql.PUBLIC_VIEWS, *([_sql.HISTORY_VIEW] if history else [])]
    targets = {name: outputs.file(folder / f"{name}.parquet") for name in names}
    outputs.mkdir(real, str(folder))
    # DuckDB writes into a fresh private folder beside the targets: no name it writes can
    # be a link or a pipe planted in advance, and the rename into place stays atomic.
    scratch = tempfile.mkdtemp(prefix=".stemma-parquet-", dir=real)
    written: list[Path] = []
    try:
        with open_index(reg) as index:
            con = index.con
            if history:
                _load_history(reg, con)
            for name in names:
                shown = folder / f"{name}.parquet"
                tmp = os.path.join(scratch, f"{name}.parquet")
                try:
                    con.execute(
                        f"COPY (SELECT * FROM {name}) TO {_sql.quote_literal(tmp)} (FORMAT parquet)"
                    )
                except duckdb.Error as exc:
                    raise QueryError(f"cannot write {shown}: {one_line(exc)}") from None
                outputs.publish(tmp, targets[name], str(shown))
                written.append(shown)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return written
