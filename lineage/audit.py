"""The review audit: compare two states of a registry read straight from git.

`audit(repo, base, head)` reads the registry at `base` and at `head` (the working tree when
None) and reports what changed (models and datasets added, removed, re-parented; spec changes
field by field; rebuilt manifests and metric deltas) and every violation at head.

Violations. Each has a stable code. Those that judge one state are computed for both states:
every code of `stemma.registry.check.consistency` (schema, dangling references, cycles, stale
manifests, failed gates, ...) plus

- `lock-mismatch`: a model manifest's weights md5 differs from the md5 that dvc.lock records
  for models/NAME/weights.safetensors (the weights were not produced by the locked run);
- `pipeline-out-of-sync`: dvc.yaml differs from what `stemma pipeline` renders from the specs.

Those that judge the change itself exist only at head:

- `tagged-version-changed`: a model whose manifest at base is a tagged version (a version or
  stage tag carries its id) has a different manifest at head although its build inputs (spec
  digest, source id, dataset ids) are unchanged. A retrain after a spec or source change is a
  new version and is fine; rewriting a released version in place (a hand edit, a re-run that
  overwrote its weights or metrics) is not: the tag would name content nobody can rebuild;
- `new-entrypoint`: an entrypoint added to stemma.yaml, a spec that starts running an
  entrypoint or switches to another, or a change to the source file of an entrypoint in use:
  code that builds will run, to be read by a reviewer;
- `removed-with-descendants`: a model removed while models still derive from it, or a
  dataset removed while models still use it.

The command fails on every violation present at head, so a merged head is always valid; each
is marked `new` when the base did not have it (a check that went from pass to fail in this
change) or pre-existing otherwise, so a reviewer sees what the change introduced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stemma.registry import Registry
from stemma.registry.errors import RegistryNotFound
from stemma.registry.rules import status
from stemma.registry.rules.layout import LOCK_FILE, MANIFEST_FILE, SPEC_FILE
from stemma.registry.rules.pointer import escape
from stemma.registry.store import _validcache
from stemma.registry.store.handle import find_repo_root

from ._audit_checks import (
    CODES,
    LOCK_MISMATCH,
    NEW_ENTRYPOINT,
    PIPELINE_OUT_OF_SYNC,
    REMOVED_WITH_DESCENDANTS,
    TAGGED_VERSION_CHANGED,
    Finding,
    change_violations,
    check_violations,
    finding,
    pipeline_violations,
    source_of,
)
from ._audit_md import markdown, pick_nodes
from ._audit_state import WORKING_TREE, State, anchor, link, open_state, prefetch_state
from .graph import (
    add_external,
    build_graph,
    graph_from_records,
    partial_graph,
    read_document,
    read_records,
    record_edges,
    records_near,
)
from .nodes import (
    DERIVED_FROM,
    DatasetRecord,
    ModelRecord,
    dataset_node,
    model_node,
    new_graph,
    split_node,
)
from .query import LineageIndex

if TYPE_CHECKING:
    import networkx as nx

Records = tuple[list[ModelRecord], list[DatasetRecord]]

__all__ = [
    "CODES",
    "LOCK_FILE",
    "LOCK_MISMATCH",
    "NEW_ENTRYPOINT",
    "PIPELINE_OUT_OF_SYNC",
    "REMOVED_WITH_DESCENDANTS",
    "TAGGED_VERSION_CHANGED",
    "WORKING_TREE",
    "AuditReport",
    "Finding",
    "MetricDelta",
    "Rebuild",
    "Reparent",
    "SpecChange",
    "audit",
    "json_diff",
]


@dataclass(frozen=True)
class SpecChange:
    """One field of a spec (or of stemma.yaml) that differs; `before`/`after` absent as None
    with `op` saying which."""

    subject: str
    pointer: str
    op: str  # added | removed | changed
    before: Any = None
    after: Any = None


@dataclass(frozen=True)
class Reparent:
    """A model whose source changed."""

    model: str
    before: str | None
    after: str | None


@dataclass(frozen=True)
class Rebuild:
    """A model or dataset whose manifest id changed (None: no manifest on that side)."""

    subject: str
    before: str | None
    after: str | None


@dataclass(frozen=True)
class MetricDelta:
    """A headline metric that changed between the two manifests of a model."""

    model: str
    metric: str
    before: float | None
    after: float | None

    @property
    def delta(self) -> float | None:
        """after - before, when both exist."""
        if self.before is None or self.after is None:
            return None
        return self.after - self.before


@dataclass(frozen=True)
class AuditReport:
    """What changed between base and head, and every violation at head."""

    base: str
    head: str
    models_added: tuple[str, ...] = ()
    models_removed: tuple[str, ...] = ()
    datasets_added: tuple[str, ...] = ()
    datasets_removed: tuple[str, ...] = ()
    reparented: tuple[Reparent, ...] = ()
    spec_changes: tuple[SpecChange, ...] = ()
    rebuilt: tuple[Rebuild, ...] = ()
    metric_deltas: tuple[MetricDelta, ...] = ()
    violations: tuple[Finding, ...] = ()
    # The part of the head graph the report draws (the marked nodes, the sources of those
    # not merely affected, the first affected ones), with what was removed.
    graph: nx.MultiDiGraph = field(default_factory=new_graph, compare=False, repr=False)
    marks: Mapping[str, str] = field(default_factory=dict)  # node -> added|removed|changed|...

    @property
    def ok(self) -> bool:
        """True when head has no violation."""
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stable order."""
        deltas = [{**asdict(d), "delta": d.delta} for d in self.metric_deltas]
        return {
            "ok": self.ok,
            "base": self.base,
            "head": self.head,
            "models": {
                "added": list(self.models_added),
                "removed": list(self.models_removed),
                "reparented": [asdict(r) for r in self.reparented],
            },
            "datasets": {
                "added": list(self.datasets_added),
                "removed": list(self.datasets_removed),
            },
            "spec_changes": [asdict(c) for c in self.spec_changes],
            "rebuilt": [asdict(r) for r in self.rebuilt],
            "metric_deltas": deltas,
            "violations": [v.to_dict() for v in self.violations],
            "marks": dict(sorted(self.marks.items())),
        }

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def to_markdown(self) -> str:
        """The report as Markdown for a pull-request comment."""
        return markdown(self)


