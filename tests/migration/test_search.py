"""Hyper-parameter search: determinism, pruning, bad blocks, the build hook, `dvc repro`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median
from typing import Any

import pytest
from conftest import write
from stemma.migration.architectures import make_config
from stemma.migration.build import build_dataset, build_model
from stemma.migration.data import DatasetArrays, materialize
from stemma.migration.search import VALIDATION, SearchSpace, prepare_module, search
from stemma.migration.strategy import Strategy
from stemma.migration.train import TrainConfig
from stemma.registry import Registry
from stemma.registry.errors import BuildError

PARAMS = {
    "lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
    "batch_size": {"choices": [32, 64]},
}
TUNED = """
    architecture: {family: mlp, hidden: [16]}
    data: {train: d04}
    training:
      epochs: 2
      optimizer: adam
      seed: 0
      search:
        trials: 3
        params:
          lr: {low: 1.0e-4, high: 1.0e-1, log: true}
          batch_size: {choices: [32, 64]}
"""


@pytest.fixture(scope="module")
def digits() -> DatasetArrays:
    """Digits 0-4, 8x8."""
    return materialize({"source": "sklearn:digits", "select": {"classes": [0, 1, 2, 3, 4]}})


def run(
    digits: DatasetArrays, seed: int = 0, trials: int = 3, pruning: bool = False
) -> tuple[TrainConfig, dict[str, Any]]:
    config = make_config({"family": "mlp", "hidden": [16]}, digits.shape, 5)
    space = SearchSpace.from_spec({"params": PARAMS, "trials": trials, "pruning": pruning})
    cfg = TrainConfig(epochs=2, optimizer="adam", seed=seed)
    return search(
        space,
        cfg,
        lambda c: prepare_module(config, Strategy(), c.seed),
        digits.x_train,
        digits.y_train,
    )


def test_search_is_deterministic_given_the_seed(digits: DatasetArrays) -> None:
    best, record = run(digits)
    again_best, again = run(digits)
    assert again == record and again_best == best
    assert record["sampler"] == "tpe" and record["seed"] == 0 and record["pruner"] is None
    assert (record["metric"], record["direction"]) == ("accuracy", "maximize")
    assert [t["number"] for t in record["trials"]] == [0, 1, 2]
    assert all(
        t["state"] == "complete" and set(t["params"]) == set(PARAMS) for t in record["trials"]
    )
    top = max(record["trials"], key=lambda t: t["value"])
    assert record["best"] == {
        "number": top["number"],
        "params": top["params"],
        "value": top["value"],
    }
    assert (best.lr, best.batch_size) == (top["params"]["lr"], top["params"]["batch_size"])
    assert (best.epochs, best.optimizer, best.seed) == (2, "adam", 0)  # untouched settings
    # trials are scored on a stratified share of the training split only
    n = len(digits.y_train)
    assert record["validation"]["train_samples"] + record["validation"]["samples"] == n
    assert record["validation"]["samples"] == pytest.approx(VALIDATION * n, abs=5)
    _, other = run(digits, seed=1)
    assert [t["params"] for t in other["trials"]] != [t["params"] for t in record["trials"]]


def test_pruning_stops_trials_below_the_median(digits: DatasetArrays) -> None:
    _, record = run(digits, trials=6, pruning=True)
    assert record["pruner"] == "median"
    states = [t["state"] for t in record["trials"]]
    assert set(states) == {"complete", "pruned"}
    for i, trial in enumerate(record["trials"]):
        if trial["state"] == "complete":
            assert len(trial["intermediate"]) == 2 and trial["intermediate"][-1] == trial["value"]
            continue
        step = len(trial["intermediate"])
        assert step < 2 and trial["value"] == trial["intermediate"][-1]
        earlier = [
            t["intermediate"][step - 1] for t in record["trials"][:i] if t["state"] == "complete"
        ]
        assert len(earlier) >= 2 and trial["value"] < median(earlier)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {"params": {"dropout": {"low": 0, "high": 1}}},
            "/params/dropout: cannot search 'dropout'",
        ),
        ({"params": {"lr": {"low": 1.0}}}, "/params/lr: give low and high (or choices)"),
        ({"params": {"lr": {"low": 0.1, "high": 0.01}}}, "/params/lr: low 0.1 is above high 0.01"),
        ({"params": {"lr": {"low": 0, "high": 1, "log": True}}}, "/params/lr/low: a log range"),
        ({"params": {"epochs": {"low": 1.5, "high": 3}}}, "/params/epochs: epochs takes integer"),
        ({"params": {"lr": {"choices": [0.1], "low": 0}}}, "/params/lr: give either choices"),
        ({"params": {"lr": {"low": 0, "high": 1}}, "metric": "f1"}, "/metric: unknown metric"),
        ({"params": {}}, "/params: name at least one parameter"),
    ],
)
def test_bad_search_blocks_fail_with_a_pointer(block: dict[str, Any], message: str) -> None:
    with pytest.raises(BuildError) as err:
        SearchSpace.from_spec(block, "models/m/spec.yaml")
    assert str(err.value).startswith("models/m/spec.yaml at /training/search" + message)


def test_loss_is_minimized_by_default() -> None:
    space = SearchSpace.from_spec({"params": PARAMS, "metric": "loss"})
    assert space.direction == "minimize" and space.trials == 10 and not space.pruning


def test_build_records_the_trials_and_trains_with_the_best(
    registry: Registry, tmp_path: Path
) -> None:
    write(
        registry.root / "datasets" / "d04" / "spec.yaml",
        "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n",
    )
    write(registry.root / "models" / "tuned" / "spec.yaml", TUNED)
    reg = Registry.open(registry.root)
    build_dataset(reg, "d04")
    manifest = build_model(reg, "tuned")
    record = manifest["search"]
    assert len(record["trials"]) == 3 and record["best"]["params"].keys() == PARAMS.keys()
    assert reg.model_manifest("tuned").raw["search"] == record
    # the final weights are those of a plain build with the best settings written out
    best = record["best"]["params"]
    write(
        reg.root / "models" / "fixed" / "spec.yaml",
        "architecture: {family: mlp, hidden: [16]}\ndata: {train: d04}\ntraining: "
        + json.dumps({"epochs": 2, "optimizer": "adam", "seed": 0, **best})
        + "\n",
    )
    fixed = build_model(Registry.open(reg.root), "fixed")
    assert fixed["weights"]["sha256"] == manifest["weights"]["sha256"]
    assert fixed["metrics"] == manifest["metrics"]
    # same seed, same search: an identical rebuild has an identical id
    assert build_model(Registry.open(reg.root), "tuned")["id"] == manifest["id"]


@pytest.mark.slow
def test_search_through_dvc_repro(registry: Registry, cli: object) -> None:
    repo = registry.repo_root
    write(
        repo / "datasets" / "d04" / "spec.yaml",
        "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4], limit: 400}\n",
    )
    write(repo / "models" / "tuned" / "spec.yaml", TUNED)
    assert cli(["pipeline"], repo).code == 0  # type: ignore[operator]
    # the dataset stage is built here and recorded as done; dvc repro runs the model's build
    build_dataset(Registry.open(repo), "d04")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for args in (["commit", "--force", "datasets/d04/dvc.yaml:dataset-d04"], ["repro"]):
        done = subprocess.run(
            [sys.executable, "-m", "dvc", *args, "--quiet"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    manifest = Registry.open(repo).model_manifest("tuned")
    assert manifest is not None
    record = manifest.raw["search"]
    assert [t["number"] for t in record["trials"]] == [0, 1, 2]
    assert all(isinstance(t["value"], float) and t["params"] for t in record["trials"])
    assert record["best"]["value"] == max(t["value"] for t in record["trials"])
    assert "model-tuned:" in (repo / "models/tuned/dvc.lock").read_text()
    assert manifest.raw["metrics"]["accuracy"] > 0.5
