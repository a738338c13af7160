"""Behavioural checks run by the build: drift, forgetting, parameters, and bad declarations."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import new_registry, write
from stemma.migration.build import build_dataset, build_model
from stemma.migration.checks import probe_accuracy
from stemma.migration.forgetting import DEFAULT_MAX_DROP
from stemma.registry import Registry
from stemma.registry.errors import BuildError

BASE_TRAINING = "{epochs: 3, batch_size: 64, optimizer: adam, lr: 0.01, seed: 0}"
SPECS = {
    "datasets/d04/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
        split: {eval: 0.25, seed: 0}
    """,
    "datasets/d59/spec.yaml": """
        source: sklearn:digits
        select: {classes: [5, 6, 7, 8, 9], relabel: contiguous}
    """,
    "datasets/drot/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
        transforms: [{rotate: 90}]
    """,
    "datasets/d12/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
        transforms: [{resize: [12, 12]}]
    """,
    "models/base/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [32]}}
        data: {{train: d04}}
        training: {BASE_TRAINING}
    """,
    # held-out classes, new head: forgetting through linear probes
    "models/heldout/spec.yaml": """
        source: {model: base}
        data: {train: d59}
        strategy: {reinit: ["head.*"], freeze: ["body.0.*"]}
        training: {epochs: 2, optimizer: adam, lr: 0.01, seed: 0}
        checks: {forgetting: {data: d04}, drift: {}}
    """,
    # the same task under a domain shift, the source's head kept
    "models/rotated/spec.yaml": """
        source: {model: base}
        data: {train: drot}
        strategy: {mapping: exact}
        training: {epochs: 2, optimizer: adam, lr: 0.01, seed: 0}
        checks: {drift: {}}
    """,
    "models/gentle/spec.yaml": """
        source: {model: base}
        data: {train: drot}
        strategy: {mapping: exact}
        training: {epochs: 1, optimizer: sgd, lr: 0.001, seed: 0}
        checks: {forgetting: {data: d04, max_drop: 0.1}}
    """,
    "models/wrecked/spec.yaml": """
        source: {model: base}
        data: {train: drot}
        strategy: {mapping: exact}
        training: {epochs: 1, optimizer: sgd, lr: 2.0, seed: 0}
        checks: {forgetting: {data: d04, max_drop: 0.1}}
    """,
    "models/gated/spec.yaml": """
        source: {model: base}
        data: {train: drot}
        strategy: {mapping: exact}
        training: {epochs: 1, optimizer: adam, lr: 0.001, seed: 0}
        checks: {drift: {max_outlier_share: 0.2, permutations: 20}}
    """,
}
MODELS = ("base", "heldout", "rotated", "gentle", "wrecked", "gated")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """A registry with every spec above built once (shared; tests that change it copy it)."""
    reg = new_registry(tmp_path_factory.mktemp("checks") / "repo", registry_template, SPECS)
    repo = reg.repo_root
    for name in ("d04", "d59", "drot", "d12"):
        build_dataset(reg, name)
    for name in MODELS:
        build_model(Registry.open(repo), name)
    return repo


@pytest.fixture
def copy(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built registry, free to change."""
    shutil.copytree(built, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


def manifest(repo: Path, name: str) -> dict[str, Any]:
    found = Registry.open(repo).model_manifest(name)  # validates against the schema
    assert found is not None and found.id == found.computed_id
    return dict(found.raw)


def dataset_id(repo: Path, name: str) -> str:
    found = Registry.open(repo).dataset_manifest(name)
    assert found is not None
    return found.id


# -- drift ------------------------------------------------------------------------------------


def test_rotated_target_drifts_further_than_held_out_digits(built: Path) -> None:
    rotated = manifest(built, "rotated")["checks"]["drift"]["figures"]
    heldout = manifest(built, "heldout")["checks"]["drift"]["figures"]
    # both are measured in the same source's feature space against the same source data
    assert rotated["source_mahalanobis_mean"] == heldout["source_mahalanobis_mean"]
    assert rotated["mahalanobis_ratio"] > 1.3 * heldout["mahalanobis_ratio"]
    assert rotated["outlier_share"] > heldout["outlier_share"]
    assert rotated["mmd2"] > heldout["mmd2"]
    assert heldout["mahalanobis_ratio"] > 1.0  # new classes do sit outside the source's bulk


def test_drift_records_inputs_and_gates_only_on_declared_thresholds(built: Path) -> None:
    doc = manifest(built, "rotated")
    drift = doc["checks"]["drift"]
    # most rotated digits lie beyond the source's 95th percentile, yet nothing was declared
    assert drift["figures"]["outlier_share"] > 0.5
    assert drift["passed"] is True and drift["violations"] == []
    assert drift["thresholds"]["max_outlier_share"] is None
    inputs = drift["inputs"]
    assert inputs["data"] == {"name": "drot", "id": dataset_id(built, "drot"), "split": "train"}
    assert inputs["source_data"]["name"] == "d04"
    assert inputs["source_model"] == {"name": "base", "id": manifest(built, "base")["id"]}
    assert doc["datasets"]["drift"] == {"name": "drot", "id": dataset_id(built, "drot")}

    gated = manifest(built, "gated")["checks"]["drift"]
    assert gated["passed"] is False
    assert gated["thresholds"]["max_outlier_share"] == 0.2
    assert gated["inputs"]["permutations"] == 20
    assert "outlier share" in gated["violations"][0]


def test_failed_check_is_a_validate_violation(built: Path, cli: Any) -> None:
    res = cli(["validate"], built)
    assert res.code == 1
    lines = [line for line in res.stderr.splitlines() if "[failed-check]" in line]
    assert any("models/gated/manifest.json at /checks/drift" in line for line in lines)
    assert any("/checks/forgetting" in line and "wrecked" in line for line in lines)
    assert not any("rotated" in line or "heldout" in line for line in lines)


# -- forgetting -------------------------------------------------------------------------------


def test_destructive_learning_rate_fails_forgetting_and_a_gentle_one_passes(built: Path) -> None:
    gentle = manifest(built, "gentle")["checks"]["forgetting"]
    wrecked = manifest(built, "wrecked")["checks"]["forgetting"]
    before = manifest(built, "base")["metrics"]["accuracy"]
    for result in (gentle, wrecked):
        assert result["method"] == "head"  # same head: the source head and the target's own
        assert result["figures"]["before"] == before  # the source scored on its own eval split
        assert result["inputs"]["data"]["id"] == dataset_id(built, "d04")
    assert gentle["passed"] is True
    assert gentle["figures"]["relative_drop"] <= 0.1
    assert wrecked["passed"] is False
    assert wrecked["figures"]["relative_drop"] > 0.1
    assert wrecked["figures"]["after"] < gentle["figures"]["after"]
    assert "relative accuracy drop" in wrecked["violations"][0]


def test_new_head_is_compared_through_linear_probes(built: Path) -> None:
    doc = manifest(built, "heldout")
    forgetting = doc["checks"]["forgetting"]
    assert forgetting["method"] == "linear-probe"
    assert forgetting["thresholds"]["max_drop"] == DEFAULT_MAX_DROP
    assert forgetting["inputs"]["probe"]["fit_split"] == "train"
    # the first layer is frozen and the base separates 0-4 well: a probe recovers most of it
    assert forgetting["figures"]["before"] > 0.8
    assert doc["datasets"]["forgetting"] == {"name": "d04", "id": dataset_id(built, "d04")}


def test_linear_probe_is_deterministic_and_learns() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 5)) + 3.0 * np.eye(5)[y]
    first = probe_accuracy(x[::2], y[::2], x[1::2], y[1::2], seed=1)
    assert first == probe_accuracy(x[::2], y[::2], x[1::2], y[1::2], seed=1)
    assert first > 0.9
    noise = rng.normal(size=(120, 5))
    assert probe_accuracy(noise[::2], y[::2], noise[1::2], y[1::2]) < 0.7


