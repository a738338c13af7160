"""The lineage graph: models, datasets and (optionally) versions as a networkx MultiDiGraph.

Nodes are keyed `model:NAME`, `dataset:NAME` and, with history, `model:NAME@ID`. Every edge
points from the dependent to what it depends on, the way a build reads them:

- `derived_from`: model -> its source model (attrs `relation`, `source_id`, `auto`);
- `trained_on`:   model -> its training dataset;
- `evaluated_on`: model -> its evaluation dataset (attr `roles`: eval, forgetting, drift);
- `previous`:     version -> the version before it (and `model:NAME` -> its newest version).

The graph is built from the specs, so unbuilt models appear, and enriched with manifests
(ids, status, metrics; statuses as `stemma.registry.rules.status` decides them). A spec that cannot
be read still gets a node (status `invalid`) and a source that is not declared gets one too
(status `missing`), so broken states can be drawn.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stemma.registry import Registry
from stemma.registry.errors import ConsistencyError, LocatedError, StemmaError
from stemma.registry.pipeline.autosource import candidates
from stemma.registry.pipeline.locks import folder_locked_md5
from stemma.registry.rules import status
from stemma.registry.rules.dag import Forest
from stemma.registry.rules.layout import LOCK_FILE, MANIFEST_FILE, SPEC_FILE
from stemma.registry.rules.parents import parents_of, recorded_parents
from stemma.registry.store.files import digest, parse_json_text
from stemma.registry.store.index import open_index
from stemma.registry.store.tree import WorkTree, prefetch
from stemma.registry.store.yamlio import load_yaml_text
from stemma.registry.versions.history import all_history

from .nodes import (
    DERIVED_FROM,
    EDGE_KINDS,
    EVALUATED_ON,
    PREVIOUS,
    TRAINED_ON,
    DatasetRecord,
    ModelRecord,
    dataset_node,
    model_node,
    new_graph,
    split_node,
    version_node,
)
from .query import LineageIndex, remember_index

if TYPE_CHECKING:
    import networkx as nx


def read_records(reg: Registry) -> tuple[list[ModelRecord], list[DatasetRecord]]:
    """Records for every declared model and dataset; never raises for a bad file.

    On the working tree they come from the query index, which re-reads only the files that
    changed; where the index cannot take a file (a bad spec or manifest), or at a git
    revision, from the files.

    Documents are parsed but not validated against their schemas: the graph needs a handful
    of fields, and validating every manifest costs far more than reading it (`stemma
    validate` and the audit report schema errors). A document that cannot be parsed, or
    lacks the fields the graph needs, gives a node with status `invalid`.
    """
    if isinstance(reg.tree, WorkTree):
        try:
            return _indexed_records(reg)
        except StemmaError:
            pass  # a file the index cannot take: the files say what is wrong with it
    return _file_records(reg)


_MODELS_SQL = """
SELECT m.name, m.source, CASE WHEN s.source = 'auto' THEN s.relation ELSE m.relation END,
       m.source_id, m.train, m.eval, s.checks, m.id, m.status,
       s.source = 'auto', s.candidates, to_json(m.metrics),
       CASE WHEN s.name IS NULL OR s.source = 'auto' THEN mm.parents ELSE s.parents END