def audit(repo_path: str | Path, base: str, head: str | None = None) -> AuditReport:
    """Compare the registry at git revision `base` with `head` (None: the working tree)."""
    repo = Path(repo_path)
    # Both states share one cache of documents known to pass their schema: most are the same.
    with _validcache.remembering(_repo_root(repo)):
        return _audit(repo, base, head)


def _repo_root(repo: Path) -> Path:
    try:
        return find_repo_root(repo)
    except RegistryNotFound:
        return repo.resolve()


def _audit(repo: Path, base: str, head: str | None) -> AuditReport:
    old, new = open_state(repo, base), open_state(repo, head)
    if head is not None:
        # Tied to the working tree first: then only what differs from it is read from git.
        anchor(new, repo)
        prefetch_state(new)
    link(old, new)
    found = check_violations(new)
    # The base's violations only mark which of the head's are new: only the checks that
    # can find a code the head has are run on it, and only on the subjects the head's are of
    # (a finding's key names its subject).
    was = check_violations(old, {v.code for v in found}, {v.subject for v in found})
    changed = change_violations(old, new)
    unreadable = any(side.reg is None and side.errors for side in (old, new))
    # A side whose stemma.yaml is broken has no models to compare: report no structure change.
    report = (
        _changes(State(old.label, None), State(new.label, None))
        if unreadable
        else (_changes(old, new))
    )
    # The checks' folder facts and every parsed document go before the pipelines are
    # rendered and the graphs built, so that those reuse their memory instead of adding
    # to it (at 30,000 models, hundreds of MiB).
    new.release()
    old.release()
    piped = pipeline_violations(new)
    found += piped
    was += pipeline_violations(old, {v.code for v in piped})
    # The records of the head's lineage are read once the checks' memory and the render's
    # are let go: the query index's working memory for them (tens of MiB at 30,000 models,
    # handed back when the query ends) then reuses theirs instead of coming on top of it,
    # and the records are held through neither (peak at 30,000 models, audit of a past
    # head: 311 MiB when read before the pipelines were rendered).
    records = _head_records(new)
    before = {finding(v).key for v in was}
    findings = [finding(v, new=finding(v).key not in before) for v in found]
    findings += changed
    findings = sorted(
        set(findings), key=lambda f: (not f.new, f.code, f.subject, f.path, f.pointer, f.message)
    )
    touched = {model_node(r.model) for r in report["reparented"]}
    touched |= {c.subject for c in report["spec_changes"] if c.subject != "settings"}
    touched |= {r.subject for r in report["rebuilt"]}
    touched |= {
        f.subject for f in findings if f.new and f.subject.partition(":")[0] in ("model", "dataset")
    }
    graph, marks = _marked_graph(old, new, report, touched, records)
    return AuditReport(
        base=old.label,
        head=new.label,
        violations=tuple(findings),
        graph=graph,
        marks=marks,
        **report,
    )


# -- what changed ----------------------------------------------------------------------


