"""The audit reads the base as the head with the files git finds different: the same report
as reading every file of both states, while reading only what differs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import write
from stemma.lineage import _audit_state
from stemma.lineage import audit as lib
from stemma.registry import Registry
from stemma.registry.check import consistency
from test_audit import CASES, base_repo, commit  # noqa: F401  (base_repo: a fixture)


@pytest.fixture
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A private copy of the audit tests' committed registry."""
    target = tmp_path / "repo"
    shutil.copytree(request.getfixturevalue("base_repo"), target, symlinks=True)
    return target


def report(repo: Path, base: str = "HEAD~1", head: str | None = None) -> str:
    text = lib.audit(repo, base, head).to_json()
    return text + lib.audit(repo, base, head).to_markdown()


def _report_with(
    repo: Path, monkeypatch: pytest.MonkeyPatch, patches: dict[str, Any], **kwargs: str | None
) -> str:
    """The report with the audit's functions `patches` names replaced."""
    with monkeypatch.context() as patch:
        for name, value in patches.items():
            patch.setattr(lib, name, value)
        return report(repo, **kwargs)  # type: ignore[arg-type]


def unlinked(repo: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: str | None) -> str:
    """The report with every file of both states read (the base not tied to the head)."""
    patches = {"link": lambda base, head: None, "anchor": lambda head, repo: None}
    return _report_with(repo, monkeypatch, patches, **kwargs)


def _whole(repo: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: str | None) -> str:
    """The report with the base checked whole: every folder, every subject."""
    real = lib.check_violations

    def whole(state: _audit_state.State, codes: object = None, subjects: object = None) -> object:
        return real(state, codes)  # type: ignore[arg-type]

    return _report_with(repo, monkeypatch, {"check_violations": whole}, **kwargs)