FROM models m LEFT JOIN raw.model_specs s ON s.name = m.name
LEFT JOIN raw.model_manifests mm ON mm.name = m.name ORDER BY m.name"""
_DATASETS_SQL = "SELECT name, id, status FROM datasets ORDER BY name"


def _indexed_records(reg: Registry) -> tuple[list[ModelRecord], list[DatasetRecord]]:
    """The records of the working tree, from the query index."""
    models: list[ModelRecord] = []
    shared: dict[Any, Any] = {}  # the values many rows repeat, once each
    with open_index(reg) as index:
        con = index.con
        datasets = [DatasetRecord(*row) for row in con.execute(_DATASETS_SQL).fetchall()]
        exploring = con.execute(_EXPLORING_SQL).fetchall()[0][0]
        found = con.execute(_MODELS_SQL)
        if exploring:  # the candidates of an exploration are read from every row
            rows = found.fetchall()
            _add_records(models, rows, shared, rows)
        else:  # a block of rows at a time: ~30 MiB less at 30,000 models than all at once
            while rows := found.fetchmany(_BLOCK):
                _add_records(models, rows, shared)
    return models, datasets


_EXPLORING_SQL = "SELECT count(*) FROM raw.model_specs WHERE source = 'auto'"
_BLOCK = 4096


def _add_records(
    models: list[ModelRecord],
    rows: list[Any],
    shared: dict[Any, Any],
    every: Sequence[Any] = (),
) -> None:
    """Append the records of `rows` of `_MODELS_SQL` to `models`; `shared`: the values the
    rows repeat, kept once across blocks; `every`: all the rows, which an exploring model's
    candidates are chosen from (none when no model explores)."""
    names = [row[0] for row in every]
    # The sources specs declare (an exploration's pick is not one): what a candidate of an
    # exploration must not descend from, as `pipeline.candidates` decides.
    forest = (
        Forest.of(names, {row[0]: list(row[12]) for row in every if row[12] and not row[9]})
        if any(row[9] for row in every)
        else None
    )
    # One decode of every model's metrics: far cheaper than one json.loads per row, or
    # DuckDB's MAP values turned into dicts.
    metrics = json.loads("[" + ",".join(row[11] or "null" for row in rows) + "]")
    # A value many rows repeat (a source, a relation, a dataset, a status) is kept once:
    # each row's is a string of its own (at 30,000 models, ~8 MiB of copies).
    once: Callable[[Any, Any], Any] = shared.setdefault
    for row, scores in zip(rows, metrics, strict=True):
        name, source, relation, source_id, train, eval_, checks, mid, state, auto, glob = row[:11]
        source, relation, train, eval_, state = (
            once(source, source),
            once(relation, relation),
            once(train, train),
            once(eval_, eval_),
            once(state, state),
        )
        checks = once(tuple(checks or ()), tuple(checks or ()))
        more = tuple(row[12][1:]) if row[12] else ()
        candidates: tuple[str, ...] = ()
        if auto:
            assert forest is not None
            banned = {name, *forest.descendants(name)}
            candidates = tuple(
                n for n in names if fnmatch.fnmatch(n, glob or "*") and n not in banned
            )
        models.append(
            ModelRecord(
                name,
                source,
                relation,
                source_id,
                train,
                eval_,
                checks,
                mid,
                state,
                bool(auto),
                candidates,
                scores or {},
                more,
            )
        )


def _file_records(reg: Registry) -> tuple[list[ModelRecord], list[DatasetRecord]]:
    """The records read from the files (any tree, broken files included)."""
    prefetch_documents(reg)
    dnames, mnames = reg.dataset_names(), reg.model_names()
    datasets = [
        _dataset_record(name, lambda kind, n, file: _doc(reg, kind, n, file)) for name in dnames
    ]
    specs = {name: _doc(reg, "models", name, SPEC_FILE) for name in mnames}
    manifests = {name: _doc(reg, "models", name, MANIFEST_FILE) for name in mnames}
    ids = _dataset_ids(dnames, lambda kind, n, file: _doc(reg, kind, n, file))
    models = [_model_record(reg, name, specs[name], manifests, ids) for name in mnames]
    return models, datasets


def _dataset_ids(
    names: Iterable[str], doc: Callable[[str, str, str], dict[str, Any] | None]
) -> Callable[[str], str | None]:
    """A dataset's manifest id now, read when first asked for (None when it has none or is
    not declared): what `status.staleness` compares a model's recorded dataset ids with."""
    known = set(names)
    seen: dict[str, str | None] = {}

    def current(name: str) -> str | None:
        if name not in known:
            return None
        if name not in seen:
            seen[name] = _str(doc("datasets", name, MANIFEST_FILE), "id")
        return seen[name]

    return current


def prefetch_documents(reg: Registry, extra: Iterable[str] = ()) -> None:
    """Read every spec and manifest of a git revision (and `extra` repo-relative files) with
    one git process; a no-op on the working tree. Without it each file read at a revision,
    listing the names included, costs a git process of its own."""
    if not hasattr(getattr(reg.tree, "inner", reg.tree), "prefetch"):
        return  # the working tree: listing the folders would be wasted
    paths = list(extra)
    for kind in ("models", "datasets"):
        for name in reg.tree.subdirs(reg.rel(kind)):
            paths += [reg.rel(kind, name, SPEC_FILE), reg.rel(kind, name, MANIFEST_FILE)]
            if kind == "models":  # the status rule's lock case reads it
                paths.append(reg.rel(kind, name, LOCK_FILE))
    prefetch(reg.tree, paths)


