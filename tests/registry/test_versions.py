"""Versions like git: log, NAME@REF, diff, GTO tags, stages and checkout on a real git + DVC repo.

The repository has three commits: (1) a base and two models derived from it; (2) the base
retrained; (3) one derived model re-parented onto the other, plus a base manifest rewritten
with only a new `run` block (same id: not a new version).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import git, write
from stemma.registry import Registry
from stemma.registry.errors import GitError, InvalidName, ModelNotFound, StemmaError
from stemma.registry.store.files import content_id, digest, file_hashes
from stemma.registry.versions import diffs
from stemma.registry.versions import resolve as v

VENV_BIN = Path(sys.executable).parent
RUN = {"started": "2026-01-01T00:00:00Z", "duration_s": 1.0, "stemma": "0.1.0"}
DATASETS = {"d0": "sklearn:digits", "d1": "sklearn:digits"}


def commit(repo: Path, message: str, when: str) -> str:
    """Commit everything at a fixed date; the new commit's sha."""
    env = {**os.environ, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    # Forget the index's stat cache first: a spec rewritten within the same second at the
    # same size (hidden 32 -> 48) would otherwise look unchanged to git.
    subprocess.run(["git", "rm", "-r", "-q", "--cached", "."], cwd=repo, capture_output=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=repo, check=True, env=env)
    return git(repo, "rev-parse", "HEAD")


def dvc(repo: Path, *args: str) -> None:
    """Run the real DVC command line in `repo`."""
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)


def put_model(
    reg: Registry,
    name: str,
    *,
    source: str | None = None,
    hidden: int = 32,
    accuracy: float = 0.9,
    epochs: int = 2,
    weights: bytes | None = None,
    run: Any = None,
    dry: bool = False,
) -> str:
    """Write a spec and a schema-valid manifest for `name` (not with `dry`); returns its id."""
    spec: dict[str, Any] = {
        "data": {"train": "d1" if source else "d0"},
        "training": {"epochs": epochs, "lr": 0.01},
    }
    if source:
        spec["source"] = {"model": source, "relation": "finetune"}
    else:
        spec["architecture"] = {"family": "mlp", "hidden": [hidden]}
    write(reg.model_dir(name) / "spec.yaml", yaml.safe_dump(spec))
    wpath = reg.model_dir(name) / "weights.safetensors"
    if weights is not None:
        wpath.write_bytes(weights)
    hashes = (
        file_hashes(wpath)
        if wpath.exists()
        else {"md5": "1" * 32, "sha256": "sha256:" + "2" * 64, "bytes": 1}
    )
    parent = reg.model_manifest(source) if source else None
    origin = "new" if source is None else "transferred"
    tensors = [
        {
            "name": "body.0.weight",
            "shape": [hidden, 64],
            "dtype": "float32",
            "origin": origin,
            "frozen": source is not None,
        },
        {
            "name": "head.weight",
            "shape": [5, hidden],
            "dtype": "float32",
            "origin": "new" if source is None else "reinitialized",
            "frozen": False,
        },
    ]
    if source == "ft-a":  # a grandchild gets an extra adapter layer
        tensors.append(
            {
                "name": "adapter.weight",
                "shape": [hidden, hidden],
                "dtype": "float32",
                "origin": "new",
                "frozen": False,
            }
        )
    doc = {
        "kind": "model",
        "schema_version": 1,
        "name": name,
        "spec": spec,
        "spec_digest": digest(spec),
        "source": None
        if parent is None
        else {"model": str(source), "relation": "finetune", "id": parent.id},
        "datasets": {"train": {"name": spec["data"]["train"], "id": digest(spec["data"]["train"])}},
        "weights": {"path": "weights.safetensors", "format": "safetensors", **hashes},
        "architecture": {"config": {"family": "mlp", "hidden": [hidden]}, "tensors": tensors},
        "parameters": {"total": 100, "trainable": 100, "transferred": 0},
        "metrics": {"accuracy": accuracy, "loss": round(1 - accuracy, 6)},
        "gates": [],
        "run": run or RUN,
    }
    return content_id(doc) if dry else reg.write_model_manifest(name, doc)


