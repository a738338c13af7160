"""What a build reads before it trains: the source model (checked against its manifest),
the datasets, the architecture and the width of the head; and a built model loaded back.

Shared by the builds of every family (migration/build.py, detection.py, causal_lm.py,
merge.py, quantize.py) and by the readers of built models (explore, features), which
import it; it imports none of them.
"""

from __future__ import annotations

from typing import Any

import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import (
    DatasetRef,
    FileRef,
    ModelManifest,
    Weights,
    dataset_record,
    model_record,
)
from stemma.registry.rules.layout import EXPLORATION_FILE, WEIGHTS_FILE
from stemma.registry.rules.parents import pointer_of
from stemma.registry.rules.taskspec import CLASSIFICATION, MULTILABEL, REGRESSION
from stemma.registry.store.files import file_hashes, read_json
from torch import nn

from .adapters import compose
from .architectures import build_module, make_config
from .data import DatasetArrays, load_dataset
from .entrypoints import importable
from .families import read_hf_config
from .mapping import plan, transfer
from .quantized import load_quantized, quantized_source_error
from .tasks import get as get_task
from .weights import load_sharded, load_weights, read_checked

"""A `model: auto` build's exploration (written by `dvc repro` before the build)."""


def load_model(reg: Registry, name: str, checked_for: ModelSpec | None = None) -> nn.Module:
    """Rebuild a built model from its manifest's architecture config and its weights; an
    adapter model is its base (loaded the same way) with the adapter merged in. With
    `checked_for` (the spec of a build deriving from it), every weights file read, an
    adapter's base included, is read once and checked against its manifest's hashes."""
    importable(reg.repo_root)
    found = reg.model_manifest(name)
    manifest = None if found is None else model_record(found)
    path = reg.model_dir(name) / (manifest.weights.path if manifest else "")
    if found is None or manifest is None or not path.is_file():
        raise BuildError(
            f"{reg.rel('models', name)}: model {name!r} has no weights; build it first (dvc repro)"
        )
    if manifest.quantize is not None:  # torchao's tensors: migration/quantize.py loads them
        return load_quantized(reg, name)
    with torch.random.fork_rng(devices=[]):  # building initialises from the global RNG
        module = build_module(
            dict(manifest.architecture.config), reg.settings.entrypoints, found.path
        )
    if manifest.adapter is not None:
        base = load_model(reg, manifest.adapter.base.model, checked_for)
        return compose(module, base.state_dict(), path.parent, found.path)
    if checked_for is not None:
        state = checked_state(reg, checked_for, name, manifest)
    else:
        state = load_weights(path, reg.rel("models", name, path.name))
    transfer(module, state, plan(state, module.state_dict(), "exact", found.path))
    module.eval()
    return module


def source_name(reg: Registry, spec: ModelSpec) -> tuple[str, dict[str, Any] | None]:
    """The source model's name; with `model: auto`, the exploration's selection."""
    assert spec.source is not None
    if not spec.source.auto:
        return spec.source.model, None
    path = reg.model_dir(spec.name) / EXPLORATION_FILE
    if not path.is_file():
        raise BuildError(
            f"{spec.path} at /source/model: source is auto but"
            f" {reg.rel('models', spec.name, EXPLORATION_FILE)} does not exist;"
            " run the exploration first (dvc repro)"
        )
    doc = read_json(path)
    chosen = doc.get("selected") if isinstance(doc, dict) else None
    if not isinstance(chosen, str):
        raise BuildError(
            f"{reg.rel('models', spec.name, EXPLORATION_FILE)}: no 'selected' source model"
        )
    return chosen, doc


def load_source(
    reg: Registry, spec: ModelSpec, src: str
) -> tuple[ModelManifest, dict[str, torch.Tensor]]:
    """The source's manifest (typed) and weights, checked against each other."""
    found = reg.model_manifest(src)
    manifest = None if found is None else model_record(found)
    rel = manifest.weights.path if manifest else WEIGHTS_FILE
    path = reg.model_dir(src) / rel
    if manifest is None or not path.is_file():
        raise BuildError(
            f"{spec.path} at {pointer_of(spec, src)}: source model {src!r} has no weights;"
            " build it first (dvc repro)"
        )
    if manifest.quantize is not None:  # torchao int8 tensors: no weights to derive from
        raise quantized_source_error(spec, src, manifest)
    if manifest.adapter is not None:  # base + adapter, merged: a plain state dict to map
        hashes = file_hashes(path, reg.repo_root, reg.rel("models", src, rel))
        same_as_recorded(spec, reg.rel("models", src, rel), hashes["sha256"], manifest.weights)
        return manifest, dict(load_model(reg, src, spec).state_dict())
    return manifest, checked_state(reg, spec, src, manifest)


def checked_state(
    reg: Registry, spec: ModelSpec, src: str, manifest: ModelManifest
) -> dict[str, torch.Tensor]:
    """Model `src`'s stored state dict, read once and checked against its manifest's hashes
    (a file that differs is refused in the words of `spec`, the build deriving from it)."""
    recorded = manifest.weights
    rel = recorded.path
    path = reg.model_dir(src) / rel
    if recorded.shards is not None:  # the index, then each shard read once: hashed and loaded
        index = file_hashes(path, reg.repo_root, reg.rel("models", src, rel))
        same_as_recorded(spec, reg.rel("models", src, rel), index["sha256"], recorded)
        state, parts = load_sharded(path, reg.rel("models", src, rel), reg.repo_root)
        for shard in recorded.shards:
            got = parts.get(shard.path)
            shown = reg.rel("models", src, shard.path)
            same_as_recorded(spec, shown, got.sha256 if got else "", shard)
        return state
    # one read: the bytes hashed are the bytes loaded
    state, hashes = read_checked(path, reg.rel("models", src, rel), reg.repo_root)
    same_as_recorded(spec, reg.rel("models", src, rel), hashes.sha256, recorded)
    return state