def partial_graph(
    reg: Registry,
    models: Iterable[str],
    datasets: Iterable[str],
    read: Callable[[str, str, str], dict[str, Any] | None] | None = None,
) -> nx.MultiDiGraph:
    """The nodes of `models` and `datasets` and the edges of those models, as `build_graph`
    makes them from the files, reading only what they need: their own documents and their
    sources' manifests. `read(kind, name, file)` reads a document as `read_document` does."""
    doc = read or (lambda kind, name, file: read_document(reg, kind, name, file))
    records = [_dataset_record(name, doc) for name in datasets]
    manifests = LazyDocs(reg.model_names(), lambda name: doc("models", name, MANIFEST_FILE))
    ids = _dataset_ids(reg.dataset_names(), doc)
    chosen = [
        _model_record(reg, name, doc("models", name, SPEC_FILE), manifests, ids) for name in models
    ]
    return graph_from_records(chosen, records)


def _dataset_record(
    name: str, doc: Callable[[str, str, str], dict[str, Any] | None]
) -> DatasetRecord:
    dspec = doc("datasets", name, SPEC_FILE)
    dm = doc("datasets", name, MANIFEST_FILE)
    built = status.Built.of(dm) if dm is not None else None
    state = status.gather(digest(dspec) if dspec is not None else None, built).status()
    return DatasetRecord(name, _str(dm, "id"), state)


class LazyDocs(Mapping[str, Any]):
    """A mapping with known keys whose values are loaded when first asked for."""

    def __init__(self, keys: Iterable[str], load: Callable[[str], Any]) -> None:
        # One dict for the keys' order and for asking about one: a list beside a set held
        # twice the memory (an audit keeps six of these: at 30,000 models, ~6 MiB more).
        self._known: dict[str, None] = dict.fromkeys(keys)
        self._load = load
        self._docs: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._known:
            raise KeyError(key)
        if key not in self._docs:
            self._docs[key] = self._load(key)
        return self._docs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, key: object) -> bool:
        return key in self._known


def read_document(reg: Registry, kind: str, name: str, filename: str) -> dict[str, Any] | None:
    """A spec or manifest as the graph reads it: None when absent, {} when unreadable."""
    return _doc(reg, kind, name, filename)


def _doc(reg: Registry, kind: str, name: str, filename: str) -> dict[str, Any] | None:
    text = reg.tree.read_text(reg.rel(kind, name, filename))
    if text is None:
        return None
    try:
        doc = (
            load_yaml_text(text, filename)
            if filename == SPEC_FILE
            else parse_json_text(text, filename)
        )
    except StemmaError:
        return {}  # present but unreadable: not None, which means absent
    return doc if isinstance(doc, dict) else {}


def _str(doc: Mapping[str, Any] | None, *path: str) -> str | None:
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, str) else None


