"""GTO's whole tag grammar: deregistration, deprecation and simple stage tags, made by `gto`
itself, read by stemma the way `gto show` reads them; stemma's names are a subset of GTO's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import git, write
from gto.constants import name_re as gto_name_re
from gto.tag import parse_name as gto_parse_name
from stemma.registry import Registry
from stemma.registry.check import consistency as cons
from stemma.registry.errors import ConsistencyError, InvalidName, StemmaError
from stemma.registry.rules.naming import NAME_RE, check_name, parse_tag
from stemma.registry.versions import resolve as v
from test_versions import commit, put_model

GTO = str(Path(sys.executable).with_name("gto"))


def gto(repo: Path, *args: str) -> Any:
    """Run the real `gto` command line; its JSON output when it printed some."""
    out = subprocess.run(
        [GTO, *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    return json.loads(out) if out.startswith(("{", "[")) else out


@pytest.mark.parametrize(
    "tag",
    [
        "base@v1.2.3",
        "base@v1.2.3-rc.1+build.5",
        "base@v0.1.0!",
        "base@v0.1.0!#7",
        "base#prod",
        "base#prod#3",
        "base#prod!#4",
        "base#prod!",
        "base@deprecated",
        "base@deprecated#9",
        "base@created",
        "My_Model/x@v1.0.0",
        "base@v01.2.3",
        "base#",
        "base@latest",
        "-base@v1.0.0",
        "base@v1.0.0##2",
    ],
)
def test_parse_tag_agrees_with_gto(tag: str) -> None:
    """One parser, GTO's grammar: every action, counter or not, rejected where GTO rejects."""
    theirs = gto_parse_name(tag, raise_on_fail=False)
    ours = parse_tag(tag)
    if not theirs:
        assert ours is None
        return
    assert ours is not None
    assert ours.name == theirs["name"]
    expected_action = theirs["action"].value if "action" in theirs else "create"
    assert ours.action == expected_action
    assert ours.version == theirs.get("version")
    assert ours.stage == theirs.get("stage")
    assert ours.number == theirs.get("counter")


@pytest.mark.parametrize(
    "name", ["a", "base", "digits-5to9", "x_1", "resnet.v2", "base-", "-base", "Base", "a/b", "_x"]
)
def test_stemma_names_are_gto_names(name: str) -> None:
    if NAME_RE.match(name):
        assert gto_name_re.match(name), name
        assert check_name(name) == name
    else:
        with pytest.raises(InvalidName, match="starting and ending with a letter or digit"):
            check_name(name)


def test_validate_refuses_a_name_gto_rejects(registry: Registry, cli: Any) -> None:
    write(registry.root / "models" / "resnet.v2" / "spec.yaml", "architecture: {family: mlp}\n")
    found = [x for x in cons.check(registry) if x.code == cons.INVALID_NAME]
    assert [x.subject for x in found] == ["model:resnet.v2"]
    assert "starting and ending with a letter or digit" in found[0].message
    res = cli(["validate"], registry.root)
    assert res.code == 1
    line = next(ln for ln in (res.stdout + res.stderr).splitlines() if "resnet.v2" in ln)
    assert "invalid-name" in line and "'-' and '_'" in line