WEIGHTS_V1 = b"base weights, first training run " * 64
WEIGHTS_V2 = b"base weights, retrained " * 80


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> dict[str, Any]:
    """The three-commit repository (built once; tests that write work on a copy)."""
    repo = tmp_path_factory.mktemp("versions") / "repo"
    shutil.copytree(registry_template, repo, symlinks=True)
    reg = Registry.open(repo)
    for name, source in DATASETS.items():
        write(reg.dataset_dir(name) / "spec.yaml", f"source: {source}\n")
    ids: dict[str, str] = {}
    ids["base1"] = put_model(reg, "base", weights=WEIGHTS_V1, accuracy=0.8)
    ids["a1"] = put_model(reg, "ft-a", source="base")
    ids["b1"] = put_model(reg, "ft-b", source="base", accuracy=0.85)
    dvc(repo, "add", "-q", "models/base/weights.safetensors")
    c1 = commit(repo, "base and two derived models", "2026-01-01T10:00:00+00:00")
    ids["base2"] = put_model(reg, "base", weights=WEIGHTS_V2, accuracy=0.9, hidden=48, epochs=3)
    dvc(repo, "add", "-q", "models/base/weights.safetensors")
    c2 = commit(repo, "retrain the base", "2026-01-02T10:00:00+00:00")
    same = put_model(
        reg,
        "base",
        accuracy=0.9,
        hidden=48,
        epochs=3,
        run={**RUN, "started": "2026-01-03T00:00:00Z"},
    )
    assert same == ids["base2"]
    ids["b2"] = put_model(reg, "ft-b", source="ft-a", accuracy=0.95)
    c3 = commit(repo, "re-parent ft-b onto ft-a", "2026-01-03T10:00:00+00:00")
    assert git(repo, "show", "--stat", "--format=", "HEAD").count("models/base/manifest.json")
    return {"repo": repo, "ids": ids, "commits": [c1, c2, c3]}


@pytest.fixture
def work(built: dict[str, Any], tmp_path: Path) -> Registry:
    """A private copy of the three-commit repository."""
    shutil.copytree(built["repo"], tmp_path / "repo", symlinks=True)
    return Registry.open(tmp_path / "repo")


def at(when: str) -> dict[str, str]:
    """Environment for a tag created at a fixed time (GTO orders stages by tag time)."""
    return {"GIT_COMMITTER_DATE": when}


# -- log ---------------------------------------------------------------------------------------


def test_log_lists_distinct_ids_newest_first(built: dict[str, Any]) -> None:
    reg = Registry.open(built["repo"])
    ids, (c1, c2, c3) = built["ids"], built["commits"]
    base = v.history(reg, "base")
    # commit 3 rewrote base's manifest (new run block) without changing its id
    assert [(x.id, x.commit) for x in base] == [(ids["base2"], c2), (ids["base1"], c1)]
    assert base[0].metrics == {"accuracy": 0.9, "loss": 0.1}
    assert base[0].date == "2026-01-02T10:00:00+00:00"
    assert base[0].author == "Test Author"
    assert base[0].source_id is None
    ftb = v.history(reg, "ft-b")
    assert [(x.id, x.commit) for x in ftb] == [(ids["b2"], c3), (ids["b1"], c1)]
    assert ftb[0].source_id == ids["a1"] and ftb[1].source_id == ids["base1"]
    assert [x.id for x in v.history(reg, "ft-a")] == [ids["a1"]]
    assert ftb[0].to_dict()["commit"] == c3


def test_all_history_covers_every_model(built: dict[str, Any]) -> None:
    reg = Registry.open(built["repo"])
    ids, (c1, c2, c3) = built["ids"], built["commits"]
    rows = {(x.name, x.id, x.commit) for x in v.all_history(reg)}
    assert rows == {
        ("base", ids["base1"], c1),
        ("ft-a", ids["a1"], c1),
        ("ft-b", ids["b1"], c1),
        ("base", ids["base2"], c2),
        ("ft-b", ids["b2"], c3),
    }
    assert v.all_history(reg)[0].commit == c3  # newest first


