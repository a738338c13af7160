"""Writing the query index: one transaction that applies a set of changed files.

Specs are turned into canonical JSON here (`_specrow`) and manifests handed to DuckDB as text,
whose JSON reader extracts the indexed fields; a file that cannot be indexed raises the
located error of the registry (file, line or JSON pointer). A model folder's dvc.lock gives
the md5 it records for the weights (`yamlio.locked_md5`); a lock that cannot be read records
none, as DVC reports a broken lock itself.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from stemma.registry.errors import SchemaError, StemmaError
from stemma.registry.records.core import DATASET_MANIFEST, MODEL_MANIFEST
from stemma.registry.rules.layout import KINDS, MODELS_DIR
from stemma.registry.rules.status import recorded_md5
from stemma.registry.store import _engine, _snapshot, _specrow, _sql
from stemma.registry.store import derived as _store
from stemma.registry.store.documents import parse_json_document
from stemma.registry.store.files import parse_json_text
from stemma.registry.store.handle import WEIGHTS_FILE
from stemma.registry.store.yamlio import locked_md5

if TYPE_CHECKING:
    import duckdb
    from stemma.registry.store.handle import Registry

# Manifests go to DuckDB in chunks, so memory stays flat on large registries.
CHUNK = 5000
# Up to this many values, a table of paths or texts goes to DuckDB as one query parameter
# each; more, as one list parameter per column (see `rows_from`).
FEW_VALUES = 16
# The name the index is attached under: the default database of every query.
DATABASE = "index"
# DuckDB's checkpoint_threshold while a new index commits: any write is past it, so the
# commit checkpoints, and DuckDB then writes no log (10,000 models: 15 MB less written, and
# 0.035 s less CPU than logging, then checkpointing as the file is detached).
WRITE_THROUGH = "1B"


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

    read: list[str]  # new or changed paths; the snapshot's stamp of each is what the index
    # records for the file (see `_snapshot.read_text`)
    removed: list[str]
    added: int


@contextlib.contextmanager
def text_rows(
    con: duckdb.DuckDBPyConnection, name: str, columns: Mapping[str, Sequence[str | None]]
) -> Iterator[None]:
    """The text `columns` as the temporary table `name` while the block runs."""
    duckdb = _engine.duckdb()

    picks, values = rows_from(columns)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {picks}", values)
    try:
        yield
    finally:
        with contextlib.suppress(duckdb.Error):  # the transaction may be aborted
            con.execute(f"DROP TABLE {name}")


def rows_from(columns: Mapping[str, Sequence[str | None]]) -> tuple[str, list[Any]]:
    """A SELECT list that unnests the text `columns` (of equal length) from query
    parameters, and the parameters: a list per column, or where there are few values, one
    parameter each (converting the first list parameter makes DuckDB import datetime,
    decimal and uuid: about 10 ms, as much as the rest of a one-file refresh's statements).

    Lists, not NumPy columns, even for the 20,000 texts of a cold index at 10,000 models:
    DuckDB converts a list of strings as fast as it scans a NumPy column of them, and NumPy
    itself would cost a read command that builds the index 0.09 s of CPU to import."""
    count = len(next(iter(columns.values())))
    if count * len(columns) > FEW_VALUES:
        picks = [f"unnest(${k}::VARCHAR[]) AS {c}" for k, c in enumerate(columns, 1)]
        return ", ".join(picks), [list(column) for column in columns.values()]
    picks = []
    for k, c in enumerate(columns):  # column k: parameters k * count + 1 to (k + 1) * count
        listed = ", ".join(f"${k * count + i}" for i in range(1, count + 1))
        picks.append(f"unnest([{listed}]::VARCHAR[]) AS {c}")
    return ", ".join(picks), [v for column in columns.values() for v in column]


class IndexBusy(StemmaError):
    """The shared index is being written or read by another process."""


class Attached:
    """An in-memory DuckDB instance with the index at `path` attached as its default database:
    read-write while it changes, then read-only (cheaper than an instance for each). With
    `path` None the index itself is in memory, kept from its build to its close: a read
    where no file can be written (a full disk) still gets its answer."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.con: duckdb.DuckDBPyConnection | None = None
        self.attached = False

    def attach(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Attach the index (detaching it first if it is)."""
        duckdb = _engine.duckdb()

        if self.path is None and self.attached and self.con is not None:
            return self.con
        self.detach()
        if self.con is None:
            # Spills go beside the index, as they would for the file opened directly (DuckDB
            # lets queries read its temporary folder even with external access disabled);
            # an index in memory spills nowhere.
            spills = "" if self.path is None else f"{self.path}.tmp"
            self.con = duckdb.connect(config={"temp_directory": spills})
        mode = " (READ_ONLY)" if read_only and self.path is not None else ""
        target = ":memory:" if self.path is None else str(self.path)
        try:
            self.con.execute(f"ATTACH {_sql.quote_literal(target)} AS {DATABASE}{mode}")
        except duckdb.Error as exc:
            locked = isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()
            if locked or type(exc).__name__ == "ResourceInUseException":
                raise IndexBusy(f"{self.path} is open in another process") from None
            raise
        self.attached = True
        self.con.execute(f"USE {DATABASE}")
        return self.con

    def detach(self) -> None:
        """Detach the index (writing its changes to the file); one in memory stays."""
        if self.con is not None and self.attached and self.path is not None:
            self.attached = False
            self.con.execute("USE memory")
            self.con.execute(f"DETACH {DATABASE}")

    def close(self) -> None:
        """Close the instance (a later `attach` starts another)."""
        con, self.con, self.attached = self.con, None, False
        if con is not None:
            con.close()


class StaleIndex(Exception):
    """The index does not match the snapshot file it was compared with."""


def apply(
    reg: Registry,
    db: Attached,
    snap: _snapshot.Snapshot,
    changes: Changes,
    expect: tuple[str, str] | None,
    clock: Clock,
    kept: Sequence[tuple[str, bytes]] = (),
    watched: str | None = None,
) -> None:
    """Apply `changes` (found by comparing `snap` with the stored snapshot, whose digests
    are `expect`) and store `snap` as the fact `snapshot` (unless the index is in memory),
    in one transaction on `db`, attached read-write. With `expect` None, create the index
    (`changes` lists every file) with the facts `kept`; otherwise raise `StaleIndex` when the
    index does not match `expect`. `watched`: the monitor daemon's token taken before `snap`
    (`fsmonitor`), recorded with it."""
    create = expect is None
    # Taken before any file is read: a file is "racy" when its mtime or ctime is within the
    # window of this moment, and so also of the moment it was read (which is later).
    now = _snapshot.now_ns()
    con = _begin(db, expect)
    try:
        if create:
            con.execute(_sql.TABLES)
            con.execute(_sql.VIEWS)
            for name, body in kept:
                _store.put_fact(con, name, body)
        gone = changes.removed + changes.read
        if gone and not create:
            kinds = {(p.split("/", 1)[0], p.rsplit("/", 1)[-1]) for p in gone}
            tables = [t for kind in kinds for t in _sql.RAW_BY_FILE.get(kind, ())]
            with text_rows(con, "gone_files", {"path": gone}):
                for table in tables:
                    delete = _sql.DELETE_GONE_LAYERS if table == "raw.layers" else _sql.DELETE_GONE
                    con.execute(delete.format(table=table))
        clock.lap("delete")
        files = _read_files(reg, con, changes.read)
        clock.lap("read")
        if files.error is not None:
            # The transaction is lost: the specs are checked outside it, since a bad spec is
            # reported before a bad manifest.
            con.execute("ROLLBACK")
            _check_specs(reg, con, files.specs, files.texts)
            raise files.error
        _insert_specs(reg, con, files.specs, files.texts)
        _insert_locks(con, files.locked)
        read = files.specs + files.manifests + files.locks
        clock.lap("insert")
        # A file written moments ago is recorded as RACY: the next open reads it again. A
        # file that vanished before it could be read is recorded as missing.
        racy: dict[str, int] = {}
        if _any_racy(snap, now):
            stamps = snap.stamps(read)
            racy = {
                p: _snapshot.RACY
                for p in read
                if _snapshot.racy(_snapshot.changed_ns(stamps[p]), now)
            }
        gone_since: dict[str, int] = {}
        if len(read) < len(changes.read):
            gone_since = {p: _snapshot.MISSING for p in set(changes.read).difference(read)}
        stored = snap.with_sizes(racy | gone_since) if racy or gone_since else snap
        _update_edges(con, gone, create)
        clock.lap("edges")
        _update_models_view(con, create)
        packed = stored.pack()
        con.execute("DELETE FROM raw.meta WHERE key IN ('format', 'snapshot')")
        con.execute(
            "INSERT INTO raw.meta VALUES ('format', ?), ('snapshot', ?)",
            [_sql.FORMAT, " ".join(packed[:2])],
        )
        record_watched(con, watched)
        if db.path is not None:  # an index in memory is never compared again
            _store.put_fact(con, _store.SNAPSHOT_FACT, pack_snapshot(packed))
        clock.lap("snapshot")
        if create and db.path is not None:
            # A new file: the commit writes the tables into it (a checkpoint) instead of
            # first into its write-ahead log, which the close would then copy into it.
            con.execute(f"SET checkpoint_threshold = {_sql.quote_literal(WRITE_THROUGH)}")
        con.execute("COMMIT")
        if create and db.path is not None:
            con.execute("RESET checkpoint_threshold")
        clock.lap("commit")
    except BaseException:
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        raise


def _any_racy(snap: _snapshot.Snapshot, now: int) -> bool:
    """Whether any file of `snap` is racy at `now`: its latest mtime or ctime, found in C
    over the snapshot's numbers, tells without a look at each file's stamp."""
    numbers, width = snap.numbers, _snapshot.PER_FILE
    if not numbers:
        return False
    latest = max(max(numbers[1::width]), max(numbers[2::width]))
    return _snapshot.racy(latest, now)


# The snapshot the index matches is the store's fact `snapshot`, replaced in the transaction
# that changes the index (about 10 ms at 10,000 models, 20-35 ms at 30,000): the two always
# match. The index's `raw.meta` records the snapshot's digests, compared on every open.
SNAPSHOT_MAGIC = b"stemma-snapshot/3"  # 2: four numbers per file (`_snapshot.stamp`); 3: locks


def matches(con: duckdb.DuckDBPyConnection, digests: tuple[str, str]) -> bool:
    """True when the index is of this format and matches the snapshot of `digests`."""
    rows = con.execute(
        "SELECT key, value FROM raw.meta WHERE key IN ('format', 'snapshot')"
    ).fetchall()
    return dict(rows) == {"format": _sql.FORMAT, "snapshot": " ".join(digests)}


def watched(con: duckdb.DuckDBPyConnection) -> str | None:
    """The monitor daemon's token the index was last brought in step under (`fsmonitor`),
    where the index is of this format; None otherwise."""
    rows = con.execute(
        "SELECT key, value FROM raw.meta WHERE key IN ('format', 'watched')"
    ).fetchall()
    found = dict(rows)
    return found.get("watched") if found.get("format") == _sql.FORMAT else None


def record_watched(con: duckdb.DuckDBPyConnection, token: str | None) -> None:
    """Record `token` (None: forget the one recorded) in the caller's transaction: a check
    made without the daemon's token must not leave an older one standing for it."""
    con.execute("DELETE FROM raw.meta WHERE key = 'watched'")
    if token is not None:
        con.execute("INSERT INTO raw.meta VALUES ('watched', ?)", [token])


def pack_snapshot(packed: tuple[str, str, str, bytes]) -> bytes:
    """A packed snapshot as stored: a header line (digests, size of the names), the folder
    names as JSON, then the numbers (checked against its digests when read)."""
    names_digest, numbers_digest, names, numbers = packed
    text = names.encode()
    head = b" ".join(
        [SNAPSHOT_MAGIC, names_digest.encode(), numbers_digest.encode(), b"%d" % len(text)]
    )
    return b"".join([head, b"\n", text, numbers])


@dataclass(frozen=True)
class StoredSnapshot:
    """A stored snapshot as read: its digests, then its names and numbers, still packed."""

    digests: tuple[str, str]
    data: bytes
    numbers_at: int  # the names are JSON from the end of the header line to here

    @classmethod
    def parse(cls, data: bytes | None) -> StoredSnapshot | None:
        """The stored snapshot `data` (None when there is none or it has no header)."""
        if data is None:
            return None
        try:
            end = data.index(b"\n", 0, 256)
            magic, names_digest, numbers_digest, size = data[:end].split()
            numbers_at = end + 1 + int(size)
            digests = (names_digest.decode(), numbers_digest.decode())
        except ValueError:  # no header line, or not this one's fields
            return None
        if magic != SNAPSHOT_MAGIC or not end < numbers_at <= len(data):
            return None
        return cls(digests, data, numbers_at)

    def snapshot(self, names: dict[str, list[str]] | None) -> _snapshot.Snapshot | None:
        """The snapshot stored; None when it does not match its digests (a damaged file).
        `names`, when given, are the folder names of the snapshot (the caller knows they
        match the first digest): the stored ones are not parsed again."""
        import hashlib

        view = memoryview(self.data)
        numbers = view[self.numbers_at :]
        if hashlib.sha256(numbers).hexdigest() != self.digests[1]:
            return None
        start = self.data.index(b"\n") + 1
        try:
            text = bytes(view[start : self.numbers_at]).decode()
            snap = _snapshot.Snapshot.unpack(text, numbers, names)
            if names is not None:
                snap.names_digest = self.digests[0]
            # Its own digests match, yet it was not written by `pack_snapshot`.
            folders = sum(len(listed) for listed in snap.names.values())
            if len(snap.numbers) != _snapshot.PER_FOLDER * folders:
                return None
            return snap if snap.digests()[0] == self.digests[0] else None
        except (ValueError, TypeError):  # not JSON, or not lists of names
            return None


def _begin(db: Attached, expect: tuple[str, str] | None) -> duckdb.DuckDBPyConnection:
    """Attach the index read-write and begin the transaction; `StaleIndex` when the index
    does not match the snapshot of `expect`, or cannot be opened (it is rebuilt)."""
    duckdb = _engine.duckdb()

    try:
        con = db.attach(read_only=False)
        con.execute("BEGIN TRANSACTION")
        if expect is None or matches(con, expect):
            return con
    except duckdb.Error:
        if expect is None:
            raise
    raise StaleIndex


def _update_edges(con: duckdb.DuckDBPyConnection, gone: list[str], create: bool) -> None:
    """Recompute the lineage edges of the models whose spec or manifest changed."""
    if create:
        con.execute(_sql.EDGES.format(only=""))
        return
    models = [p for p in gone if p.startswith(f"{MODELS_DIR}/")]
    specs = {p.split("/")[1] for p in models if p.endswith(_snapshot.SPEC)}
    manifests = {p.split("/")[1] for p in models if p.endswith(_snapshot.MANIFEST)} - specs
    if manifests:
        # The edges of a model with a spec naming its source (or none) come from the spec.
        with text_rows(con, "changed_manifests", {"name": sorted(manifests)}):
            declared = con.execute(_sql.DECLARED_BY_SPEC).fetchall()
        manifests.difference_update(name for (name,) in declared)
    names = sorted(specs | manifests)
    if not names:
        return
    with text_rows(con, "touched_models", {"name": names}):
        con.execute("DELETE FROM raw.edges WHERE src IN (SELECT name FROM touched_models)")
        con.execute(_sql.EDGES.format(only=_sql.ONLY_TOUCHED))


def _update_models_view(con: duckdb.DuckDBPyConnection, create: bool) -> None:
    """Recreate `models` when the set of metric names changed (one column per metric)."""
    import json

    # A few distinct lists of names in a stored column: cheaper than unnesting every map.
    lists = con.execute("SELECT DISTINCT metric_keys FROM raw.model_manifests").fetchall()
    keys = sorted({str(k) for (text,) in lists if text for k in json.loads(text)})
    joined = "\n".join(keys)
    rows = con.execute("SELECT value FROM raw.meta WHERE key = 'metric_keys'").fetchall()
    if create or not rows or rows[0][0] != joined:
        con.execute(_sql.models_view(keys))
        con.execute("DELETE FROM raw.meta WHERE key = 'metric_keys'")
        con.execute("INSERT INTO raw.meta VALUES ('metric_keys', ?)", [joined])


def _display(reg: Registry, path: str) -> str:
    return str(PurePosixPath(reg.rel_root, path)) if reg.rel_root not in ("", ".") else path


@dataclass
class _Files:
    """What one pass over the changed files read: specs as canonical JSON, the manifests
    indexed, the dvc.lock files and what those of models record for the weights; `error`,
    that of the first chunk of manifests that could not be indexed."""

    specs: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    locks: list[str] = field(default_factory=list)  # every lock read (or not needed)
    locked: dict[str, str | None] = field(default_factory=dict)  # a model's lock -> its md5
    error: Exception | None = None


def _read_files(reg: Registry, con: duckdb.DuckDBPyConnection, paths: list[str]) -> _Files:
    """Read the specs, manifests and locks of `paths` in one pass, a folder's files together
    (each folder is opened once): specs become canonical JSON, raising the located error of
    the first bad one; manifests are indexed a chunk at a time (`_stage_manifests`). The
    error of a bad manifest is kept, and from then on only specs are read: a bad spec, even
    in a later folder, is reported first, as it was when all specs were read before any
    manifest. A dataset's dvc.lock is not read (nothing reads what it records)."""
    duckdb = _engine.duckdb()

    out = _Files()
    for model, chunk in _file_chunks(paths):
        if out.error is not None:
            chunk = [p for p in chunk if p.endswith(_snapshot.SPEC)]
        elif not model:
            out.locks += [p for p in chunk if p.endswith(_snapshot.LOCK)]
            chunk = [p for p in chunk if not p.endswith(_snapshot.LOCK)]
        manifests: list[tuple[str, str]] = []
        texts = _snapshot.read_texts(reg.root, chunk, reg.rel_root, lenient=_snapshot.LOCK)
        for path, text in zip(chunk, texts, strict=True):
            if text is None:  # vanished since the snapshot
                continue
            if path.endswith(_snapshot.SPEC):
                out.specs.append(path)
                out.texts.append(_specrow.spec_json(_snapshot.display(reg.rel_root, path), text))
            elif path.endswith(_snapshot.LOCK):
                name = path.split("/")[1]
                out.locks.append(path)
                out.locked[path] = locked_md5(text, reg.rel(MODELS_DIR, name, WEIGHTS_FILE))
            else:
                manifests.append((path, text))
        if manifests and out.error is None:
            try:
                _stage_manifests(reg, con, manifests, model)
            except (StemmaError, duckdb.InvalidInputException) as exc:
                out.error = exc
            else:
                out.manifests += [p for p, _t in manifests]
    return out


def _file_chunks(paths: list[str]) -> list[tuple[bool, list[str]]]:
    """(model?, paths) of `paths`, models then datasets, each kind cut in chunks of at most
    CHUNK manifests (the specs of their folders with them), in the order given."""
    chunks: list[tuple[bool, list[str]]] = []
    for kind in KINDS:
        model, prefix = kind == MODELS_DIR, f"{kind}/"
        chunk: list[str] = []
        count = 0
        for path in paths:
            if not path.startswith(prefix):
                continue
            if path.endswith(_snapshot.MANIFEST):
                if count == CHUNK:
                    chunks.append((model, chunk))
                    chunk, count = [], 0
                count += 1
            chunk.append(path)
        if chunk:
            chunks.append((model, chunk))
    return chunks


def _insert_locks(con: duckdb.DuckDBPyConnection, locked: dict[str, str | None]) -> None:
    """Index what model folders' dvc.lock files (path -> md5) record for the weights."""
    if locked:
        paths = list(locked)
        columns = {"name": [p.split("/")[1] for p in paths], "path": paths}
        with text_rows(con, "staged_locks", {**columns, "md5": list(locked.values())}):
            con.execute(_sql.INSERT_LOCKS)


def _stage_specs(con: duckdb.DuckDBPyConnection, paths: list[str], texts: list[str]) -> None:
    """The table `staged_specs` of specs given as canonical JSON (`_sql.STAGE_SPECS`)."""
    picks, values = rows_from({"path": paths, "spec": texts})
    con.execute(_sql.STAGE_SPECS.format(rows=f"SELECT {picks}"), values)


def _flagged_rows(reg: Registry, con: duckdb.DuckDBPyConnection) -> list[_specrow.SpecRow]:
    """The rows of the staged specs that SQL does not index, picked by the Python reference;
    it raises the located error of a spec that cannot be indexed at all."""
    # A field the index needs is missing or of another type: the Python reference picks
    # the fields where it can and raises the located error where it cannot.
    rows = []
    for path, compact in con.execute(_sql.FLAGGED_SPECS).fetchall():
        display = _display(reg, path)
        text = _snapshot.read_text(reg.root, path, 1 << 16, reg.rel_root) or ""
        rows.append(_specrow.spec_row(path, compact, display, text))
    return rows


def _check_specs(
    reg: Registry, con: duckdb.DuckDBPyConnection, paths: list[str], texts: list[str]
) -> None:
    """Raise the located error of the first spec that cannot be indexed, if any."""
    if paths:
        _stage_specs(con, paths, texts)
        _flagged_rows(reg, con)


def _insert_specs(
    reg: Registry, con: duckdb.DuckDBPyConnection, paths: list[str], texts: list[str]
) -> None:
    """Index specs from their canonical JSON."""
    if not paths:
        return
    _stage_specs(con, paths, texts)
    con.execute(_sql.INSERT_MODEL_SPECS)
    con.execute(_sql.INSERT_DATASET_SPECS)
    rows = _flagged_rows(reg, con)
    con.execute("DROP TABLE staged_specs")
    if rows:
        fields = {c: [r[i] for r in rows] for i, c in enumerate(_specrow.SPEC_COLUMNS)}
        with text_rows(con, "spec_fields", fields):
            con.execute(_sql.INSERT_MODEL_SPEC_ROWS)
            con.execute(_sql.INSERT_DATASET_SPEC_ROWS)


def _stage_manifests(
    reg: Registry, con: duckdb.DuckDBPyConnection, files: list[tuple[str, str]], model: bool
) -> None:
    """Index manifests given as (path, text)."""
    duckdb = _engine.duckdb()

    shape = _sql.MODEL_MANIFEST_SHAPE if model else _sql.DATASET_MANIFEST_SHAPE
    bad = _sql.MODEL_MANIFEST_BAD if model else _sql.DATASET_MANIFEST_BAD
    picks, values = rows_from({"path": [p for p, _t in files], "content": [t for _p, t in files]})
    try:  # parsed as they come from the parameters: no table of the texts
        con.execute(
            "CREATE OR REPLACE TEMP TABLE staged AS SELECT path,"
            " split_part(path, '/', 2) AS name,"
            f" from_json(content, {_sql.quote_literal(shape)}) AS j FROM (SELECT {picks})",
            values,
        )
    except duckdb.InvalidInputException:
        _raise_first_error(reg, files, model)
        raise
    wrong = con.execute(f"SELECT path FROM staged WHERE {bad} ORDER BY path LIMIT 1").fetchall()
    if wrong:
        _raise_first_error(reg, [f for f in files if f[0] == wrong[0][0]], model)
    if model:
        con.execute(_sql.INSERT_MODEL_MANIFESTS)
        con.execute(_sql.INSERT_LAYERS)
        _other_weights_md5(con, files)
    else:
        con.execute(_sql.INSERT_DATASET_MANIFESTS)
    con.execute("DROP TABLE staged")


def _other_weights_md5(con: duckdb.DuckDBPyConnection, files: list[tuple[str, str]]) -> None:
    """Set the recorded weights md5 that SQL leaves to `recorded_md5` (`_sql.OTHER_WEIGHTS_MD5`:
    a sharded model's, one that is not text) from the staged manifests' texts."""
    import json

    paths = [p for (p,) in con.execute(_sql.OTHER_WEIGHTS_MD5).fetchall()]
    if not paths:
        return
    texts = dict(files)
    md5s = []
    for path in paths:
        doc = json.loads(texts[path])
        md5s.append(recorded_md5(doc.get("weights") if isinstance(doc, dict) else None))
    with text_rows(con, "weights_md5s", {"path": paths, "md5": md5s}):
        con.execute(_sql.SET_WEIGHTS_MD5)


def _raise_first_error(reg: Registry, files: list[tuple[str, str]], model: bool) -> None:
    """Raise the located error (file, line or JSON pointer) of the first bad manifest."""
    for path, text in files:  # syntax first: cheap, and what makes DuckDB reject a whole chunk
        parse_json_text(text, _display(reg, path))
    schema = MODEL_MANIFEST if model else DATASET_MANIFEST
    for path, text in files:
        parse_json_document(text, schema, _display(reg, path))
    if len(files) == 1:
        raise SchemaError(
            _display(reg, files[0][0]),
            "cannot index this manifest: a field has an unexpected type",
        )