# -- parameters -------------------------------------------------------------------------------


def test_parameter_check_runs_for_every_derived_model(built: Path) -> None:
    assert manifest(built, "base")["checks"] == {}
    doc = manifest(built, "heldout")
    params = doc["checks"]["parameters"]
    assert params["passed"] is True
    assert params["inputs"]["frozen"] == ["body.0.bias", "body.0.weight"]
    assert params["figures"]["per_tensor"]["body.0.weight"] == 0.0  # frozen: unchanged
    assert params["figures"]["compared"] == 2 and params["frozen_changed"] == []
    assert sorted(params["skipped"]) == ["head.bias", "head.weight"]  # re-initialised
    rotated = manifest(built, "rotated")["checks"]["parameters"]
    assert rotated["figures"]["compared"] == 4 and rotated["figures"]["max_relative_change"] > 0


# -- bad declarations -------------------------------------------------------------------------


BAD = {
    "unknown-check": ("checks: {forgetting: {data: d04}, sanity: {}}", "/checks/sanity"),
    "wrong-type": ("checks: {drift: {max_mahalanobis: high}}", "/checks/drift/max_mahalanobis"),
    "wrong-type-int": ("checks: {drift: {permutations: 1.5}}", "/checks/drift/permutations"),
}


def _declare(repo: Path, name: str, checks: str, train: str = "drot") -> None:
    write(
        repo / "models" / name / "spec.yaml",
        f"""
        source: {{model: base}}
        data: {{train: {train}}}
        strategy: {{mapping: exact}}
        training: {{epochs: 1, optimizer: adam, lr: 0.001, seed: 0}}
        {checks}
        """,
    )


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_declarations_get_one_clear_line(copy: Path, cli: Any, case: str) -> None:
    checks, pointer = BAD[case]
    _declare(copy, "bad", checks)
    for args in (["validate"], ["build", "model", "bad", "--quiet"]):
        res = cli(args, copy)
        assert res.code == 1, (args, res.stdout, res.stderr)
        lines = [line for line in res.stderr.splitlines() if "models/bad/spec.yaml" in line]
        assert len(lines) == 1, res.stderr
        assert pointer in lines[0]
        assert "Traceback" not in res.stderr
    assert not (copy / "models" / "bad" / "manifest.json").exists()