@pytest.fixture
def tagged(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A model with two committed versions, v0.1.0 and v0.2.0, tagged by stemma."""
    for name in ("d0", "d1"):
        write(registry.dataset_dir(name) / "spec.yaml", "source: sklearn:digits\n")
    first = put_model(registry, "base", accuracy=0.8)
    c1 = commit(registry.repo_root, "base", "2026-01-01T10:00:00+00:00")
    second = put_model(registry, "base", accuracy=0.9, hidden=48)
    c2 = commit(registry.repo_root, "retrain", "2026-01-02T10:00:00+00:00")
    # dated in the past: GTO orders tags by time, so a tag a test makes now comes after these
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-01-02T11:00:00+00:00")
    v.tag(registry, "base", "v0.1.0", ref=c1)
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-01-02T12:00:00+00:00")
    v.tag(registry, "base", "v0.2.0", ref=c2)
    monkeypatch.delenv("GIT_COMMITTER_DATE")
    return {"ids": (first, second), "commits": (c1, c2)}


def test_deregistered_version_is_not_served(registry: Registry, tagged: dict[str, Any], cli: Any):
    repo = registry.repo_root
    gto(repo, "deprecate", "base", "v0.1.0")  # GTO's deregistration: base@v0.1.0!#N
    assert any(t.startswith("base@v0.1.0!") for t in git(repo, "tag").split())
    shown = gto(repo, "show", "base", "--json")
    assert [r["version"] for r in shown] == ["v0.2.0"]  # GTO hides it, and so does stemma
    with pytest.raises(StemmaError, match=r"v0\.1\.0 of model 'base' was deregistered"):
        v.resolve(registry, "base@v0.1.0")
    res = cli(["show", "base@v0.1.0"], repo)
    assert res.code == 1 and "deregistered" in res.stderr and res.stderr.count("\n") == 1
    res = cli(["checkout", "base@v0.1.0"], repo)
    assert res.code == 1 and "deregistered" in res.stderr
    assert v.resolve(registry, "base@v0.2.0").id == tagged["ids"][1]
    entries = v.log(registry, "base")
    assert [(e.labels, e.deregistered, e.status) for e in entries] == [
        (("v0.2.0",), (), "active"),
        ((), ("v0.1.0",), "deregistered"),
    ]
    logged = json.loads(cli(["log", "base", "--json"], repo).stdout)
    assert [e["status"] for e in logged] == ["active", "deregistered"]
    text = cli(["log", "base"], repo).stdout
    assert "v0.1.0 (deregistered)" in text
    rows = json.loads(
        cli(
            ["query", "--history", "--json", "SELECT id, status FROM versions ORDER BY date"], repo
        ).stdout
    )
    assert [(r["id"], r["status"]) for r in rows] == list(
        zip(tagged["ids"], ["deregistered", "active"], strict=True)
    )
    # a deregistered version's stage assignments go with it
    v.promote(registry, "base", "prod", ref="v0.2.0")
    assert v.current_stages(registry, "base")["prod"].commit == tagged["commits"][1]


def test_simple_stage_tag_is_a_stage(registry: Registry, tagged: dict[str, Any], cli: Any) -> None:
    repo = registry.repo_root
    gto(repo, "assign", "base", "--version", "v0.1.0", "--stage", "prod", "--simple", "true")
    assert "base#prod" in git(repo, "tag").split()
    assert gto(repo, "show", "base#prod", "--ref") == "base@v0.1.0"
    res = cli(["show", "base@prod", "--json"], repo)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["manifest"]["id"] == tagged["ids"][0]
    assert [e.labels for e in v.log(registry, "base")] == [("v0.2.0",), ("v0.1.0", "prod")]
    # stemma's own numbered assignment after GTO's simple one: the newer one holds the stage
    assert v.promote(registry, "base", "prod", ref="v0.2.0").tag == "base#prod#1"
    assert v.resolve(registry, "base@prod").id == tagged["ids"][1]


def test_deprecated_model(registry: Registry, tagged: dict[str, Any], cli: Any) -> None:
    repo = registry.repo_root
    gto(repo, "deprecate", "base")  # base@deprecated#N
    assert "base" not in gto(repo, "show", "--json")  # GTO lists it no more
    assert set(v.deprecated_models(registry)) == {"base"}
    for ref in ("base@v0.2.0", "base@v0.1.0"):
        res = cli(["show", ref], repo)
        assert res.code == 1 and "deprecated" in res.stderr and res.stderr.count("\n") == 1
    # its history stays readable by id
    assert v.resolve(registry, f"base@{tagged['ids'][0][7:19]}").id == tagged["ids"][0]
    assert {e.status for e in v.log(registry, "base")} == {"deprecated"}
    assert "base is deprecated" in cli(["log", "base"], repo).stdout
    listed = json.loads(cli(["ls", "--json"], repo).stdout)
    assert [r.get("deprecated") for r in listed if r["name"] == "base"] == [True]
    assert "deprecated" in cli(["ls"], repo).stdout


def test_tag_refuses_a_stale_model(registry: Registry, tagged: dict[str, Any]) -> None:
    spec_path = registry.model_dir("base") / "spec.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["training"]["epochs"] = 9
    spec_path.write_text(yaml.safe_dump(spec))
    commit(registry.repo_root, "change the spec, no rebuild", "2026-01-03T10:00:00+00:00")
    with pytest.raises(ConsistencyError, match="the spec changed since the last build"):
        v.tag(registry, "base", "v0.3.0")
    assert "base@v0.3.0" not in git(registry.repo_root, "tag").split()
