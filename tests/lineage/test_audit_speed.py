"""An audit of a head revision that is not the working tree reads as little as it can: the
head's pipeline files are rendered from the working tree's last render (only the files the
model specs that differ can change), and only the files that differ from the working tree
are read from git. Each case: the same report as reading and rendering everything."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import write
from stemma.lineage import _audit_checks, _audit_state
from stemma.lineage import audit as lib
from stemma.registry import Registry
from stemma.registry.pipeline import _pipedelta, pipefiles
from test_audit import CASES, base_repo, commit  # noqa: F401  (base_repo: a fixture)
from test_audit_state import report, unlinked


@pytest.fixture
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A private copy of the audit tests' committed registry."""
    target = tmp_path / "repo"
    shutil.copytree(request.getfixturevalue("base_repo"), target, symlinks=True)
    return target


def _retrained(reg: Registry) -> None:
    spec = reg.root / "models" / "ft" / "spec.yaml"
    write(spec, spec.read_text().replace("lr: 0.01", "lr: 0.03"))


def _reparented(reg: Registry) -> None:
    spec = reg.root / "models" / "ft" / "spec.yaml"
    write(spec, spec.read_text().replace("model: base", "model: scratch"))


def _added(reg: Registry) -> None:
    ft = (reg.root / "models" / "ft" / "spec.yaml").read_text()
    write(reg.root / "models" / "extra" / "spec.yaml", ft.replace("model: base", "model: ft"))


def _removed(reg: Registry) -> None:
    shutil.rmtree(reg.root / "models" / "scratch")


def _dataset(reg: Registry) -> None:
    spec = reg.root / "datasets" / "digits-5to9" / "spec.yaml"
    write(spec, spec.read_text() + "description: edited\n")


# How the working tree moved on after the head: each a commit, then an uncommitted edit.
LATER = {
    "retrained": _retrained,
    "reparented": _reparented,
    "added": _added,
    "removed": _removed,
    "dataset": _dataset,
}
# Changes of model specs alone: the head's pipeline files come from the working tree's render.
NEAR = {"retrained", "reparented", "added", "removed"}


def _move_on(repo: Path, later: str) -> None:
    LATER[later](Registry.open(repo))
    commit(repo, f"{later} after the head")
    base = Registry.open(repo).root / "models" / "base" / "spec.yaml"
    write(base, base.read_text() + "\n# edited, not committed\n")


def _near_renders(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each state whose pipeline files are checked from now on: True when they were
    rendered from the working tree's last render."""
    seen: list[bool] = []
    real = _audit_checks._near_render

    def spy(state: Any, reg: Registry) -> Any:
        found = real(state, reg)
        seen.append(found is not None)
        return found

    monkeypatch.setattr(_audit_checks, "_near_render", spy)
    return seen


@pytest.mark.parametrize("later", sorted(LATER))
@pytest.mark.parametrize("code", [lib.PIPELINE_OUT_OF_SYNC, sorted(CASES)[0]])
def test_a_past_head_renders_from_the_working_tree(
    later: str, code: str, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = work
    CASES[code](Registry.open(repo))
    commit(repo, f"introduce {code}")
    _move_on(repo, later)
    args = {"base": "HEAD~2", "head": "HEAD~1"}
    expected = unlinked(repo, monkeypatch, **args)
    report(repo, **args)  # the working tree's render is kept
    with monkeypatch.context() as patch:
        near = _near_renders(patch)
        assert report(repo, **args) == expected
    if code == lib.PIPELINE_OUT_OF_SYNC:
        assert f'"code": "{lib.PIPELINE_OUT_OF_SYNC}"' in expected
        # The head's (the first state checked): from the working tree's render.
        assert near[0] is (later in NEAR)
    # (a cycle: no render at all, the cycle's own violation says why)


def test_render_near_is_the_full_render(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = work
    CASES[lib.PIPELINE_OUT_OF_SYNC](Registry.open(repo))
    commit(repo, "out of sync")
    _move_on(repo, "reparented")
    head = _audit_state.open_state(repo, "HEAD~1")
    _audit_state.anchor(head, repo)
    assert head.reg is not None and head.head is not None and head.head.reg is not None
    wt = head.head.reg
    pipefiles.rendered(wt)
    cached = pipefiles._pipecache.load(wt)
    assert cached is not None
    near = _pipedelta.render_near(head.reg, cached, {"ft"})
    _, full = pipefiles.rendered(head.reg)
    assert near is not None and near == full and next(iter(near)) == "dvc.yaml"
    # Settings that differ from the working tree's: render everything.
    monkeypatch.setattr(pipefiles._pipecache, "base", lambda reg: "another")
    assert _pipedelta.render_near(head.reg, cached, {"ft"}) is None
