"""How a quantized build scores its parent and itself: on the spec's eval data, by the task.

Classifiers and regressors (mlp, cnn, timm, torchvision, transformers) are scored on the eval
split of an array dataset with the task's metrics (migration/evaluate.py); a causal language
model on the eval split of a text dataset, tokenized with the parent's own tokenizer into
blocks of the parent's size, by loss and perplexity (migration/lm_train.py). The quantized
model inherits the parent's tokenizer like any child (migration/hubsnapshot.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import DatasetRef, ModelManifest
from stemma.registry.rules.taskspec import CAUSAL_LM, CLASSIFICATION, spec_problems
from torch import nn

from . import lm_train
from . import tokenizer as tok
from .build_inputs import eval_pointer
from .data import DatasetArrays, load_dataset
from .evaluate import evaluate
from .tasks import for_labels
from .textdata import PROMPT_COMPLETION, load_text


@dataclass(frozen=True)
class Scoring:
    """The task, what the build read, and how a module is scored (metrics and per_class)."""

    task: str
    metrics: tuple[str, ...]
    datasets: dict[str, DatasetRef]
    score: Callable[[nn.Module], dict[str, Any]]
    recorded_task: str | None = None
    """The manifest's `task` (None: classification, which the manifest leaves unsaid)."""


def scoring(reg: Registry, spec: ModelSpec, parent: str, src_manifest: ModelManifest) -> Scoring:
    """How the parent and the quantized model are scored, after checking that the spec's
    eval data fits the parent (its task, sample shape and head) and its gates the task."""
    parent_task = src_manifest.task_name
    if parent_task == CAUSAL_LM:
        found = _lm_scoring(reg, spec, parent, src_manifest)
    else:
        found = _array_scoring(reg, spec, parent, src_manifest, parent_task)
    for where, message in spec_problems(found.task, spec.raw):
        raise BuildError(f"{spec.path} at {where}: {message}")
    return found


def _dataset_block(reg: Registry, name: str) -> dict[str, DatasetRef]:
    manifest = reg.dataset_manifest(name)
    assert manifest is not None  # the loaders raised otherwise
    return {"eval": DatasetRef.of(name, manifest.id)}


def _array_scoring(
    reg: Registry,
    spec: ModelSpec,
    parent: str,
    src_manifest: ModelManifest,
    parent_task: str,
) -> Scoring:
    pointer = eval_pointer(spec)
    data = load_dataset(reg, spec.eval, pointer, spec.path)
    task = for_labels(data.y_eval)
    if task.name != parent_task:
        raise BuildError(
            f"{spec.path} at {pointer}: {spec.eval!r} is a {task.name} dataset, the parent"
            f" {parent!r} a {parent_task} model"
        )
    _fits(spec, src_manifest.architecture.config, data, pointer)

    def score(module: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            return evaluate(module, data.x_eval, data.y_eval, "cpu")

    recorded = None if task.name == CLASSIFICATION else task.name
    return Scoring(task.name, task.metrics, _dataset_block(reg, spec.eval), score, recorded)


def _fits(spec: ModelSpec, config: Mapping[str, Any], data: DatasetArrays, pointer: str) -> None:
    """The eval data fits the parent: its sample shape, and labels within the parent's head."""
    block = ArchitectureConfig.from_dict(config)
    shape = [int(d) for d in block.in_shape or []]
    if shape and data.shape != shape:
        raise BuildError(
            f"{spec.path} at {pointer}: samples of {spec.eval!r} have shape {data.shape},"
            f" the parent takes {shape}"
        )
    width = block.num_classes
    task = for_labels(data.y_eval)
    if not isinstance(width, int) or not len(data.y_eval):
        return
    if task.name == CLASSIFICATION:
        top = int(data.y_eval.max())
        if top >= width:
            raise BuildError(
                f"{spec.path} at {pointer}: {spec.eval!r} has class {top}, the parent"
                f" only classes 0-{width - 1}"
            )
    elif task.outputs(data.y_eval) != width:
        raise BuildError(
            f"{spec.path} at {pointer}: {spec.eval!r} has {task.outputs(data.y_eval)}"
            f" outputs, the parent {width}"
        )


def _lm_scoring(
    reg: Registry, spec: ModelSpec, parent: str, src_manifest: ModelManifest
) -> Scoring:
    """Perplexity on the eval text, tokenized as the parent was (its tokenizer, block size)."""
    block = src_manifest.tokenizer
    if block is None:
        raise BuildError(f"{spec.path} at /source/model: source model {parent!r} has no tokenizer")
    shown = reg.rel("models", parent, tok.TOKENIZER_DIR)
    files = tok.checked_files(reg.model_dir(parent), block, shown, reg.repo_root)
    tokenizer = tok.load(files, shown)
    pointer = eval_pointer(spec)
    text = load_text(reg, spec.eval, f"{spec.path} at {pointer}")
    size = lm_train.DEFAULT_BLOCK if src_manifest.lm is None else src_manifest.lm.block_size
    data = lm_train.blocks(tokenizer, text.eval, size, text.format != PROMPT_COMPLETION)
    if data.labelled == 0:
        raise BuildError(f"{spec.path} at {pointer}: the eval split has no tokens to score")

    def score(module: nn.Module) -> dict[str, Any]:
        return {**lm_train.score(module, data), "per_class": {}}

    return Scoring(
        CAUSAL_LM,
        ("loss", "perplexity"),
        _dataset_block(reg, spec.eval),
        score,
        CAUSAL_LM,
    )