def same_as_recorded(spec: ModelSpec, shown: str, sha256: str, block: Weights | FileRef) -> None:
    """Refuse a source file whose sha256 is not the one its manifest records."""
    if sha256 != block.sha256:
        raise BuildError(
            f"{spec.path} at /source/model: {shown} does not match its manifest;"
            " rebuild it (dvc repro) or check it out (dvc checkout)"
        )


def refuse_failed_source(spec: ModelSpec, src: str, manifest: ModelManifest) -> None:
    """A source that failed its gates is no base to derive from, unless the spec says so."""
    failed = manifest.failed_gates
    if failed and not (spec.source is not None and spec.source.allow_failed_gates):
        raise BuildError(
            f"{spec.path} at {pointer_of(spec, src)}: source model {src!r} failed its gates"
            f" ({', '.join(failed)}); fix it, or set source.allow_failed_gates: true"
        )


def architecture_config(
    reg: Registry,
    spec: ModelSpec,
    source: ModelManifest | None,
    shape: list[int],
    num_classes: int,
) -> dict[str, Any]:
    """The target's architecture config: the spec's (a transformers folder's config read in),
    else the source's, sized for the data's `shape` and `num_classes` outputs."""
    if spec.architecture:
        arch = spec.architecture
        if arch.get("family") == "transformers" and "path" in arch:
            # the folder's config is copied into the manifest: the build needs no folder later
            folder = reg.resolve(str(arch["path"]), "/architecture/path", spec.path)
            config = read_hf_config(folder, f"{spec.path} at /architecture/path")
            arch = {**{k: v for k, v in arch.items() if k != "path"}, "config": config}
    elif source is not None:
        inherited = dict(source.architecture.config)
        arch = {k: v for k, v in inherited.items() if k not in ("in_shape", "num_classes")}
    else:
        raise BuildError(
            f"{spec.path} at /architecture: a model without a source needs an"
            " architecture (e.g. {family: mlp, hidden: [128, 64]})"
        )
    return make_config(arch, shape, num_classes)


def eval_pointer(spec: ModelSpec) -> str:
    """The spec's pointer to the data it is scored on (`/data/train` where it names no eval)."""
    return "/data/eval" if "/data/eval" in spec.dataset_refs() else "/data/train"


def training_data(
    reg: Registry, spec: ModelSpec
) -> tuple[DatasetArrays, DatasetArrays, dict[str, DatasetRef]]:
    """Train and eval arrays plus the manifest's datasets block, by role."""
    train_data = load_dataset(reg, spec.train, "/data/train", spec.path)
    pointer = eval_pointer(spec)
    eval_data = load_dataset(reg, spec.eval, pointer, spec.path)
    if eval_data.shape != train_data.shape:
        raise BuildError(
            f"{spec.path} at /data/eval: samples of {spec.eval!r} have shape"
            f" {eval_data.shape}, those of {spec.train!r} {train_data.shape}"
        )
    roles = [("train", spec.train, "/data/train"), ("eval", spec.eval, pointer)]
    # datasets the declared checks read are recorded too: a new version of one is a new build
    roles += [(check, ds, f"/checks/{check}/data") for check, ds in spec.checks.datasets]
    block: dict[str, DatasetRef] = {}
    for role, ds, where in roles:
        manifest = reg.dataset_manifest(ds)
        if manifest is None:
            raise BuildError(
                f"{spec.path} at {where}: dataset {ds!r} has not been built; build it first"
                " (dvc repro)"
            )
        block[role] = DatasetRef.of(ds, manifest.id)
    return train_data, eval_data, block


def head_width(
    spec: ModelSpec, task: str, train_data: DatasetArrays, eval_data: DatasetArrays
) -> int:
    """Width of the model's head: classes, regression outputs or labels of the training data."""
    if eval_data.task != task:
        raise BuildError(
            f"{spec.path} at /data/eval: {spec.eval!r} is a {eval_data.task} dataset,"
            f" {spec.train!r} a {task} one"
        )
    if task == CLASSIFICATION:
        num_classes = max(train_data.classes) + 1
        if max(eval_data.classes) >= num_classes:
            raise BuildError(
                f"{spec.path} at /data/eval: {spec.eval!r} has class"
                f" {max(eval_data.classes)}, but {spec.train!r} only classes"
                f" 0-{num_classes - 1}"
            )
        return num_classes
    width = get_task(task).outputs(train_data.y_train)
    if get_task(task).outputs(eval_data.y_eval) != width:
        what = "labels" if task == MULTILABEL else "outputs"
        raise BuildError(
            f"{spec.path} at /data/eval: {spec.eval!r} has"
            f" {get_task(task).outputs(eval_data.y_eval)} {what}, {spec.train!r} {width}"
        )
    assert task in (REGRESSION, MULTILABEL)
    return width


def class_names(reg: Registry, dataset: str) -> list[str] | None:
    """The training dataset's class names, when its labels had names."""
    found = reg.dataset_manifest(dataset)
    names = None if found is None else dataset_record(found).class_names
    return None if names is None else list(names)
