"""An audit whose head is a git revision builds the head's lineage graph from the working
tree's records, reading again only the models whose files differ: the same report (its
Mermaid graph included) as building it from the revision's files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import write
from stemma.lineage import _audit_md as audit_md
from stemma.lineage import audit as lib
from stemma.lineage import graph
from stemma.lineage.nodes import DERIVED_FROM, dataset_node, model_node, new_graph
from stemma.lineage.query import lineage_index
from stemma.registry import Registry
from test_audit import CASES, FT, base_repo, commit  # noqa: F401  (base_repo: a fixture)


@pytest.fixture
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A private copy of the audit tests' committed registry."""
    target = tmp_path / "repo"
    shutil.copytree(request.getfixturevalue("base_repo"), target, symlinks=True)
    return target


def _edit_working_tree(repo: Path) -> None:
    """Leave the working tree unlike HEAD: one spec edited, one model added."""
    spec = Registry.open(repo).root / "models" / "ft" / "spec.yaml"
    write(spec, spec.read_text().replace("lr: 0.01", "lr: 0.03"))
    write(spec.parent.parent / "extra" / "spec.yaml", spec.read_text())


def _report(repo: Path) -> str:
    found = lib.audit(repo, "HEAD~1", "HEAD")
    return found.to_json() + found.to_markdown()