def _changes(old: State, new: State) -> dict[str, Any]:
    both_models = sorted(set(old.models) & set(new.models))
    both_data = sorted(set(old.datasets) & set(new.datasets))
    reparented = []
    both_models = [n for n in both_models if not _same(old, "models", n, SPEC_FILE)]
    both_data = [n for n in both_data if not _same(old, "datasets", n, SPEC_FILE)]
    for name in both_models:
        src_a, src_b = source_of(old.models[name]), source_of(new.models[name])
        if src_a != src_b:
            reparented.append(Reparent(name, src_a, src_b))
    changes: list[SpecChange] = []
    if old.reg is not None and new.reg is not None:
        changes += _spec_changes("settings", old.settings, new.settings)
    for kind, names, a, b in (
        ("dataset", both_data, old.datasets, new.datasets),
        ("model", both_models, old.models, new.models),
    ):
        for name in names:
            changes += _spec_changes(f"{kind}:{name}", a[name], b[name])
    rebuilt, deltas = [], []
    for key in sorted(set(old.manifests) | set(new.manifests)):
        kind, _, name = key.partition(":")
        if _same(old, f"{kind}s", name, MANIFEST_FILE):
            continue  # the same file: the same id
        ma, mb = old.manifests.get(key), new.manifests.get(key)
        ia, ib = _id(ma), _id(mb)
        if ia == ib or key not in new.manifests:
            continue
        rebuilt.append(Rebuild(key, ia, ib))
        if key.startswith("model:"):
            deltas += _metric_deltas(key.partition(":")[2], ma, mb)
    return {
        "models_added": tuple(sorted(set(new.models) - set(old.models))),
        "models_removed": tuple(sorted(set(old.models) - set(new.models))),
        "datasets_added": tuple(sorted(set(new.datasets) - set(old.datasets))),
        "datasets_removed": tuple(sorted(set(old.datasets) - set(new.datasets))),
        "reparented": tuple(reparented),
        "spec_changes": tuple(changes),
        "rebuilt": tuple(rebuilt),
        "metric_deltas": tuple(deltas),
    }


def _same(old: State, kind: str, name: str, file: str) -> bool:
    """True when the base's file of a model or dataset is the head's own."""
    return old.reg is not None and old.same_file(old.reg.rel(kind, name, file))


def _id(manifest: Any) -> str | None:
    return str(manifest["id"]) if isinstance(manifest, dict) and "id" in manifest else None


def _spec_changes(subject: str, a: Any, b: Any) -> list[SpecChange]:
    return [SpecChange(subject, ptr, op, x, y) for ptr, op, x, y in json_diff(a, b)]


def _metric_deltas(model: str, a: Any, b: Any) -> list[MetricDelta]:
    ma = _metrics(a)
    mb = _metrics(b)
    return [
        MetricDelta(model, k, ma.get(k), mb.get(k))
        for k in sorted(set(ma) | set(mb))
        if ma.get(k) != mb.get(k)
    ]


def _metrics(manifest: Any) -> dict[str, float]:
    raw = manifest.get("metrics") if isinstance(manifest, dict) else None
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}


