"""The lineage graph: models, datasets and (optionally) versions as a networkx MultiDiGraph.

Nodes are keyed `model:NAME`, `dataset:NAME` and, with history, `model:NAME@ID`. Every edge
points from the dependent to what it depends on, the way a build reads them:

- `derived_from`: model -> its source model (attrs `relation`, `source_id`, `auto`);
- `trained_on`:   model -> its training dataset;
- `evaluated_on`: model -> its evaluation dataset (attr `roles`: eval, forgetting, drift);
- `previous`:     version -> the version before it (and `model:NAME` -> its newest version).

The graph is built from the specs, so unbuilt models appear, and enriched with manifests
(ids, status, metrics). A spec that cannot be read still gets a node (status `invalid`) and a
source that is not declared gets one too (status `missing`), so broken states can be drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import networkx as nx
from stemma.registry import Registry
from stemma.registry.errors import StemmaError
from stemma.registry.files import digest, parse_json_text
from stemma.registry.registry import MANIFEST_FILE, SPEC_FILE
from stemma.registry.yamlio import load_yaml_text

DERIVED_FROM = "derived_from"
TRAINED_ON = "trained_on"
EVALUATED_ON = "evaluated_on"
PREVIOUS = "previous"
EDGE_KINDS = (DERIVED_FROM, TRAINED_ON, EVALUATED_ON, PREVIOUS)


def model_node(name: str) -> str:
    """Node key of a model."""
    return f"model:{name}"


def dataset_node(name: str) -> str:
    """Node key of a dataset."""
    return f"dataset:{name}"


def version_node(name: str, manifest_id: str) -> str:
    """Node key of one version (manifest id) of a model."""
    return f"model:{name}@{manifest_id}"


def split_node(key: str) -> tuple[str, str]:
    """(kind, name) of a node key; versions keep their `@ID` in the name."""
    kind, _, name = key.partition(":")
    return kind, name


@dataclass(frozen=True)
class ModelRecord:
    """What the graph needs to know about one declared model."""

    name: str
    source: str | None = None
    relation: str | None = None
    source_id: str | None = None
    train: str | None = None
    eval: str | None = None
    checks: tuple[str, ...] = ()  # datasets of forgetting / drift checks
    id: str | None = None
    status: str = "unbuilt"
    auto: bool = False
    candidates: tuple[str, ...] = ()  # models an exploration considers (source: auto)
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetRecord:
    """What the graph needs to know about one declared dataset."""

    name: str
    id: str | None = None
    status: str = "unbuilt"


def read_records(reg: Registry) -> tuple[list[ModelRecord], list[DatasetRecord]]:
    """Records for every declared model and dataset; never raises for a bad file.

    Documents are parsed but not validated against their schemas: the graph needs a handful
    of fields, and validating every manifest costs far more than reading it (`stemma
    validate` and the audit report schema errors). A document that cannot be parsed, or
    lacks the fields the graph needs, gives a node with status `invalid`.
    """
    prefetch_documents(reg)
    dnames, mnames = reg.dataset_names(), reg.model_names()
    datasets = []
    for name in dnames:
        dspec = _doc(reg, "datasets", name, SPEC_FILE)
        dm = _doc(reg, "datasets", name, MANIFEST_FILE)
        mid = _str(dm, "id")
        if dspec is None:
            status = "invalid"
        elif dm is None:
            status = "unbuilt"
        else:
            status = "built" if dm.get("spec_digest") == digest(dspec) else "stale"
        datasets.append(DatasetRecord(name, mid, status))
    specs = {name: _doc(reg, "models", name, SPEC_FILE) for name in mnames}
    manifests = {name: _doc(reg, "models", name, MANIFEST_FILE) for name in mnames}
    models = [_model_record(reg, name, specs[name], manifests) for name in mnames]
    return models, datasets


def prefetch_documents(reg: Registry, extra: Iterable[str] = ()) -> None:
    """Read every spec and manifest of a git revision (and `extra` repo-relative files) with
    one git process; a no-op on the working tree. Without it each file read at a revision,
    listing the names included, costs a git process of its own."""
    tree: Any = reg.tree
    inner = getattr(tree, "inner", None)  # a registry below the repository's top folder
    target = inner if inner is not None else tree
    if not hasattr(target, "prefetch"):
        return
    paths = list(extra)
    for kind in ("models", "datasets"):
        for name in tree.subdirs(reg.rel(kind)):
            paths += [reg.rel(kind, name, SPEC_FILE), reg.rel(kind, name, MANIFEST_FILE)]
    if inner is not None:
        paths = [str(PurePosixPath(tree.prefix, p)) for p in paths]
    target.prefetch(paths)


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
    train = _str(spec, "data", "train")
    if spec is None or train is None:
        return ModelRecord(name, id=mid, status="invalid", metrics=metrics)
    source = _str(spec, "source", "model")
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
    source_id = _str(manifest, "source", "id")
    status = "unbuilt"
    if manifest is not None:
        status = "built"
        if manifest.get("spec_digest") != digest(spec):
            status = "stale"
        elif source is not None and not auto:
            parent_id = _str(manifests.get(source), "id")
            if parent_id is not None and parent_id != source_id:
                status = "stale"
    return ModelRecord(
        name,
        source,
        relation,
        source_id,
        train,
        _str(spec, "data", "eval") or train,
        checks,
        mid,
        status,
        auto,
        candidates,
        metrics,
    )


def _candidates(reg: Registry, name: str) -> list[str]:
    from stemma.registry.pipeline import candidates

    try:
        return candidates(reg, name, reg.model_spec(name))
    except StemmaError:
        return []


def graph_from_records(
    models: Iterable[ModelRecord], datasets: Iterable[DatasetRecord]
) -> nx.MultiDiGraph:
    """The lineage graph of the given records (no I/O: usable on synthetic records)."""
    g = nx.MultiDiGraph()
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
        if m.source is not None:
            parent = model_node(m.source)
            if parent not in g:
                g.add_node(
                    parent,
                    kind="model",
                    name=m.source,
                    id=None,
                    status="missing",
                    relation=None,
                    auto=False,
                    candidates=[],
                    metrics={},
                )
            g.add_edge(
                node,
                parent,
                key=DERIVED_FROM,
                relation=m.relation,
                source_id=m.source_id,
                auto=m.auto,
            )
        if m.train is not None:
            _dataset_edge(g, node, m.train, TRAINED_ON, "train")
        roles = {} if m.eval is None else {m.eval: ["eval"]}
        for check in m.checks:
            roles.setdefault(check, []).append("check")
        for ds, rs in sorted(roles.items()):
            _dataset_edge(g, node, ds, EVALUATED_ON, ",".join(rs))
    return g


def _dataset_edge(g: nx.MultiDiGraph, node: str, name: str, key: str, roles: str) -> None:
    target = dataset_node(name)
    if target not in g:
        g.add_node(target, kind="dataset", name=name, id=None, status="missing")
    g.add_edge(node, target, key=key, roles=roles)


def build_graph(reg: Registry, history: bool = False) -> nx.MultiDiGraph:
    """The lineage graph of a registry (working tree or any git revision).

    With `history`, every recorded version of each model is added as `model:NAME@ID`, linked
    by `previous` edges (newest to oldest, and from `model:NAME` to its newest version) and by
    `derived_from` edges to the source version it was built from when that version is known.
    """
    models, datasets = read_records(reg)
    g = graph_from_records(models, datasets)
    if history:
        _add_history(reg, g, [m.name for m in models])
    return g


def _add_history(reg: Registry, g: nx.MultiDiGraph, names: list[str]) -> None:
    from stemma.registry import versions

    by_model: dict[str, list[Any]] = {}
    for v in versions.all_history(reg):  # one git log for every model, newest first
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
