"""`stemma repro`: the stale stages from the index, in lineage order, run by DVC itself."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import dvc, git, new_registry
from stemma.registry import Registry
from stemma.registry.pipeline import repro
from stemma.registry.query.listing import list_entries
from stemma.registry.rules import status
from stemma.registry.rules.dag import Forest
from test_pipeline import SPECS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import synth


def _target(name: str) -> str:
    return f"models/{name}/dvc.yaml:model-{name}"


def _locked(root: Path, rel: Path) -> Any:
    """A dvc.lock as parsed, every hash checked against the file it names; the hashes of
    manifests (whose `run` block holds the time of the build) then left out."""
    lock = yaml.safe_load((root / rel).read_text())
    for stage in lock["stages"].values():
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
            blob = (root / entry["path"]).read_bytes()
            assert entry["md5"] == hashlib.md5(blob).hexdigest(), entry["path"]
            if entry["path"].endswith("manifest.json"):
                entry["md5"] = entry["size"] = "manifest"
    return lock


def _synthetic(tmp_path: Path) -> Registry:
    root = tmp_path / "reg"
    synth.generate(root, 60, shape="mixed", seed=3, family_size=20, unbuilt=0.1)
    for kind, out in (("datasets", "data.npz"), ("models", "weights.safetensors")):
        for folder in (root / kind).iterdir():  # what a built entry has beside its manifest
            if (folder / "manifest.json").exists():
                (folder / out).write_bytes(b"stand-in")
    git(root, "init", "-q")
    return Registry.open(root)


def test_plan_takes_stages_whose_outputs_are_missing(tmp_path: Path) -> None:
    """A fresh clone has the manifests from git but no weights until `dvc pull`: those stages
    are handed to DVC, as `dvc repro` finds them, and nothing else is."""
    reg = _synthetic(tmp_path)
    before = repro.plan(reg)
    fresh = next(n for n in reg.model_names() if n not in before.models)
    (reg.model_dir(fresh) / "weights.safetensors").unlink()
    dataset = reg.dataset_names()[0]
    (reg.dataset_dir(dataset) / "data.npz").unlink()
    after = repro.plan(reg)
    assert set(after.models) == {*before.models, fresh}
    assert after.datasets == sorted({*before.datasets, dataset})
    assert after.targets[0] == f"datasets/{dataset}/dvc.yaml:dataset-{dataset}"


def test_plan_is_the_stale_set_and_its_descendants_in_lineage_order(tmp_path: Path) -> None:
    reg = _synthetic(tmp_path)
    edited = synth.model_name(21)  # a model below the second family's base
    spec = reg.model_dir(edited) / "spec.yaml"
    spec.write_text(spec.read_text().replace("Synthetic model", "Edited model"))
    reg = Registry.open(reg.repo_root)
    rows = {e.name: e for e in list_entries(reg, "model")}
    todo = {n for n, e in rows.items() if e.status in (status.STALE, status.UNBUILT)}
    assert edited in todo and len(todo) > 1
    forest = Forest(rows, {n: e.source for n, e in rows.items() if e.source})
    want = set(forest.union(todo))
    plan = repro.plan(reg)
    assert set(plan.models) == want and plan.datasets == []
    assert plan.targets == [_target(m) for m in plan.models]
    for i, name in enumerate(plan.models):  # every model after its source
        source = rows[name].source
        if source in want:
            assert plan.models.index(source) < i

    # A target: it and the stale models it derives from; downstream: it and all below it.
    below = forest.descendants(edited)
    leaf = next(m for m in reversed(plan.models) if m in below) if below else edited
    up = repro.plan(reg, [leaf])
    assert up.models[-1] == leaf and set(up.models) <= want | {leaf}
    assert edited in up.models or leaf == edited
    fresh = next(n for n in sorted(rows) if n not in want)
    assert repro.plan(reg, [fresh]).models == [fresh]  # DVC decides for a named target
    down = repro.plan(reg, [edited], downstream=True)
    assert set(down.models) == {edited, *below}


def test_cli_dry_json_and_errors(tmp_path: Path, cli) -> None:
    reg = _synthetic(tmp_path)
    res = cli(["repro", "--dry"], reg.repo_root)
    assert res.code == 0, res.stderr
    assert res.stdout.splitlines() == repro.plan(reg).targets
    res = cli(["repro", "--json", "nope"], reg.repo_root)
    assert res.code == 1 and res.stderr.startswith("error: no model named 'nope'"), res.stderr


@pytest.mark.slow
def test_repro_leaves_the_locks_as_dvc_repro_does(registry: Registry, cli) -> None:
    reg = new_registry(registry.repo_root.parent / "rp", registry.repo_root, SPECS)
    repo = reg.repo_root
    assert cli(["pipeline"], repo).code == 0
    res = cli(["repro", "--dry"], repo)
    first = [
        "datasets/d04/dvc.yaml:dataset-d04",
        "datasets/d59/dvc.yaml:dataset-d59",
        *(_target(m) for m in ("base", "ft", "other", "probe")),
    ]
    assert res.stdout.splitlines() == first
    assert cli(["repro"], repo).code == 0  # a first build, from nothing
    assert "up to date" in dvc(repo, "status")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "build")
    assert cli(["repro"], repo).stdout.startswith("nothing to reproduce")

    spec = repo / "models/base/spec.yaml"
    spec.write_text(spec.read_text().replace("lr: 1.0e-2", "lr: 3.0e-3"))
    twin = repo.parent / "twin"
    shutil.copytree(repo, twin, symlinks=True)
    res = cli(["repro", "--dry"], repo)
    assert res.stdout.splitlines() == [_target(m) for m in ("base", "ft", "probe")]
    assert cli(["repro"], repo).code == 0
    dvc(twin, "repro")
    locks = sorted(p.relative_to(repo) for p in repo.rglob("dvc.lock"))
    assert locks == sorted(p.relative_to(twin) for p in twin.rglob("dvc.lock"))
    assert len(locks) == 6
    for rel in locks:
        assert _locked(repo, rel) == _locked(twin, rel), rel
    for name in ("base", "ft", "probe", "other"):
        rel = Path("models", name, "weights.safetensors")
        assert (repo / rel).read_bytes() == (twin / rel).read_bytes(), name
    assert "Data and pipelines are up to date." in dvc(repo, "status")
    assert cli(["repro"], repo).stdout.startswith("nothing to reproduce")

    # DVC's exit status comes through: a stage that fails fails the command.
    spec.write_text(spec.read_text().replace("family: mlp", "family: no-such-family"))
    assert cli(["repro", "base"], repo).code != 0
