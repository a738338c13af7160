"""Object detection as a task: datasets of boxes and torchvision detectors built from specs.

A detection dataset (`shapes:detect`, `coco:FOLDER`, see detection_data.py) records
`task: detection`; a model trained on one is a torchvision detector named in its
architecture (`{family: torchvision, name: fasterrcnn_mobilenet_v3_large_320_fpn}`), built
with `weights=None, weights_backbone=None` and `num_classes` = classes + 1 (the background).
Its source may be a torchvision classifier, whose `features.*` become the detector's
`backbone.body.*` (`strategy.rename`, derived when absent), or another detector, whose
heads of another class set are left new. `strategy.init` draws the new tensors. Metrics are
COCO mAP, mAP@50, mAP@75 and per-class AP; the outputs and manifest are those of any model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.records.core import DATASET_MANIFEST, DatasetSpec, ModelSpec
from stemma.registry.records.manifest import Check, Split, dataset_record
from stemma.registry.rules.layout import DATA_FILE
from stemma.registry.rules.taskspec import DETECTION, spec_problems, training_task
from stemma.registry.store.files import canonical_json

from .augment import Augment
from .build_inputs import (
    architecture_config,
    class_names,
    load_source,
    refuse_failed_source,
    training_data,
)
from .build_outputs import blob_ref, commit_outputs, dataset_manifest, run_record, write_model
from .data import npz_bytes
from .detection_checks import check_detection_inputs, detection_forgetting
from .detection_data import class_counts, materialize_detection
from .detection_samples import SAMPLES_FILE, detection_samples
from .detection_train import score, train_detector
from .mapping import report
from .model_manifest import model_manifest
from .strategy import Strategy, prepare_target
from .train import Progress, TrainConfig

SUPPORTED_TRAINING = (
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "seed",
    "device",
    "amp",
    "clip_grad_norm",
    "lr_multipliers",
    "augment",
)
"""Training settings a detection build reads; another is refused, not silently ignored."""


def trains_detector(reg: Registry, spec: ModelSpec) -> bool:
    """True when the model's training data is a detection dataset."""
    return training_task(reg, spec) == DETECTION


def build_detection_dataset(
    reg: Registry, name: str, spec: DatasetSpec, started: str, begin: float
) -> dict[str, Any]:
    """Materialize a detection dataset, write data.npz and its manifest; returns the manifest."""
    arrays = materialize_detection(
        spec,
        display=spec.path,
        resolve=lambda rel: reg.resolve(rel, "/source", spec.path),
    )
    blob = npz_bytes(arrays)
    names = tuple(arrays.class_names or ())
    splits = {
        "train": Split.of(len(arrays.x_train), class_counts(arrays.y_train)),
        "eval": Split.of(len(arrays.x_eval), class_counts(arrays.y_eval)),
    }
    manifest = dataset_manifest(
        spec,
        name,
        blob,
        shape=tuple(arrays.shape),
        dtype=str(arrays.x_train.dtype),
        classes=tuple(range(len(names))),
        task=DETECTION,
        class_names=names,
        splits=splits,
        run=run_record(reg, started, begin),
    ).to_dict()
    commit_outputs(
        reg, reg.dataset_dir(name), "datasets", manifest, DATASET_MANIFEST, {DATA_FILE: blob}
    )
    return manifest


def _training(spec: ModelSpec, reg: Registry) -> tuple[TrainConfig, Augment]:
    block = dict(spec.training)
    for key in sorted(block):
        if key not in SUPPORTED_TRAINING:
            raise BuildError(
                f"{spec.path} at /training/{key}: does not apply to a detection build;"
                f" use {', '.join(SUPPORTED_TRAINING)}"
            )
    augment = Augment.from_spec(block.pop("augment", None), spec.path)
    defaults = {
        k: v
        for k, v in dict(reg.settings.defaults.get("training") or {}).items()
        if k in SUPPORTED_TRAINING
    }
    return TrainConfig.from_spec(block, spec.path, defaults), augment


def _check_detector(config: dict[str, Any], display: str) -> None:
    """The architecture must name a torchvision detection model."""
    from torchvision.models import detection, list_models  # type: ignore[import-untyped]

    allowed = list_models(module=detection)
    block = ArchitectureConfig.from_dict(config)
    if block.family != "torchvision" or block.name not in allowed:
        raise BuildError(
            f"{display} at /architecture/name: a detection dataset needs a torchvision"
            f" detection model, one of {', '.join(sorted(allowed))}"
        )