def json_diff(a: Any, b: Any, pointer: str = "") -> list[tuple[str, str, Any, Any]]:
    """Field-by-field differences as (JSON pointer, op, before, after); lists compare whole."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, str, Any, Any]] = []
        for key in sorted(set(a) | set(b), key=str):
            ptr = pointer + "/" + escape(key)
            if key not in a:
                out.append((ptr, "added", None, b[key]))
            elif key not in b:
                out.append((ptr, "removed", a[key], None))
            else:
                out += json_diff(a[key], b[key], ptr)
        return out
    # Compare as JSON text: 1 == 1.0 == True in Python, not in a spec.
    if json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
        return []
    return [(pointer or "/", "changed", a, b)]


def _head_records(new: State) -> Records | None:
    """What the head's graph is built from (`_marked_graph`): the records of the head, or of
    the working tree a head revision is anchored to (None: no registry)."""
    if new.reg is None:
        return None
    near = _near(new)
    return read_records(near if near is not None else new.reg)


def _near(new: State) -> Registry | None:
    """The working tree a head at a git revision is anchored to, or None."""
    if new.same is not None and new.head is not None and new.head.reg is not None:
        return new.head.reg
    return None


def _marked_graph(
    old: State,
    new: State,
    report: Mapping[str, Any],
    touched: set[str],
    records: Records | None = None,
) -> tuple[nx.MultiDiGraph, dict[str, str]]:
    """The part of the head graph the change touches, and a mark for every node it touches:
    added, removed, changed, or affected (rebuilt downstream of a change). `records`: those
    of `_head_records`, when already read.

    The marks are found on the head's whole lineage, read from its records (`LineageIndex`)
    with the base's nodes of what was removed and the base's edges of what is marked; the
    graph is that lineage's sub-graph of the nodes the report draws (`_audit_md.pick_nodes`:
    the marked nodes, the sources of those not merely affected, and the first affected ones).
    A networkx graph of every model (at 30,000 models ~65 MiB, most of an audit's peak) or
    of every affected one (17,000 of them when a change near the root affects them) is not
    built."""
    g_old = _old_graph(old, new, report)
    models, datasets = _head_lineage(new, records)
    by_name = {m.name: m for m in models}
    registered = [m.name for m in models if m.status == status.REGISTERED]
    external = new_graph()  # the Hub parents of registered models, as `build_graph` adds them
    if new.reg is not None:
        add_external(new.reg, external, registered)
    index = LineageIndex.from_records(models, datasets)
    hubs = {v for _, v in external.edges()}
    removed: dict[str, dict[str, Any]] = {}  # node -> its base attributes, marked removed
    marks: dict[str, str] = {}
    for kind, node in (("models", model_node), ("datasets", dataset_node)):
        for name in report[f"{kind}_removed"]:
            key = node(name)
            if key in g_old:
                removed[key] = {**g_old.nodes[key], "status": "removed"}
                marks[key] = "removed"
        for name in report[f"{kind}_added"]:
            marks[node(name)] = "added"

    def present(key: str) -> bool:  # a node of the head graph, or one removed
        return key in index.nodes or key in hubs or key in removed

    def head_edges(u: str) -> list[tuple[str, str, dict[str, Any]]]:
        kind, name = split_node(u)
        own = record_edges(by_name[name]) if kind == "model" and name in by_name else []
        if u in external:
            own += [(v, k, attrs) for _, v, k, attrs in external.out_edges(u, keys=True, data=True)]
        return own

    extra = [  # the base's edges of marked nodes that the head lacks, between nodes both have
        (u, v, k, attrs)
        for u, v, k, attrs in g_old.edges(keys=True, data=True)
        if (u in marks or v in marks)
        and present(u)
        and present(v)
        and not any(t == v and key == k for t, key, _ in head_edges(u))
    ]
    for key in sorted(touched):
        if present(key):
            marks.setdefault(key, "changed")
    if extra or removed:
        index = LineageIndex.from_records(models, datasets, [(u, v, k) for u, v, k, _ in extra])
    for key in sorted(k for k in marks if k in index.nodes):
        for down in index.descendants(key):
            marks.setdefault(down, "affected")

    def sources(u: str) -> list[str]:
        own = [v for v, k, _ in head_edges(u) if k == DERIVED_FROM]
        return own + [v for w, v, k, _ in extra if w == u and k == DERIVED_FROM]

    drawn = set(pick_nodes(marks, present, sources)[0])
    shown = [m for m in models if model_node(m.name) in drawn]
    g = graph_from_records(shown, datasets)
    own = {model_node(m.name) for m in shown if m.status == status.REGISTERED}
    for u, v, k, attrs in external.edges(keys=True, data=True):  # read once, above
        if u in own:
            if v not in g:
                g.add_node(v, **external.nodes[v])
            g.add_edge(u, v, key=k, **attrs)
    for key, attrs in removed.items():
        g.add_node(key, **attrs)
    for u, v, k, attrs in extra:
        if u in g and v in g:
            g.add_edge(u, v, key=k, **attrs)
    g.remove_nodes_from([k for k in list(g) if k not in drawn])
    return g, marks


def _head_lineage(new: State, records: Records | None) -> Records:
    """The head's records (`records`: those of `_head_records`, when already read)."""
    if new.reg is None:
        return [], []
    near = _near(new)
    if near is not None and new.same is not None:
        # A head at a git revision anchored to the working tree: most of its records are
        # the working tree's, which its query index answers.
        return records_near(new.reg, near, new.same, records)
    return records if records is not None else read_records(new.reg)


def _old_graph(old: State, new: State, report: Mapping[str, Any]) -> nx.MultiDiGraph:
    """The part of the base's graph the marks need: the nodes of what was removed, and the
    edges of every model whose spec or manifest changed (an unchanged model has the same
    edges in both graphs)."""
    reg = old.reg
    if reg is None:
        return new_graph()
    if old.same is None:
        return build_graph(reg)
    models = [
        n
        for n in reg.model_names()
        if not (_same(old, "models", n, SPEC_FILE) and _same(old, "models", n, MANIFEST_FILE))
    ]

    def read(kind: str, name: str, file: str) -> dict[str, Any] | None:
        path = reg.rel(kind, name, file)
        side = new.reg if old.same_file(path) and new.reg is not None else reg
        return read_document(side, kind, name, file)

    return partial_graph(reg, models, report["datasets_removed"], read)
