"""The behavioural checks of a detection build: forgetting, as the source task's mAP change.

`checks: {forgetting: {data: SOURCE_DATA, max_drop: x}}` on a detector derived from a
detector scores both (the source before the transfer, the target after it) on the eval split
of SOURCE_DATA, a detection dataset of the source's classes, and gates the relative mAP drop
with `forgetting.forgetting_figures`. Each model is scored on the classes it predicts: ground
truth labels are matched to each model's class names, so a target with a new class set is
scored on the source classes it kept. A classifier -> detector transfer has no comparable
figure (accuracy on whole images against mAP on boxes): the result says so (`comparable:
false`, with why) and does not fail the build. Feature drift needs a classifier's penultimate
features and is refused for detectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.checkspec import ForgettingSpec
from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import Check, DatasetRef, ModelManifest, dataset_record
from stemma.registry.rules.taskspec import DETECTION
from torch import nn

from .checks import source_module
from .data import load_dataset
from .detection_train import score
from .forgetting import DEFAULT_MAX_DROP, forgetting_figures

_WHERE = "/checks/forgetting/data"


def check_detection_inputs(
    reg: Registry, spec: ModelSpec, source_manifest: ModelManifest | None
) -> None:
    """Raise, before training, the errors of a detector's declared checks."""
    declared = spec.checks
    for check, given in (("drift", declared.drift), ("parameters", declared.parameters)):
        if given is not None:
            raise BuildError(
                f"{spec.path} at /checks/{check}: does not apply to a detection build"
                " (it reads a classifier's features or heads); declare forgetting only"
            )
    if declared.forgetting is None:
        return
    if source_manifest is None:
        raise BuildError(
            f"{spec.path} at /checks/forgetting: forgetting needs a source model;"
            " remove the check or declare a source"
        )
    if source_manifest.task == DETECTION:
        _source_data(reg, spec, declared.forgetting, source_manifest)


def _source_data(
    reg: Registry, spec: ModelSpec, block: ForgettingSpec, source_manifest: ModelManifest
) -> tuple[str, list[str]]:
    """The forgetting dataset's name and class names; it must be a detection dataset."""
    name = block.data
    found = reg.dataset_manifest(name)
    if found is None:
        raise BuildError(
            f"{spec.path} at {_WHERE}: dataset {name!r} has not been built; build it first"
        )
    manifest = dataset_record(found)
    if manifest.task != DETECTION:
        raise BuildError(
            f"{spec.path} at {_WHERE}: {name!r} is no detection dataset; name a dataset of"
            f" the source detector {source_manifest.name!r}'s task"
        )
    return name, list(manifest.class_names or ())


def _relabel(y: np.ndarray, data_names: Sequence[str], model_names: Sequence[str]) -> np.ndarray:
    """`y` with labels moved to the model's class indices; boxes of a class the model does
    not predict are dropped (padding rows, label -1)."""
    out = np.array(y, dtype=np.float32, copy=True)
    index = {n: i for i, n in enumerate(model_names)}
    lookup = np.asarray([index.get(n, -1) for n in data_names], dtype=np.float32)
    real = out[..., 0] >= 0
    out[..., 0][real] = lookup[out[..., 0][real].astype(np.int64)]
    return out


def _names(manifest: ModelManifest, fallback: Sequence[str]) -> list[str]:
    return list(manifest.class_names or fallback)


def detection_forgetting(
    reg: Registry,
    spec: ModelSpec,
    block: ForgettingSpec,
    module: nn.Module,
    target_names: Sequence[str],
    source_manifest: ModelManifest,
    source_state: Mapping[str, torch.Tensor],
) -> tuple[Check, DatasetRef]:
    """The forgetting check of a detector, as `block` declares it: (its result, the dataset it
    read by name and id)."""
    max_drop = float(DEFAULT_MAX_DROP if block.max_drop is None else block.max_drop)
    source_ref = {"name": source_manifest.name, "id": source_manifest.id}
    if source_manifest.task != DETECTION:
        name = block.data
        found = reg.dataset_manifest(name)
        ref = DatasetRef.of(name, found.id if found is not None else "")
        task = source_manifest.task_name
        reason = (
            f"the source {source_manifest.name!r} is a {task} model: its {task} metric and"
            " this detector's map measure different things, so there is no before figure"
            " to compare; forgetting is measured between detectors"
        )
        return Check.of(
            True,
            extra={
                "comparable": False,
                "reason": reason,
                "figures": {},
                "thresholds": {"max_drop": max_drop},
                "violations": [],
                "inputs": {"data": ref.to_dict(), "source_model": source_ref},
            },
        ), ref
    name, data_names = _source_data(reg, spec, block, source_manifest)
    data = load_dataset(reg, name, _WHERE, spec.path)
    source = source_module(reg, source_manifest, source_state)
    figures = []
    for model, names in ((source, _names(source_manifest, data_names)), (module, target_names)):
        y = _relabel(data.y_eval, data_names, names) if data_names else data.y_eval
        if not (y[..., 0] >= 0).any():
            raise BuildError(
                f"{spec.path} at {_WHERE}: no box of {name!r} is of a class the model"
                " predicts; name a dataset of the source's classes"
            )
        model.eval()
        figures.append(max(float(score(model, data.x_eval, y)["map"]), 0.0))
    result = forgetting_figures(figures[0], figures[1], max_drop, "map")
    ref = DatasetRef.of(name, reg.dataset_manifest(name).id)  # type: ignore[union-attr]
    inputs = {
        "data": {**ref.to_dict(), "split": "eval", "samples": len(data.y_eval)},
        "source_model": source_ref,
    }
    extra = {**result.extra, "comparable": True, "method": "map", "inputs": inputs}
    return Check.of(result.passed, extra=extra), ref