def test_log_of_unknown_model_and_of_a_deleted_then_restored_manifest(work: Registry) -> None:
    with pytest.raises(ModelNotFound, match="no model named 'nope'"):
        v.history(work, "nope")
    manifest = work.model_dir("ft-a") / "manifest.json"
    kept = manifest.read_bytes()
    manifest.unlink()
    commit(work.repo_root, "drop ft-a's manifest", "2026-01-04T10:00:00+00:00")
    manifest.write_bytes(kept)
    c5 = commit(work.repo_root, "restore it", "2026-01-05T10:00:00+00:00")
    # the same id after a gap is a new run, introduced by the commit that restored it
    assert v.history(work, "ft-a")[0].commit == c5


# -- NAME@REF ----------------------------------------------------------------------------------


def test_resolve_every_kind_of_ref(work: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    ids, (c1, c2, _c3) = work_ids(work)
    assert v.resolve(work, "base").id == ids["base2"]  # working tree
    assert v.resolve(work, "base@HEAD~2").id == ids["base1"]  # git revision
    assert v.resolve(work, "base@main").id == ids["base2"]  # branch
    assert v.resolve(work, f"base@{c1[:8]}").id == ids["base1"]  # commit prefix
    assert v.resolve(work, f"base@{ids['base1'][7:13]}").id == ids["base1"]  # id prefix
    assert v.resolve(work, f"base@{ids['base1'][:13]}").id == ids["base1"]  # sha256: prefix
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-02-01T00:00:00+00:00")
    v.tag(work, "base", "v1.0.0", ref=c1)
    assert v.resolve(work, "base@v1.0.0").id == ids["base1"]  # version tag
    v.promote(work, "base", "prod", ref="v1.0.0")
    assert v.resolve(work, "base@prod").id == ids["base1"]  # stage
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-02-02T00:00:00+00:00")
    v.promote(work, "base", "prod", ref=c2)
    assert v.resolve(work, "base@prod").id == ids["base2"]  # the latest assignment wins


def work_ids(reg: Registry) -> tuple[dict[str, str], list[str]]:
    """Ids and commits of a copied repository, read back from its history."""
    base, a, b = (v.history(reg, n) for n in ("base", "ft-a", "ft-b"))
    ids = {"base1": base[1].id, "base2": base[0].id, "a1": a[0].id, "b1": b[1].id, "b2": b[0].id}
    return ids, [base[1].commit, base[0].commit, b[0].commit]


def test_resolve_errors_are_one_clear_line(work: Registry) -> None:
    with pytest.raises(GitError, match="unknown reference 'nowhere' for model 'base'"):
        v.resolve(work, "base@nowhere")
    with pytest.raises(StemmaError, match=r"no version v9\.0\.0"):
        v.resolve(work, "base@v9.0.0")
    with pytest.raises(StemmaError, match="no version of model 'base' has a manifest id"):
        v.resolve(work, "base@sha256:ffffffffffff0000")
    with pytest.raises(InvalidName, match="too short"):
        v.resolve(work, "base@sha256:ab")
    write(work.model_dir("late") / "spec.yaml", "data: {train: d0}\n")
    commit(work.repo_root, "declare late", "2026-01-04T10:00:00+00:00")
    with pytest.raises(ModelNotFound, match="with a manifest at revision HEAD~1"):
        v.resolve(work, "late@HEAD~1")
    with pytest.raises(StemmaError, match="has no manifest in the working tree"):
        v.resolve(Registry.open(work.repo_root), "late")


def test_ambiguous_id_prefix(work: Registry) -> None:
    # find two manifests of one model whose ids share 4 hex digits, commit both
    seen: dict[str, float] = {}
    pair: tuple[float, float] | None = None
    for i in range(4000):
        acc = 0.5 + i / 10000
        ident = put_model(work, "amb", accuracy=acc, dry=True)
        if ident[7:11] in seen:
            pair = (seen[ident[7:11]], acc)
            break
        seen[ident[7:11]] = acc
    assert pair is not None
    for n, acc in enumerate(pair):
        put_model(work, "amb", accuracy=acc)
        commit(work.repo_root, f"amb {n}", f"2026-01-0{4 + n}T10:00:00+00:00")
    prefix = v.history(work, "amb")[0].id[7:11]
    with pytest.raises(StemmaError, match=f"prefix '{prefix}' is ambiguous"):
        v.resolve(work, f"amb@{prefix}")


# -- diff --------------------------------------------------------------------------------------


def test_diff_of_a_retrained_base(built: dict[str, Any]) -> None:
    reg = Registry.open(built["repo"])
    d = diffs.diff(reg, "base@HEAD~2", "base@HEAD")
    assert d.a.id == built["ids"]["base1"] and d.b.id == built["ids"]["base2"]
    assert not d.same and not d.source.changed and d.weights.changed
    spec = {c.pointer: (c.before, c.after) for c in d.spec}
    assert spec == {"/training/epochs": (2, 3), "/architecture/hidden": ([32], [48])}
    acc = next(m for m in d.metrics if m.metric == "accuracy")
    assert acc.to_dict() == {"metric": "accuracy", "before": 0.8, "after": 0.9, "delta": 0.1}
    tensors = {t.name: (t.change, t.fields) for t in d.tensors}
    assert tensors == {
        "body.0.weight": ("changed", ("shape",)),
        "head.weight": ("changed", ("shape",)),
    }
    doc = d.to_dict()
    assert list(doc) == [
        "a",
        "b",
        "same",
        "source",
        "spec",
        "metrics",
        "tensors",
        "datasets",
        "weights",
    ]
    assert doc["a"] == {"ref": "base@HEAD~2", "name": "base", "id": built["ids"]["base1"]}
    assert doc["source"] == {"before": None, "after": None, "changed": False}
    assert doc["tensors"][0] == {
        "name": "body.0.weight",
        "change": "changed",
        "fields": ["shape"],
        "before": {
            "shape": [32, 64],
            "dtype": "float32",
            "origin": "new",
            "frozen": False,
            "source_name": None,
        },
        "after": {
            "shape": [48, 64],
            "dtype": "float32",
            "origin": "new",
            "frozen": False,
            "source_name": None,
        },
    }
    assert doc["weights"]["changed"] and doc["weights"]["before"] == d.weights.before
    same = diffs.diff(reg, "base@HEAD~1", "@HEAD")  # "@REF" names the same model
    assert same.same and same.b.ref == "base@HEAD" and same.to_dict()["same"]


def test_diff_of_a_reparented_model_and_of_two_models(built: dict[str, Any]) -> None:
    reg = Registry.open(built["repo"])
    d = diffs.diff(reg, "ft-b@HEAD~1", "ft-b")
    before, after = d.source.before, d.source.after
    assert before is not None and after is not None
    assert before.model == "base" and after.model == "ft-a"
    assert after.id == built["ids"]["a1"]
    assert d.to_dict()["source"]["after"] == {
        "model": "ft-a",
        "relation": "finetune",
        "id": built["ids"]["a1"],
    }
    assert {"pointer": "/source/model", "before": "base", "after": "ft-a"} in [
        c.to_dict() for c in d.spec
    ]
    assert [(t.name, t.change) for t in d.tensors] == [("adapter.weight", "added")]
    added = d.tensors[0].after
    assert added is not None and added.shape == (32, 32)
    assert d.to_dict()["tensors"][0]["after"]["shape"] == [32, 32]
    assert d.to_dict()["tensors"][0]["before"] is None and d.tensors[0].fields == ()
    back = diffs.diff(reg, "ft-b", "ft-b@HEAD~1")
    assert [(t.name, t.change) for t in back.tensors] == [("adapter.weight", "removed")]
    two = diffs.diff(reg, "base", "ft-a")
    origins = {
        t.name: (t.before.origin, t.after.origin)
        for t in two.tensors
        if "origin" in t.fields and t.before is not None and t.after is not None
    }
    assert origins == {
        "body.0.weight": ("new", "transferred"),
        "head.weight": ("new", "reinitialized"),
    }
    assert two.datasets[0].role == "train"
    train = two.to_dict()["datasets"][0]
    assert train["before"]["name"] == "d0" and train["after"]["name"] == "d1"


# -- tags and stages ---------------------------------------------------------------------------


def test_tag_and_promote_follow_gto_grammar(
    work: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, (c1, c2, c3) = work_ids(work)
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-02-01T00:00:00+00:00")
    t1 = v.tag(work, "base", "v1.0.0", ref="HEAD~2")
    assert (t1.tag, t1.commit, t1.id, t1.version) == ("base@v1.0.0", c1, ids["base1"], "v1.0.0")
    message = git(work.repo_root, "tag", "-l", "--format=%(contents)", "base@v1.0.0")
    assert json.loads(message) == {"id": ids["base1"], "source": None}
    assert git(work.repo_root, "cat-file", "-t", "base@v1.0.0") == "tag"  # annotated
    v.tag(work, "ft-b", "v0.1.0")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-02-02T00:00:00+00:00")
    v.tag(work, "base", "v1.1.0")  # HEAD: base's id there was introduced by commit 2
    s1 = v.promote(work, "base", "staging", ref="v1.0.0")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-02-03T00:00:00+00:00")
    s2 = v.promote(work, "base", "prod", ref="v1.0.0")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-02-04T00:00:00+00:00")
    s3 = v.promote(work, "base", "prod")
    s4 = v.promote(work, "ft-b", "prod")
    # N counts across every stage of the model; each model has its own counter
    assert [s.tag for s in (s1, s2, s3, s4)] == [
        "base#staging#1",
        "base#prod#2",
        "base#prod#3",
        "ft-b#prod#1",
    ]
    assert (s3.stage, s3.number, s3.commit, s3.id) == ("prod", 3, c3, ids["base2"])
    stages = v.current_stages(work, "base")
    assert {k: t.commit for k, t in stages.items()} == {"prod": c3, "staging": c1}
    listed = v.list_tags(work, "base")
    assert [t.tag for t in listed] == [
        "base@v1.0.0",
        "base@v1.1.0",
        "base#staging#1",
        "base#prod#2",
        "base#prod#3",
    ]
    assert listed[0].date.startswith("2026-02-01T00:00:00")
    assert {t.name for t in v.list_tags(work)} == {"base", "ft-b"}
    entries = v.log(work, "base")
    assert [(e.version.commit, e.labels) for e in entries] == [
        (c2, ("v1.1.0", "prod")),
        (c1, ("v1.0.0", "staging")),
    ]
    # GTO's undo tag takes a stage back off a version
    git(work.repo_root, "tag", "-a", "-m", "undo", "base#prod!#4", c3)
    assert v.current_stages(work, "base")["prod"].commit == c1
    assert v.promote(work, "base", "dev").tag == "base#dev#5"


def test_tag_and_promote_refusals(work: Registry) -> None:
    v.tag(work, "base", "v1.0.0", ref="HEAD~2")
    with pytest.raises(StemmaError, match=r"tag base@v1\.0\.0 already exists"):
        v.tag(work, "base", "v1.0.0")
    with pytest.raises(InvalidName, match=r"invalid version '1\.2'"):
        v.tag(work, "base", "1.2")
    with pytest.raises(InvalidName, match=r"invalid version 'v01\.2\.3'"):
        v.tag(work, "base", "v01.2.3")  # GTO's semver has no leading zeros
    with pytest.raises(StemmaError, match=r"base@v1\.0\.0 already names this version"):
        v.tag(work, "base", "v1.0.1", ref="HEAD~2")
    with pytest.raises(InvalidName, match="invalid stage"):
        v.promote(work, "base", "Prod!")
    v.promote(work, "base", "prod")
    with pytest.raises(StemmaError, match="already in stage 'prod'"):
        v.promote(work, "base", "prod", ref="HEAD~1")  # same id, same stage
    # absent at the commit: a model declared and built only in the working tree
    put_model(work, "late")
    with pytest.raises(ModelNotFound, match="with a manifest at revision HEAD"):
        v.tag(work, "late", "v1.0.0")
    with pytest.raises(StemmaError, match="only in the working tree: commit it first"):
        v.tag(work, "late", "v1.0.0", ref=v.resolve(work, "late").id)
    # invalid at the commit: a manifest that breaks the schema
    path = work.model_dir("ft-a") / "manifest.json"
    doc = json.loads(path.read_text())
    doc["metrics"]["accuracy"] = "high"
    path.write_text(json.dumps(doc))
    commit(work.repo_root, "break ft-a", "2026-01-04T10:00:00+00:00")
    with pytest.raises(StemmaError, match=r"manifest.json at HEAD .*/metrics/accuracy"):
        v.promote(work, "ft-a", "prod")
    # a manifest whose recorded id does not match its content
    doc["metrics"]["accuracy"] = 0.1
    path.write_text(json.dumps(doc))
    commit(work.repo_root, "tamper ft-a", "2026-01-05T10:00:00+00:00")
    with pytest.raises(StemmaError, match="does not match its content"):
        v.tag(work, "ft-a", "v1.0.0")
    assert [t.tag for t in v.list_tags(work)] == ["base@v1.0.0", "base#prod#1"]


def test_gto_show_agrees(work: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    for when, call in [
        ("2026-02-01T00:00:00+00:00", lambda: v.tag(work, "base", "v1.0.0", ref="HEAD~2")),
        ("2026-02-02T00:00:00+00:00", lambda: v.tag(work, "base", "v1.1.0")),
        ("2026-02-03T00:00:00+00:00", lambda: v.promote(work, "base", "staging", ref="v1.0.0")),
        ("2026-02-04T00:00:00+00:00", lambda: v.promote(work, "base", "prod", ref="v1.0.0")),
        ("2026-02-05T00:00:00+00:00", lambda: v.promote(work, "base", "prod", ref="v1.1.0")),
    ]:
        monkeypatch.setenv("GIT_COMMITTER_DATE", when)
        call()
    gto = str(VENV_BIN / "gto")
    state = json.loads(
        subprocess.run(
            [gto, "show", "--json"], cwd=work.repo_root, check=True, capture_output=True, text=True
        ).stdout
    )
    ours = v.current_stages(work, "base")
    tags_by_commit = {t.commit: t.version for t in v.list_tags(work, "base") if t.version}
    assert state["base"]["version"] == "v1.1.0"
    assert state["base"]["stage"] == {stage: tags_by_commit[t.commit] for stage, t in ours.items()}
    assert state["base"]["stage"] == {"prod": "v1.1.0", "staging": "v1.0.0"}
    versions = json.loads(
        subprocess.run(
            [gto, "show", "base", "--json"],
            cwd=work.repo_root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert {(x["version"], x["commit_hexsha"]) for x in versions} == {
        (t.version, t.commit) for t in v.list_tags(work, "base") if t.version
    }
    assert {x["version"] for x in versions} == {"v1.0.0", "v1.1.0"}


# -- checkout ----------------------------------------------------------------------------------


def test_checkout_restores_old_weights_from_the_cache(work: Registry) -> None:
    weights = work.model_dir("base") / "weights.safetensors"
    assert weights.read_bytes() == WEIGHTS_V2
    assert v.checkout(work, "base@HEAD~2") == weights
    assert weights.read_bytes() == WEIGHTS_V1
    v.checkout(work, "base")  # the working-tree version
    assert weights.read_bytes() == WEIGHTS_V2
    assert not list(weights.parent.glob(".*.tmp"))
    # a manifest naming weights that no cache or remote holds
    with pytest.raises(
        StemmaError, match=r"in neither the DVC cache nor the default remote \(No remote"
    ):
        v.checkout(work, "ft-a")


def test_checkout_fetches_from_the_default_remote(work: Registry, tmp_path: Path) -> None:
    repo = work.repo_root
    # a local (unversioned) remote: DVC reads each old commit's config, plus config.local
    (repo / ".dvc" / "config.local").write_text(
        f"[core]\n    remote = store\n['remote \"store\"']\n    url = {tmp_path / 'store'}\n"
    )
    dvc(repo, "push", "-q", "--all-commits")
    assert len([p for p in (tmp_path / "store").rglob("*") if p.is_file()]) == 2
    shutil.rmtree(repo / ".dvc" / "cache")
    assert v.checkout(work, "base@HEAD~2").read_bytes() == WEIGHTS_V1
    assert not list(repo.glob(".stemma-fetch-*"))


# -- command line ------------------------------------------------------------------------------

Cli = Callable[[list[str], Path], Any]


def test_cli_versions_commands(work: Registry, cli: Cli) -> None:
    repo = work.repo_root
    ids, (c1, c2, _c3) = work_ids(work)
    res = cli(["log", "base", "--json"], repo)
    assert res.code == 0
    rows = json.loads(res.stdout)
    assert [(r["id"], r["commit"], r["labels"]) for r in rows] == [
        (ids["base2"], c2, []),
        (ids["base1"], c1, []),
    ]
    res = cli(["tag", "base", "v1.0.0", "--ref", "HEAD~2"], repo)
    assert res.code == 0 and "base@v1.0.0" in res.stdout
    res = cli(["promote", "base", "prod", "--ref", "v1.0.0"], repo)
    assert res.code == 0 and "base#prod#1" in res.stdout
    res = cli(["log", "base"], repo)
    assert res.code == 0 and ids["base1"][7:17] in res.stdout
    assert "v1.0.0" in res.stdout and "prod" in res.stdout
    res = cli(["show", "base@prod", "--json"], repo)
    assert res.code == 0 and json.loads(res.stdout)["manifest"]["id"] == ids["base1"]
    res = cli(["diff", "base@v1.0.0", "base", "--json"], repo)
    assert res.code == 0 and json.loads(res.stdout)["metrics"][0]["delta"] == 0.1
    res = cli(["diff", "ft-b@HEAD~1", "ft-b"], repo)
    assert res.code == 0 and "adapter.weight" in res.stdout and "ft-a" in res.stdout
    res = cli(["checkout", "base@v1.0.0"], repo)
    assert res.code == 0 and "models/base/weights.safetensors" in res.stdout
    assert (work.model_dir("base") / "weights.safetensors").read_bytes() == WEIGHTS_V1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["log", "nope"], "no model named 'nope'"),
        (["tag", "base", "1.0"], "invalid version '1.0'"),
        (["show", "base@nowhere"], "unknown reference 'nowhere'"),
        (["diff", "base@HEAD~9", "base"], "unknown reference 'HEAD~9'"),
        (["promote", "base", "prod", "--ref", "v3.0.0"], "has no version v3.0.0"),
    ],
)
def test_cli_failures_exit_1_with_one_line(
    built: dict[str, Any], cli: Cli, args: list[str], message: str
) -> None:
    before = git(built["repo"], "tag", "--list")
    res = cli(args, built["repo"])
    assert res.code == 1
    assert message in res.stderr and res.stderr.startswith("error: ")
    assert len(res.stderr.strip().splitlines()) == 1
    assert git(built["repo"], "tag", "--list") == before


def test_content_ids_in_fixture_are_real(built: dict[str, Any]) -> None:
    reg = Registry.open(built["repo"])
    for name in ("base", "ft-a", "ft-b"):
        manifest = reg.model_manifest(name)
        assert manifest is not None and content_id(manifest.raw) == manifest.id
