"""DVC sees a model's hyper-parameters: each model stage declares the `training` and
`strategy` blocks of its spec (and the whole stemma.yaml, defaults included) as DVC params,
so `dvc params diff`, `dvc exp show` and `dvc exp run -S` name them; the spec stays a
dependency, so what makes a stage stale is as before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SPECS as PLAIN_SPECS
from conftest import git, new_registry
from stemma.migration.build import build_dataset, build_model
from stemma.registry import Registry
from stemma.registry.pipeline import pipefiles
from stemma.registry.pipeline import render as pipeline

TRAINING = "{epochs: 1, batch_size: 64, optimizer: adam, lr: 1.0e-2, seed: 0}"
SPECS = {
    "datasets/d04/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4], limit: 200}
    """,
    "models/base/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [8]}}
        data: {{train: d04}}
        training: {TRAINING}
    """,
    "models/ft/spec.yaml": f"""
        source: {{model: base}}
        data: {{train: d04}}
        strategy: {{reinit: ["head.*"]}}
        training: {TRAINING}
    """,
    "models/other/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [8]}}
        data: {{train: d04}}
        training: {TRAINING}
    """,
}
MODELS = ("base", "ft", "other")


def dvc(repo: Path, *args: str) -> str:
    """Run the real DVC command line in `repo`; its output (it must succeed)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def ran(out: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def stale(repo: Path) -> set[str]:
    """The stages `dvc status` calls changed."""
    return set(json.loads(dvc(repo, "status", "--json")))


def ids(repo: Path) -> dict[str, str]:
    """Every model's manifest id."""
    return {
        m: json.loads((repo / "models" / m / "manifest.json").read_text())["id"] for m in MODELS
    }


def stage(name: str) -> str:
    return f"models/{name}/dvc.yaml:model-{name}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """A registry whose dataset and models are built (in-process, one torch import), its
    pipeline written and locked by DVC, all committed: nothing is stale."""
    reg = new_registry(tmp_path_factory.mktemp("params") / "repo", registry_template, SPECS)
    repo = reg.repo_root
    build_dataset(reg, "d04")
    for name in MODELS:
        build_model(Registry.open(repo), name)
    assert pipefiles.write(Registry.open(repo))
    dvc(repo, "commit", "--force")  # lock the outputs as they stand: no rebuild
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "built")
    assert stale(repo) == set()
    return repo


@pytest.fixture
def repo(built: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the built registry (cache and all) for one test to change."""
    copy = tmp_path / "repo"
    shutil.copytree(built, copy, symlinks=True)
    yield copy


def _params(stage_body: dict[str, Any]) -> list[Any]:
    return list(stage_body.get("params") or [])


def test_model_stages_declare_the_spec_blocks_they_have(registry: Registry) -> None:
    reg = new_registry(registry.repo_root.parent / "r", registry.repo_root, PLAIN_SPECS)
    stages = pipeline.render_dict(reg)["stages"]
    spec = "models/{}/spec.yaml".format
    assert {k: _params(v) for k, v in stages.items() if k.startswith("model-")} == {
        "model-base": [{"stemma.yaml": None}, {spec("base"): ["training"]}],
        "model-ft": [{"stemma.yaml": None}, {spec("ft"): ["training", "strategy"]}],
        "model-scratch": [{"stemma.yaml": None}],  # neither block: no key DVC would miss
    }
    for name in ("base", "ft", "scratch"):  # the spec stays a dependency: any edit is stale
        assert spec(name) in stages[f"model-{name}"]["deps"]
    assert not any(_params(v) for k, v in stages.items() if not k.startswith("model-"))


def test_params_diff_names_a_changed_field_and_only_its_model_goes_stale(repo: Path) -> None:
    spec = repo / "models/other/spec.yaml"
    plain = spec.read_text()
    spec.write_text(plain.replace("lr: 1.0e-2", "lr: 3.0e-3"))
    assert json.loads(dvc(repo, "params", "diff", "--json")) == {
        "models/other/spec.yaml": {"training.lr": {"old": 0.01, "new": 0.003, "diff": -0.007}}
    }
    assert "models/other/spec.yaml  training.lr  0.01    0.003" in dvc(repo, "params", "diff")
    assert stale(repo) == {stage("other")}

    # A change outside the two blocks is no param, yet the stage is stale as before.
    spec.write_text(plain + "description: same weights, new words\n")
    assert dvc(repo, "params", "diff", "--json").strip() in ("", "{}")
    assert stale(repo) == {stage("other")}


def test_registry_defaults_are_params_of_every_model_stage(repo: Path) -> None:
    settings = repo / "stemma.yaml"
    settings.write_text(settings.read_text() + "defaults:\n  training: {weight_decay: 0.0}\n")
    diff = json.loads(dvc(repo, "params", "diff", "--json"))
    assert diff == {"stemma.yaml": {"defaults.training.weight_decay": {"old": None, "new": 0.0}}}
    assert stale(repo) == {stage(m) for m in MODELS}


def test_exp_run_sets_a_spec_field_and_exp_show_has_its_column(repo: Path) -> None:
    before = ids(repo)
    out = dvc(repo, "exp", "run", "-S", "models/other/spec.yaml:training.epochs=2", "-n", "e2")
    assert ran(out) == {stage("other")}  # re-derived as by `dvc repro`, and nothing else
    after = ids(repo)
    assert after["other"] != before["other"]
    assert {m: after[m] for m in ("base", "ft")} == {m: before[m] for m in ("base", "ft")}
    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    base = shown[-1]  # the branch's commit, then its experiments
    assert base["name"] == "main"
    params = base["data"]["params"]["models/other/spec.yaml"]["data"]
    assert params["training"]["epochs"] == 1 and set(params) == {"training"}
    exps = [e for run in base["experiments"] or [] for e in run["revs"] if e["name"] == "e2"]
    assert exps, shown
    got = exps[0]["data"]["params"]
    assert got["models/other/spec.yaml"]["data"]["training"]["epochs"] == 2
    assert got["models/ft/spec.yaml"]["data"]["strategy"] == {"reinit": ["head.*"]}
    assert stale(repo) == set()
    assert pipefiles.differences(Registry.open(repo)) == []  # `stemma pipeline --check` agrees