def build_detector(
    reg: Registry,
    name: str,
    progress: Progress | None,
    started: str,
    begin: float,
) -> dict[str, Any]:
    """Build a detector from its spec: map, train, score, then write every output atomically."""
    spec = reg.model_spec(name)
    display = spec.path
    cfg, augment = _training(spec, reg)
    strategy = Strategy.from_spec(spec.strategy, display)
    if strategy.mode != "finetune":
        raise BuildError(f"{display} at /strategy/mode: detection builds fine-tune (freeze globs)")
    for pointer, message in spec_problems(DETECTION, spec.raw):
        raise BuildError(f"{display} at {pointer}: {message}")
    src_name, src_manifest, src_state = None, None, None
    if spec.source is not None:
        if spec.source.auto:
            raise BuildError(f"{display} at /source/model: detection builds name their source")
        src_name = spec.source.model
        src_manifest, src_state = load_source(reg, spec, src_name)
        refuse_failed_source(spec, src_name, src_manifest)
    train_data, eval_data, datasets = training_data(reg, spec)
    found_train, found_eval = reg.dataset_manifest(spec.train), reg.dataset_manifest(spec.eval)
    assert found_train is not None and found_eval is not None  # training_data raised otherwise
    ds_manifest = dataset_record(found_train)
    if dataset_record(found_eval).task != DETECTION:
        raise BuildError(f"{display} at /data/eval: {spec.eval!r} is no detection dataset")
    classes = len(ds_manifest.class_names or ds_manifest.classes)
    check_detection_inputs(reg, spec, src_manifest)  # before training, not after
    config = architecture_config(reg, spec, src_manifest, train_data.shape, classes + 1)
    config["task"] = DETECTION
    _check_detector(config, display)
    source = None if src_state is None or src_name is None else (src_name, src_state)
    prepared = prepare_target(config, strategy, cfg.seed, source, reg.settings.entrypoints, display)
    module, tmap, reinit = prepared.module, prepared.tensor_map, prepared.reinit
    rows, unused = report(module, tmap, reinit)
    run = train_detector(
        module,
        train_data.x_train,
        train_data.y_train,
        eval_data.x_eval,
        eval_data.y_eval,
        cfg,
        augment,
        display,
        None,  # the CLI's progress reports a classifier's rows; a detector's differ
    )
    scored = score(module, eval_data.x_eval, eval_data.y_eval)
    metrics = {m: scored[m] for m in ("map", "map_50", "map_75")}
    checks: dict[str, Check] = {}
    forgetting = spec.checks.forgetting
    if forgetting is not None and src_manifest is not None and src_state is not None:
        checks["forgetting"], datasets["forgetting"] = detection_forgetting(
            reg,
            spec,
            forgetting,
            module,
            list(ds_manifest.class_names or ()),
            src_manifest,
            src_state,
        )
    trained = model_manifest(
        spec,
        name,
        None if src_manifest is None or src_name is None else (src_name, src_manifest),
        datasets,
        (config, rows),
        module,
        (strategy, bool(tmap), unused, False),
        (metrics, scored["per_class"]),
    )
    names = class_names(reg, spec.train)
    samples = canonical_json(
        detection_samples(module, eval_data.x_eval, eval_data.y_eval, names or [])
    ).encode()
    run_block = run_record(
        reg,
        started,
        begin,
        device=run.device,
        seed=cfg.seed,
        deterministic=True,
        threads=run.threads,
        train_s=round(run.train_seconds, 3),
    )
    return write_model(
        reg,
        name,
        lambda weights: trained.manifest(
            weights,
            checks,
            task=DETECTION,
            class_names=None if names is None else tuple(names),
            samples=blob_ref(SAMPLES_FILE, samples, "json"),
            run=run_block,
        ),
        module.state_dict(),
        metrics,
        run.curve,
        {SAMPLES_FILE: samples},
    )


def recompute_map(
    state: dict[str, torch.Tensor], config: dict[str, Any], x: np.ndarray, y: np.ndarray
) -> dict[str, Any]:
    """mAP of a detector rebuilt the way its users would: `torchvision.models.get_model(name,
    weights=None, weights_backbone=None, num_classes=..., **options)` and a strict load."""
    from torchvision.models import get_model

    block = ArchitectureConfig.from_dict(config)
    module = get_model(
        str(block.name),
        weights=None,
        weights_backbone=None,
        num_classes=int(block.num_classes),
        **dict(block.options or {}),
    )
    module.load_state_dict(state, strict=True)
    return score(module, x, y)