@pytest.mark.parametrize("code", sorted(CASES))
def test_the_same_report_as_reading_and_checking_everything(
    code: str, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each violation: the report is the one made by reading every file of both states, and
    the one made with the base checked whole (not only for the head's subjects)."""
    repo = work
    CASES[code](Registry.open(repo))
    commit(repo, f"introduce {code}")
    assert report(repo) == unlinked(repo, monkeypatch)
    assert report(repo, head="HEAD") == unlinked(repo, monkeypatch, head="HEAD")
    _move_on(repo)
    kept = 0  # findings the base had too: those the focused check of the base must find
    # A base that has the finding, with the working tree as head; a base without it, with a
    # past head (the other two forms cost as much and add no other path of the focused check).
    for args in ({"base": "HEAD~1"}, {"base": "HEAD~2", "head": "HEAD~1"}):
        text = report(repo, **args)  # type: ignore[arg-type]
        assert text == _whole(repo, monkeypatch, **args)
        kept += text.count('"new": false')
    assert kept > 0 or code in (
        lib.NEW_ENTRYPOINT,
        lib.REMOVED_WITH_DESCENDANTS,
        lib.TAGGED_VERSION_CHANGED,
    )


def test_uncommitted_and_untracked_files_count(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = work
    reg = Registry.open(repo)
    spec = reg.root / "models" / "ft" / "spec.yaml"
    write(spec, spec.read_text().replace("lr: 0.01", "lr: 0.02"))  # edited, not committed
    write(reg.root / "models" / "extra" / "spec.yaml", spec.read_text())  # untracked
    (reg.root / "models" / "scratch" / "manifest.json").unlink()  # deleted, not committed
    found = json.loads(lib.audit(repo, "HEAD").to_json())
    assert found["models"]["added"] == ["extra"]
    assert [r["after"] for r in found["rebuilt"] if r["subject"] == "model:scratch"] == [None]
    assert any(c["subject"] == "model:ft" for c in found["spec_changes"])
    assert report(repo, base="HEAD") == unlinked(repo, monkeypatch, base="HEAD")


def test_only_the_folders_that_differ_are_read_for_the_base(
    work: Path, monkeypatch: pytest.MonkeyPatch, folder_reads: list[str]
) -> None:
    repo = work
    reg = Registry.open(repo)
    spec = reg.root / "models" / "ft" / "spec.yaml"
    write(spec, spec.read_text().replace("lr: 0.01", "lr: 0.02"))
    commit(repo, "change ft")
    old, new = _audit_state.open_state(repo, "HEAD~1"), _audit_state.open_state(repo, None)
    _audit_state.link(old, new)
    assert old.same_file("models/base/spec.yaml") and not old.same_file("models/ft/spec.yaml")
    assert old.models["base"] is new.models["base"]  # one document for both states
    new.check()
    folder_reads.clear()
    read = folder_reads
    old.check()
    assert read == ["ft"]


def _forced_from_git(repo: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: str | None) -> str:
    """The report with the head revision read from git, as if the working tree differed."""
    with monkeypatch.context() as patch:
        patch.setattr(_audit_state, "_is_working_tree", lambda repo, rev, seen=None: False)
        return report(repo, **kwargs)  # type: ignore[arg-type]


def test_a_head_revision_equal_to_the_working_tree_is_read_from_it(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stemma.registry.store.tree import WorkTree

    repo = work
    CASES[sorted(CASES)[0]](Registry.open(repo))
    commit(repo, "a change")
    state = _audit_state.open_state(repo, "HEAD")
    assert state.reg is not None and isinstance(state.reg.tree, WorkTree)
    assert state.label == "HEAD"
    assert report(repo, head="HEAD") == _forced_from_git(repo, monkeypatch, head="HEAD")


@pytest.mark.parametrize("change", ["edited", "untracked", "deleted", "ignored"])
def test_a_working_tree_that_differs_reads_the_revision_from_git(
    work: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    from stemma.registry.store.tree import WorkTree

    repo = work
    reg = Registry.open(repo)
    spec = reg.root / "models" / "ft" / "spec.yaml"
    if change == "edited":
        write(spec, spec.read_text().replace("lr: 0.01", "lr: 0.02"))
    elif change == "untracked":
        write(reg.root / "models" / "extra" / "spec.yaml", spec.read_text())
    elif change == "deleted":
        (reg.root / "models" / "scratch" / "manifest.json").unlink()
    else:  # a file git ignores is still one the working tree's registry would read
        write(repo / ".gitignore", "extra/\n")
        commit(repo, "ignore extra")
        write(reg.root / "models" / "extra" / "spec.yaml", spec.read_text())
    state = _audit_state.open_state(repo, "HEAD")
    assert state.reg is not None and not isinstance(state.reg.tree, WorkTree)
    forced = _forced_from_git(repo, monkeypatch, base="HEAD", head="HEAD")
    assert report(repo, base="HEAD", head="HEAD") == forced


# A head revision that is not the working tree: a later commit and an uncommitted edit.
_PAST_HEAD = [
    cons_code
    for cons_code in sorted(CASES)
    if cons_code
    in {
        consistency.SCHEMA,
        consistency.STALE_MANIFEST,
        consistency.DANGLING_SOURCE,
        consistency.CYCLE,
        lib.PIPELINE_OUT_OF_SYNC,
        lib.LOCK_MISMATCH,
    }
]


def _move_on(repo: Path) -> None:
    """Commit a change after the head and edit a file without committing it."""
    reg = Registry.open(repo)
    spec = reg.root / "models" / "ft" / "spec.yaml"
    write(spec, spec.read_text().replace("lr: 0.01", "lr: 0.03"))
    commit(repo, "change ft after the head")
    scratch = reg.root / "models" / "scratch" / "spec.yaml"
    write(scratch, scratch.read_text() + "\n# edited, not committed\n")


@pytest.mark.parametrize("code", _PAST_HEAD)
def test_a_head_revision_that_differs_from_the_working_tree(
    code: str, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = work
    CASES[code](Registry.open(repo))
    commit(repo, f"introduce {code}")
    _move_on(repo)
    args = {"base": "HEAD~2", "head": "HEAD~1"}
    assert report(repo, **args) == unlinked(repo, monkeypatch, **args)


def test_a_head_revision_reads_only_the_folders_that_differ_from_the_working_tree(
    work: Path, monkeypatch: pytest.MonkeyPatch, folder_reads: list[str]
) -> None:
    repo = work
    _move_on(repo)
    head = _audit_state.open_state(repo, "HEAD~1")
    _audit_state.anchor(head, repo)
    assert head.head is not None and head.head.label == _audit_state.WORKING_TREE
    assert not head.same_file("models/ft/spec.yaml")
    assert not head.same_file("models/scratch/spec.yaml")
    assert head.same_file("models/base/spec.yaml")
    head.head.check()
    folder_reads.clear()
    read = folder_reads
    head.check()
    assert sorted(read) == ["ft", "scratch"]


def _kept(repo: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: str | None) -> str:
    """The report with every state's check and documents kept to the end."""
    with monkeypatch.context() as patch:
        patch.setattr(_audit_state.State, "release", lambda self: None)
        return report(repo, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "code", [consistency.STALE_MANIFEST, lib.PIPELINE_OUT_OF_SYNC, lib.LOCK_MISMATCH]
)
def test_releasing_the_checks_changes_no_report(
    code: str, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = work
    CASES[code](Registry.open(repo))
    commit(repo, f"introduce {code}")
    _move_on(repo)
    for args in ({"base": "HEAD~1"}, {"base": "HEAD~2", "head": "HEAD~1"}):
        assert report(repo, **args) == _kept(repo, monkeypatch, **args)  # type: ignore[arg-type]


def test_release_forgets_the_check_and_the_documents(work: Path) -> None:
    repo = work
    _move_on(repo)
    head = _audit_state.open_state(repo, "HEAD~1")
    _audit_state.anchor(head, repo)
    wt = head.head
    assert wt is not None and wt.reg is not None and head.reg is not None
    head.check()
    spec = wt.reg.rel("models", "base", "spec.yaml")
    # The working tree lends its folders' facts (no check of its own: no one asks for
    # its violations), and the specs they hold.
    assert wt.lent is not None and wt.checked is None and wt.reg.known(spec) is not None
    before = dict(head.models["base"])
    head.release()
    assert head.checked is None and wt.checked is None and wt.lent is None
    assert wt.reg.known(spec) is None and head.reg.known(spec) is None
    assert head.models["base"] == before  # read again where asked for


def test_the_base_reads_the_files_that_are_the_same_from_the_head(work: Path) -> None:
    repo = work
    reg = Registry.open(repo)
    spec = reg.root / "models" / "ft" / "spec.yaml"
    write(spec, spec.read_text().replace("lr: 0.01", "lr: 0.02"))
    commit(repo, "change ft")
    old, new = _audit_state.open_state(repo, "HEAD~1"), _audit_state.open_state(repo, None)
    _audit_state.link(old, new)
    assert old.reg is not None and new.reg is not None
    tree = old.reg.tree
    assert isinstance(tree, _audit_state.LinkedTree)
    own = "models/ft/spec.yaml"
    assert tree.read_text(own) == tree.own.read_text(own) != new.reg.tree.read_text(own)
    same = "models/base/dvc.yaml"
    assert tree.read_text(same) == new.reg.tree.read_text(same) is not None
    old.check()  # reads every folder's dvc.yaml and dvc.lock: none of the same from git
    inner = getattr(tree.own, "inner", tree.own)
    read = [p for p in inner._cache if p.startswith("models/")]  # (stemma.yaml: on opening)
    assert read == ["models/ft/spec.yaml"]


def test_a_focused_check_reads_the_folders_of_its_subjects_and_their_parents(
    work: Path, monkeypatch: pytest.MonkeyPatch, folder_reads: list[str]
) -> None:
    repo = work
    _move_on(repo)
    state = _audit_state.open_state(repo, "HEAD~1")  # not tied to a head: reads from git
    assert state.reg is not None
    whole = consistency.check_state(state.reg).violations
    folder_reads.clear()
    read = folder_reads
    only = frozenset({"model:ft", "pipeline"})
    focused = consistency.check_state(state.reg, only=only).violations
    assert sorted(read) == ["base", "ft"]  # ft derives from base
    assert sorted(map(str, focused)) == sorted(str(v) for v in whole if v.subject in only)
