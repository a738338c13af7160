"""A merge's errors about one parent (unbuilt, failed gates, quantized) point at that parent
in the spec (/source/models/N or /source/base), not at a /source/model key a merge spec does
not have."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import new_registry
from stemma.migration.build import build_dataset, build_model
from stemma.registry import Registry
from stemma.registry.errors import BuildError

TRAIN = "training: {epochs: 1, batch_size: 64, optimizer: adam, lr: 0.01, seed: 0}\n"
SPECS = {
    "datasets/d/spec.yaml": "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n",
    "models/base/spec.yaml": "architecture: {family: mlp, hidden: [16]}\n"
    f"data: {{train: d}}\n{TRAIN}",
    "models/ft/spec.yaml": f"source: {{model: base}}\ndata: {{train: d}}\n{TRAIN}",
    "models/weak/spec.yaml": "source: {model: base}\ndata: {train: d}\n"
    f"gates: {{accuracy: '>= 0.9999'}}\n{TRAIN}",
    "models/unbuilt/spec.yaml": f"source: {{model: base}}\ndata: {{train: d}}\n{TRAIN}",
    "models/q/spec.yaml": "source: {model: base, relation: quantized}\ndata: {train: d}\n"
    "quantize: {method: int8_weight_only, max_drop: 0.5}\n",
    "models/m-unbuilt/spec.yaml": "source: {relation: merge, models: [ft, unbuilt],"
    " merge: {method: linear}}\ndata: {train: d}\n",
    "models/m-base/spec.yaml": "source: {relation: merge, models: [ft, base], base: unbuilt,"
    " merge: {method: task_arithmetic}}\ndata: {train: d}\n",
    "models/m-gated/spec.yaml": "source: {relation: merge, models: [ft, weak],"
    " merge: {method: linear}}\ndata: {train: d}\n",
    "models/m-quant/spec.yaml": "source: {relation: merge, models: [ft, q],"
    " merge: {method: linear}}\ndata: {train: d}\n",
}


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Registry:
    pytest.importorskip("torchao")
    reg = new_registry(tmp_path_factory.mktemp("merge-errors") / "repo", registry_template, SPECS)
    build_dataset(reg, "d")
    for name in ("base", "ft", "q", "weak"):
        build_model(Registry.open(reg.repo_root), name)
    return Registry.open(reg.repo_root)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("m-unbuilt", "at /source/models/1: source model 'unbuilt' has no weights"),
        ("m-base", "at /source/base: source model 'unbuilt' has no weights"),
        ("m-gated", "at /source/models/1: source model 'weak' failed its gates (accuracy)"),
        ("m-quant", "at /source/models/1: source model 'q' is quantized (int8_weight_only)"),
    ],
)
def test_a_merge_error_points_at_the_parent(reg: Registry, name: str, message: str) -> None:
    with pytest.raises(BuildError) as err:
        build_model(reg, name)
    assert str(err.value.message).startswith(f"models/{name}/spec.yaml {message}"), err.value
    assert not (reg.root / "models" / name / "manifest.json").exists()