@pytest.mark.parametrize("code", sorted(CASES))
def test_the_same_report_as_building_from_the_files(
    code: str, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    CASES[code](Registry.open(work))
    commit(work, f"introduce {code}")
    _edit_working_tree(work)
    fast = _report(work)
    with monkeypatch.context() as patch:
        patch.setattr(lib, "records_near", lambda reg, near, *rest: graph.read_records(reg))
        assert fast == _report(work)


def test_the_head_graph_reads_no_unchanged_file(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = Registry.open(work).root / "models" / "ft" / "spec.yaml"
    write(spec, spec.read_text().replace("lr: 0.01", "lr: 0.02"))
    commit(work, "edit ft")
    _edit_working_tree(work)
    whole: list[object] = []
    real = graph._file_records

    def counted(reg: Registry) -> object:
        whole.append(reg)
        return real(reg)

    monkeypatch.setattr(graph, "_file_records", counted)
    lib.audit(work, "HEAD~1", "HEAD")
    assert whole == []  # every record is the working tree's or read one model at a time


# -- the marked graph against the whole head graph ------------------------------------------


def _whole(old: lib.State, new: lib.State, report: dict, touched: set[str]) -> tuple:
    """The marks and graph of an audit found on a networkx graph of the whole head, the
    straightforward way: what `_marked_graph` finds from the head's records instead."""
    g_old = lib._old_graph(old, new, report)
    near = lib._near(new)
    if new.reg is None:
        g = new_graph()
    elif near is not None and new.same is not None:
        g = graph.build_graph_near(new.reg, near, new.same)
    else:
        g = graph.build_graph(new.reg)
    marks: dict[str, str] = {}
    for kind, node in (("models", model_node), ("datasets", dataset_node)):
        for name in report[f"{kind}_removed"]:
            key = node(name)
            if key in g_old:
                g.add_node(key, **{**g_old.nodes[key], "status": "removed"})
                marks[key] = "removed"
        for name in report[f"{kind}_added"]:
            marks[node(name)] = "added"
    for u, v, k, attrs in g_old.edges(keys=True, data=True):
        if (u in marks or v in marks) and u in g and v in g and not g.has_edge(u, v, k):
            g.add_edge(u, v, key=k, **attrs)
    for key in sorted(touched):
        if key in g:
            marks.setdefault(key, "changed")
    index = lineage_index(g)
    for key in sorted(k for k in marks if k in index.nodes):
        for down in index.descendants(key):
            marks.setdefault(down, "affected")
    core = sorted(k for k, m in marks.items() if m != "affected" and k in g)
    context = {v for u in core for _, v, k in g.out_edges(u, keys=True) if k == DERIVED_FROM}
    affected = sorted(k for k, m in marks.items() if m == "affected" and k in g)
    room = max(0, audit_md.MAX_NODES - len(core) - len(context - set(core)))
    return marks, g.subgraph({*core, *context, *affected[:room]})


def _shape(g: object) -> tuple:
    nodes = sorted((k, repr(sorted(a.items()))) for k, a in g.nodes(data=True))  # type: ignore[attr-defined]
    edges = sorted(
        (u, v, k, repr(sorted(a.items())))
        for u, v, k, a in g.edges(keys=True, data=True)  # type: ignore[attr-defined]
    )
    return nodes, edges


def _remove_base(reg: Registry) -> None:  # `ft` still derives from it
    shutil.rmtree(reg.root / "models" / "base")


def _reparent(reg: Registry) -> None:
    write(reg.root / "models" / "ft" / "spec.yaml", FT.replace("model: base", "model: scratch"))


def _remove_dataset(reg: Registry) -> None:  # used by `ft`
    shutil.rmtree(reg.root / "datasets" / "digits-5to9")


def _remove_ft(reg: Registry) -> None:  # its source, `base`, is drawn by the base's edge
    shutil.rmtree(reg.root / "models" / "ft")


def _remove_base_reparent_ft(reg: Registry) -> None:  # the base's edge ft -> base is drawn
    _remove_base(reg)
    _reparent(reg)


def _add_child(reg: Registry) -> None:
    write(reg.root / "models" / "ft2" / "spec.yaml", FT.replace("model: base", "model: ft"))


def _change_base(reg: Registry) -> None:  # `ft` is affected
    spec = reg.root / "models" / "base" / "spec.yaml"
    write(spec, spec.read_text().replace("lr: 0.01", "lr: 0.02"))


CHANGES = {
    "remove-base": _remove_base,
    "reparent": _reparent,
    "remove-ft": _remove_ft,
    "remove-base-reparent-ft": _remove_base_reparent_ft,
    "remove-dataset": _remove_dataset,
    "add-child": _add_child,
    "change-base": _change_base,
    **{f"case-{code}": case for code, case in CASES.items()},
}


@pytest.mark.parametrize("committed", [False, True], ids=["working-tree", "revisions"])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_marked_graph_is_the_whole_graphs_part(
    change: str, committed: bool, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marks are those found on a graph of the whole head (the base's removed nodes and
    edges added), and the graph is that graph's part the report draws: the same nodes, the
    same attributes, the same edges."""
    CHANGES[change](Registry.open(work))
    if committed:  # the head a revision, the working tree unlike it
        commit(work, change)
        spec = Registry.open(work).root / "models" / "scratch" / "spec.yaml"
        write(spec, spec.read_text().replace("tags: [baseline]", "tags: [edited]"))
    found: list[tuple] = []
    real = lib._marked_graph

    def both(old: lib.State, new: lib.State, report: dict, touched: set[str], records=None):  # type: ignore[no-untyped-def]
        g, marks = real(old, new, report, touched, records)
        found.append(((marks, _shape(g)), _whole(old, new, report, touched)))
        return g, marks

    monkeypatch.setattr(lib, "_marked_graph", both)
    lib.audit(work, "HEAD~1" if committed else "HEAD", "HEAD" if committed else None)
    ((marks, shape), (whole_marks, whole_graph)) = found[0]
    assert marks == whole_marks
    assert shape == _shape(whole_graph)
    if not change.startswith("case-"):  # some violations mark nothing
        assert marks


def test_only_the_drawn_affected_models_are_in_the_graph(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change that affects more models than a report draws: the graph holds the drawn
    ones, and the report counts the others."""
    _add_child(Registry.open(work))
    write(work / "models" / "ft3" / "spec.yaml", FT.replace("model: base", "model: ft2"))
    commit(work, "two more descendants")
    _change_base(Registry.open(work))
    monkeypatch.setattr(audit_md, "MAX_NODES", 3)  # base, then two of ft, ft2, ft3
    found = lib.audit(work, "HEAD")
    assert found.marks == {
        "model:base": "changed",
        "model:ft": "affected",
        "model:ft2": "affected",
        "model:ft3": "affected",
    }
    assert sorted(found.graph) == ["model:base", "model:ft", "model:ft2"]
    assert "1 more affected model not drawn." in found.to_markdown()
