"""An audit whose head is a git revision builds the head's lineage graph from the working
tree's records, reading again only the models whose files differ: the same report (its
Mermaid graph included) as building it from the revision's files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import write
from stemma.lineage import audit as lib
from stemma.lineage import graph
from stemma.registry import Registry
from test_audit import CASES, base_repo, commit  # noqa: F401  (base_repo: a fixture)


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
        patch.setattr(lib, "build_graph_near", lambda reg, near, *rest: graph.build_graph(reg))
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