def _model_record(
    reg: Registry,
    name: str,
    spec: dict[str, Any] | None,
    manifests: Mapping[str, dict[str, Any] | None],
    dataset_ids: Callable[[str], str | None],
) -> ModelRecord:
    manifest = manifests.get(name)
    mid = _str(manifest, "id")
    raw_metrics = manifest.get("metrics") if manifest else None
    metrics = (
        {
            str(k): float(v)
            for k, v in (raw_metrics or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if isinstance(raw_metrics, dict)
        else {}
    )
    if spec is None:  # a manifest and no spec: weights imported by `stemma register`
        source = _str(manifest, "source", "model")
        recorded = [p for p, _ in recorded_parents(manifest or {})]
        return ModelRecord(
            name,
            source,
            (_str(manifest, "source", "relation") or "finetune") if source else None,
            _str(manifest, "source", "id"),
            _str(manifest, "datasets", "train", "name"),
            _str(manifest, "datasets", "eval", "name"),
            id=mid,
            status=status.REGISTERED,
            metrics=metrics,
            more=tuple(recorded[1:]),
        )
    train = _str(spec, "data", "train")
    if train is None:
        return ModelRecord(name, id=mid, status=status.INVALID, metrics=metrics)
    named = parents_of(spec)  # the one rule: a merge has several
    source = _str(spec, "source", "model") or (named[0] if named else None)
    relation = (_str(spec, "source", "relation") or "finetune") if source else None
    auto = source == "auto"
    candidates: tuple[str, ...] = ()
    if auto:
        # The exploration's pick is only known once built: it is in the manifest.
        source = _str(manifest, "source", "model")
        candidates = tuple(_candidates(reg, name))
    checks = tuple(
        ds for check in ("forgetting", "drift") if (ds := _str(spec, "checks", check, "data"))
    )
    built = status.Built.of(manifest) if manifest is not None else None
    source_id = built.source_id if built is not None else None
    state = status.gather(
        digest(spec),
        built,
        named,  # none for `model: auto`: the exploration's pick is not judged
        lambda parent: _str(manifests.get(parent), "id"),
        dataset_ids,
        folder_locked_md5(reg, name) if built is not None else None,
    ).status()
    return ModelRecord(
        name,
        source,
        relation,
        source_id,
        train,
        _str(spec, "data", "eval") or train,
        checks,
        mid,
        state,
        auto,
        candidates,
        metrics,
        named[1:],
    )


def _candidates(reg: Registry, name: str) -> list[str]:
    try:
        return candidates(reg, name, reg.model_spec(name))
    except StemmaError:
        return []


def graph_from_records(
    models: Iterable[ModelRecord], datasets: Iterable[DatasetRecord]
) -> nx.MultiDiGraph:
    """The lineage graph of the given records (no I/O: usable on synthetic records)."""
    g = new_graph()
    for d in datasets:
        g.add_node(dataset_node(d.name), kind="dataset", name=d.name, id=d.id, status=d.status)
    models = list(models)
    for m in models:
        g.add_node(
            model_node(m.name),
            kind="model",
            name=m.name,
            id=m.id,
            status=m.status,
            relation=m.relation,
            auto=m.auto,
            candidates=list(m.candidates),
            metrics=dict(m.metrics),
        )
    for m in models:
        node = model_node(m.name)
        for target, key, attrs in record_edges(m):
            if target not in g:  # not declared: a node that says so
                name = split_node(target)[1]
                if key == DERIVED_FROM:
                    g.add_node(
                        target,
                        kind="model",
                        name=name,
                        id=None,
                        status=status.MISSING,
                        relation=None,
                        auto=False,
                        candidates=[],
                        metrics={},
                    )
                else:
                    g.add_node(target, kind="dataset", name=name, id=None, status=status.MISSING)
            g.add_edge(node, target, key=key, **attrs)
    return g


def record_edges(m: ModelRecord) -> list[tuple[str, str, dict[str, Any]]]:
    """The edges of model `m`'s node, in the order the graph adds them: (target node, edge
    key, attributes); a `derived_from` edge to each parent, a `trained_on` edge to the
    training dataset and one `evaluated_on` edge to each other dataset it is evaluated or
    checked on (its roles joined)."""
    edges: list[tuple[str, str, dict[str, Any]]] = []
    for up in [m.source, *m.more] if m.source is not None else []:
        attrs = {"relation": m.relation, "source_id": m.source_id, "auto": m.auto}
        edges.append((model_node(up), DERIVED_FROM, attrs))
    if m.train is not None:
        edges.append((dataset_node(m.train), TRAINED_ON, {"roles": "train"}))
    roles = {} if m.eval is None else {m.eval: ["eval"]}
    for check in m.checks:
        roles.setdefault(check, []).append("check")
    for ds, rs in sorted(roles.items()):
        edges.append((dataset_node(ds), EVALUATED_ON, {"roles": ",".join(rs)}))
    return edges


def build_graph(
    reg: Registry,
    history: bool = False,
    whole: bool = False,
    records: tuple[list[ModelRecord], list[DatasetRecord]] | None = None,
) -> nx.MultiDiGraph:
    """The lineage graph of a registry (working tree or any git revision); `records`: its
    `read_records`, when already read.

    With `whole`, a registry with an entry the graph cannot place (an unreadable spec, a
    source or dataset that is not declared) is refused (`require_whole`) instead of drawn
    without it. With `history`, every recorded version of each model is added as
    `model:NAME@ID`, linked by `previous` edges (newest to oldest, and from `model:NAME` to its
    newest version) and by `derived_from` edges to the source version it was built from when
    that version is known.
    """
    models, datasets = records if records is not None else read_records(reg)
    return _graph_of(reg, models, datasets, history, whole)


def _graph_of(
    reg: Registry,
    models: list[ModelRecord],
    datasets: list[DatasetRecord],
    history: bool = False,
    whole: bool = False,
) -> nx.MultiDiGraph:
    """`build_graph` from records already read."""
    g = graph_from_records(models, datasets)
    if whole:
        require_whole(reg, g)
    external = add_external(reg, g, [m.name for m in models if m.status == status.REGISTERED])
    if history:
        _add_history(reg, g, [m.name for m in models])
    elif not external:  # from the records: cheaper than reading the graph back
        remember_index(g, LineageIndex.from_records(models, datasets))
    return g


EXTERNAL = "external"
"""Status of a node that stands for a model on the Hugging Face Hub (never fetched)."""


def hub_node_name(hub_id: str) -> str:
    """The name of the external node of a Hub model id (`hub:ORG/NAME`), as `edges` shows it."""
    return f"hub:{hub_id}"


def add_external(reg: Registry, g: nx.MultiDiGraph, registered: Iterable[str]) -> int:
    """Add the Hub parents that registered models' cards name (`external_sources` in their
    recorded spec) as `model:hub:ID` nodes with status `external` and `derived_from` edges;
    the number of edges added. Only registered models have them: read their manifests."""
    added = 0
    for name in registered:
        doc = read_document(reg, "models", name, MANIFEST_FILE) or {}
        spec = doc.get("spec")
        found = spec.get("external_sources") if isinstance(spec, dict) else None
        for entry in found if isinstance(found, list) else []:
            hub = _str(entry, "hub_id")
            if hub is None:
                continue
            node, label = model_node(hub_node_name(hub)), hub_node_name(hub)
            if node not in g:
                g.add_node(
                    node,
                    kind="model",
                    name=label,
                    id=None,
                    status=EXTERNAL,
                    relation=None,
                    auto=False,
                    candidates=[],
                    metrics={},
                    hub_id=hub,
                )
            relation = _str(entry, "relation") or "finetune"
            g.add_edge(
                model_node(name),
                node,
                key=DERIVED_FROM,
                relation=relation,
                source_id=None,
                auto=False,
            )
            added += 1
    return added


# The pointer of a dataset reference, by the role its edge records (`graph_from_records`).
_ROLE_POINTERS = {"train": "/data/train", "eval": "/data/eval", "check": "/checks"}
_EDGE_ORDER = {kind: i for i, kind in enumerate(EDGE_KINDS)}


def broken_entries(reg: Registry, g: nx.MultiDiGraph) -> list[LocatedError]:
    """What keeps the graph from being whole, one located error per file, sorted: a spec that
    cannot be read (with the reader's own error: its line, merge conflict markers, ...) and
    a reference to a model or dataset that is not declared (with the closest name)."""
    found: dict[tuple[str, str], LocatedError] = {}
    for key, attrs in g.nodes(data=True):
        state, name = attrs.get("status"), str(attrs.get("name"))
        if state == status.INVALID and attrs.get("kind") == "model":
            error = _spec_error(reg, name)
            found[(error.path, key)] = error
        elif state == status.MISSING:
            # listed only here: listing the models stats every folder's spec
            names = reg.model_names() if attrs.get("kind") == "model" else reg.dataset_names()
            hint = Registry._hint(name, names)
            edges = sorted(g.in_edges(key, keys=True, data=True), key=lambda e: _EDGE_ORDER[e[2]])
            for dependent, _, kind, edge in edges:
                owner = g.nodes[dependent]
                if kind == DERIVED_FROM:
                    # a registered model's source, or an exploration's pick, is its manifest's
                    own = owner.get("status") == status.REGISTERED or owner.get("auto")
                    path = reg.rel("models", owner["name"], MANIFEST_FILE if own else SPEC_FILE)
                    pointer, what = "/source/model", "source model"
                else:
                    path = reg.rel("models", owner["name"], SPEC_FILE)
                    role = str(edge.get("roles", "")).split(",")[0]
                    pointer, what = _ROLE_POINTERS.get(role, "/data"), "dataset"
                if (path, key) not in found:  # a dataset used for training and evaluation
                    error = LocatedError(path, f"{what} {name!r} does not exist{hint}", pointer)
                    found[(path, key)] = error
    return sorted(found.values(), key=lambda e: (e.path, e.pointer))


def _spec_error(reg: Registry, name: str) -> LocatedError:
    """Why model `name`'s spec gives no record: the error its reader raises."""
    path = reg.rel("models", name, SPEC_FILE)
    try:
        reg.model_spec(name)
    except LocatedError as exc:
        return exc
    except StemmaError as exc:
        return LocatedError(path, exc.message)
    return LocatedError(path, "names no training dataset", "/data/train")


def require_whole(reg: Registry, g: nx.MultiDiGraph) -> None:
    """Raise for the first of `broken_entries` (naming how many more there are): a lineage
    answer must not leave out what it cannot read."""
    broken = broken_entries(reg, g)
    if not broken:
        return
    first = broken[0]
    more = f" (and {len(broken) - 1} more unreadable or dangling entries)" if broken[1:] else ""
    raise ConsistencyError(
        f"{first.message}{more}; lineage cannot place this entry: fix it, or run"
        " `stemma validate` for every problem"
    )


def _add_history(reg: Registry, g: nx.MultiDiGraph, names: list[str]) -> None:
    by_model: dict[str, list[Any]] = {}
    for v in all_history(reg):  # one git log for every model, newest first
        by_model.setdefault(v.name, []).append(v)
    links: list[tuple[str, str]] = []
    for name in names:
        newer = model_node(name)
        for v in by_model.get(name, []):
            node = version_node(name, v.id)
            if node in g:
                continue
            g.add_node(
                node,
                kind="version",
                name=name,
                id=v.id,
                status="version",
                commit=v.commit,
                date=str(v.date),
                author=v.author,
                metrics=dict(v.metrics or {}),
            )
            g.add_edge(newer, node, key=PREVIOUS)
            newer = node
            if v.source_id:
                links.append((node, v.source_id))
    by_id = {attrs["id"]: n for n, attrs in g.nodes(data=True) if attrs.get("kind") == "version"}
    for node, source_id in links:
        if source_id in by_id:
            # The relation of an old version is not recorded in its history entry.
            g.add_edge(
                node,
                by_id[source_id],
                key=DERIVED_FROM,
                relation=None,
                source_id=source_id,
                auto=False,
            )


def node_attrs(g: nx.MultiDiGraph, key: str) -> dict[str, Any]:
    """The attributes of a node (a copy)."""
    return dict(g.nodes[key])


def build_graph_near(
    reg: Registry,
    near: Registry,
    same: Callable[[str], bool],
    near_records: tuple[list[ModelRecord], list[DatasetRecord]] | None = None,
) -> nx.MultiDiGraph:
    """`build_graph(reg)` for a registry at a git revision, from `records_near`: nodes and
    edges come in the same order. `near_records`: `read_records(near)`, when already read."""
    return _graph_of(reg, *records_near(reg, near, same, near_records))


def records_near(
    reg: Registry,
    near: Registry,
    same: Callable[[str], bool],
    near_records: tuple[list[ModelRecord], list[DatasetRecord]] | None = None,
) -> tuple[list[ModelRecord], list[DatasetRecord]]:
    """`read_records(reg)` for a registry at a git revision, taking the records of `near`
    (the working tree, whose query index answers without parsing) for every model whose
    record reads only files `same` finds identical in both: its spec, manifest and dvc.lock
    and its parents' manifests. The others are read from `reg`'s files, as `read_records`
    reads them, in the same order. A change to any dataset file, or an exploring model (its
    candidates read every spec), is read from `reg` as a whole. `near_records`:
    `read_records(near)`, when already read."""
    names, dnames = reg.model_names(), reg.dataset_names()
    if dnames != near.dataset_names() or not all(
        same(reg.rel("datasets", n, f)) for n in dnames for f in (SPEC_FILE, MANIFEST_FILE)
    ):
        return read_records(reg)
    near_models, near_datasets = near_records if near_records is not None else read_records(near)
    have = {m.name: m for m in near_models}
    if any(m.auto for m in near_models):
        return read_records(reg)
    by_dataset = {d.name: d for d in near_datasets}
    if set(by_dataset) != set(dnames):
        return read_records(reg)

    def doc(kind: str, name: str, file: str) -> dict[str, Any] | None:
        return _doc(reg, kind, name, file)

    def own(name: str, file: str) -> bool:
        return same(reg.rel("models", name, file))

    manifests = LazyDocs(names, lambda name: doc("models", name, MANIFEST_FILE))
    ids = _dataset_ids(dnames, doc)
    models = []
    for name in names:
        known = have.get(name)
        parents = [known.source, *known.more] if known and known.source is not None else []
        if (
            known is not None
            and own(name, SPEC_FILE)
            and own(name, MANIFEST_FILE)
            and own(name, LOCK_FILE)  # the status rule's lock case reads it
            and all(own(p, MANIFEST_FILE) for p in parents)
        ):
            models.append(known)
            continue
        spec = doc("models", name, SPEC_FILE)
        record = _model_record(reg, name, spec, manifests, ids)
        if record.auto:
            return read_records(reg)
        models.append(record)
    return models, [by_dataset[n] for n in dnames]