def test_forgetting_dataset_of_another_shape_is_refused(copy: Path, cli: Any) -> None:
    _declare(copy, "bad", "checks: {forgetting: {data: d12}}")
    res = cli(["build", "model", "bad", "--quiet"], copy)
    assert res.code == 1
    assert len(res.stderr.strip().splitlines()) == 1
    line = res.stderr.strip()
    assert "models/bad/spec.yaml at /checks/forgetting/data" in line
    assert "[1, 12, 12]" in line and "[1, 8, 8]" in line
    assert not (copy / "models" / "bad" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("name", "checks", "source", "message"),
    [
        ("bad", "checks: {forgetting: {data: d12}}", True, "/checks/forgetting/data: samples"),
        ("bad", "checks: {drift: {data: d12}}", True, "/checks/drift/data: samples"),
        ("alone", "checks: {forgetting: {data: d04}}", False, "/checks/forgetting: forgetting"),
    ],
)
def test_check_inputs_are_refused_before_any_training(
    copy: Path, name: str, checks: str, source: bool, message: str
) -> None:
    if source:
        _declare(copy, name, checks)
    else:
        write(
            copy / "models" / name / "spec.yaml",
            f"""
            architecture: {{family: mlp, hidden: [8]}}
            data: {{train: d04}}
            training: {{epochs: 1}}
            {checks}
            """,
        )
    epochs: list[int] = []
    with pytest.raises(BuildError, match=re.escape(f"models/{name}/spec.yaml at {message}")):
        build_model(Registry.open(copy), name, progress=lambda epoch, *_: epochs.append(epoch))
    assert epochs == []  # refused before the first epoch, not after the last
    assert not (copy / "models" / name / "manifest.json").exists()


def test_drift_needs_a_source_model(copy: Path) -> None:
    write(
        copy / "models" / "alone" / "spec.yaml",
        """
        architecture: {family: mlp, hidden: [8]}
        data: {train: d04}
        training: {epochs: 1}
        checks: {drift: {}}
        """,
    )
    with pytest.raises(BuildError, match=r"models/alone/spec.yaml at /checks/drift: drift needs"):
        build_model(Registry.open(copy), "alone")
    assert not (copy / "models" / "alone" / "manifest.json").exists()
