"""Build datasets and models from their specs; the work behind `stemma build` and `dvc repro`.

A build reads everything it needs, trains and evaluates, and only then switches its outputs
in as one unit (migration/commit.py): an interrupted or failed build leaves the previous outputs
intact. A rebuild whose id equals the manifest's in place rewrites no file: the manifest and
every output stay byte for byte, and the new run's block goes to the untracked `last-run.json`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stemma.registry import Registry
from stemma.registry import __version__ as STEMMA_VERSION
from stemma.registry.check.gate import check_buildable
from stemma.registry.errors import BuildError
from stemma.registry.records.core import DATASET_MANIFEST, ModelSpec
from stemma.registry.records.manifest import Adapter, DatasetRef, ModelManifest, ModelRef, Split
from stemma.registry.rules.layout import DATA_FILE, STATE_DIR
from stemma.registry.rules.parents import is_merge
from stemma.registry.rules.taskspec import CLASSIFICATION, spec_problems

from . import distributed as dist
from .adapters import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    adapter_files,
    adapter_record,
    check_targets,
    inject,
    lora_block,
)
from .adapters import rows as adapter_rows
from .architectures import head_prefix
from .build_inputs import (
    architecture_config,
    class_names,
    head_width,
    load_source,
    refuse_failed_source,
    source_name,
    training_data,
)
from .build_inputs import load_model as load_model
from .build_outputs import (
    blob_ref,
    blob_weights,
    commit_outputs,
    dataset_manifest,
    now,
    run_record,
    write_model,
)
from .causal_lm import build_lm, build_text_dataset, trains_lm
from .checkpoint import CHECKPOINTS, Checkpointer
from .checkpoint import key_of as checkpoint_key
from .checks import check_inputs, run_checks
from .data import feature_stats, materialize, npz_bytes
from .detection import build_detection_dataset, build_detector, trains_detector
from .detection_data import is_detection_source
from .entrypoints import importable
from .evaluate import evaluate
from .hubsnapshot import inherited_tokenizer
from .mapping import report
from .merge import build_merge
from .model_manifest import model_manifest
from .numerics import mode_of
from .quantize import build_quantized
from .register import register
from .search import search_for_build
from .strategy import Strategy, prepare_target
from .tasks import get as get_task
from .textdata import is_text_source
from .train import Progress, TrainConfig, cpu_threads, train

# -- datasets -------------------------------------------------------------------------------


def build_dataset(reg: Registry, name: str) -> dict[str, Any]:
    """Materialize a dataset spec, write data.npz and its manifest; returns the manifest."""
    started, begin = now(), time.perf_counter()
    importable(reg.repo_root)
    check_buildable(reg, "dataset", name)
    spec = reg.dataset_spec(name)
    if is_detection_source(spec.source):  # boxes per image: migration/detection.py
        return build_detection_dataset(reg, name, spec, started, begin)
    if is_text_source(spec):  # text for causal language models: migration/causal_lm.py
        return build_text_dataset(reg, name, spec, started, begin)
    arrays = materialize(
        spec,
        display=spec.path,
        trusted=reg.settings.entrypoints,
        resolve=lambda rel: reg.resolve(rel, "/source", spec.path),
    )
    blob = npz_bytes(arrays)
    splits = {"train": _split_block(arrays.y_train), "eval": _split_block(arrays.y_eval)}
    stats = feature_stats(arrays.x_train)
    manifest = dataset_manifest(
        spec,
        name,
        blob,
        shape=tuple(arrays.shape),
        dtype=str(arrays.x_train.dtype),
        classes=tuple(arrays.classes),
        splits=splits,
        stats=stats,
        # recorded only where they say something, so class-id datasets keep their manifest ids
        task=None if arrays.task == CLASSIFICATION else arrays.task,
        class_names=None if arrays.class_names is None else tuple(arrays.class_names),
        run=run_record(reg, started, begin),
    ).to_dict()
    commit_outputs(
        reg, reg.dataset_dir(name), "datasets", manifest, DATASET_MANIFEST, {DATA_FILE: blob}
    )
    return manifest


def _split_block(y: np.ndarray) -> Split:
    if y.dtype.kind == "f":  # regression targets have no classes
        return Split.of(len(y), {})
    if y.ndim == 2:  # multi-label: positives per label
        return Split.of(len(y), {str(k): int(n) for k, n in enumerate(y.sum(0))})
    labels, counts = np.unique(y, return_counts=True)
    return Split.of(len(y), {str(int(c)): int(n) for c, n in zip(labels, counts, strict=True)})


# -- models ---------------------------------------------------------------------------------


def _checkpointer(
    reg: Registry,
    spec: ModelSpec,
    cfg: TrainConfig,
    config: Mapping[str, Any],
    datasets: Mapping[str, DatasetRef],
    source: ModelManifest | None,
) -> Checkpointer:
    """Where this build checkpoints, keyed by everything that decides its training."""
    key = checkpoint_key(
        {
            "spec_digest": spec.digest,
            "datasets": {role: d.id for role, d in datasets.items()},
            "source": None if source is None else source.id,
            "training": cfg.to_dict(),
            "architecture": config,
            "numerics": mode_of(reg.settings.defaults),
            "torch": torch.__version__,
            "stemma": STEMMA_VERSION,
        }
    )
    folder = reg.repo_root / STATE_DIR / CHECKPOINTS / spec.name
    return Checkpointer(folder, key, cfg.checkpoint_every, root=reg.repo_root)


def build_model(reg: Registry, name: str, progress: Progress | None = None) -> dict[str, Any]:
    """Build a model from its spec: map, train, evaluate, then write every output atomically.

    In a distributed launch (`training.distributed`, migration/distributed.py) every rank
    trains; rank 0 returns the manifest and the others an empty dict, having written nothing."""
    started, begin = now(), time.perf_counter()
    importable(reg.repo_root)
    check_buildable(reg, "model", name)
    spec = reg.model_spec(name)
    if trains_detector(reg, spec):  # a torchvision detector: migration/detection.py
        return build_detector(reg, name, progress, started, begin)
    if spec.quantize is not None or (spec.source and spec.source.relation == "quantized"):
        # the parent quantized with torchao, no training: migration/quantize.py
        return build_quantized(reg, name, spec, started, begin)
    if is_merge(spec):  # several parents, or an adapter into its base: migration/merge.py
        return build_merge(reg, spec, started, begin)
    if trains_lm(reg, spec):  # a transformers decoder on text: migration/causal_lm.py
        return build_lm(reg, name, progress, started, begin)
    display = spec.path
    defaults = dict(reg.settings.defaults.get("training") or {})
    if "device" in reg.settings.defaults:
        defaults.setdefault("device", reg.settings.defaults["device"])
    cfg = TrainConfig.from_spec(spec.training, display, defaults)
    strategy = Strategy.from_spec(spec.strategy, display)
    if strategy.mode == "lora" and (spec.source is None or strategy.lora is None):
        raise BuildError(
            f"{display} at /strategy/mode: mode lora needs a source model and a lora block"
            " (source: {model: BASE, relation: adapter}, lora: {target_modules: [...]})"
        )
    src_name, exploration, src_manifest, src_state = None, None, None, None
    if spec.source is not None:
        src_name, exploration = source_name(reg, spec)
        src_manifest, src_state = load_source(reg, spec, src_name)
        refuse_failed_source(spec, src_name, src_manifest)
    train_data, eval_data, datasets = training_data(reg, spec)
    task = get_task(train_data.task)
    for pointer, message in spec_problems(task.name, spec.raw):
        raise BuildError(f"{display} at {pointer}: {message}")
    num_classes = head_width(spec, task.name, train_data, eval_data)
    config = architecture_config(reg, spec, src_manifest, train_data.shape, num_classes)
    check_inputs(reg, spec, config, src_manifest, train_data)  # fail before training
    # -- hyper-parameter search: `training.search` picks the settings the build then uses --
    source = None if src_state is None or src_name is None else (src_name, src_state)
    searched: dict[str, Any] | None = None
    if "search" in spec.training and cfg.distributed is not None:
        raise BuildError(
            f"{display} at /training/distributed: a hyper-parameter search (training.search)"
            " runs in one process; drop one of the two"
        )
    if "search" in spec.training:
        cfg, searched = search_for_build(reg, spec, cfg, strategy, config, source, train_data)
    # -- end of hyper-parameter search --

    prepared = prepare_target(config, strategy, cfg.seed, source, reg.settings.entrypoints, display)
    module, tmap, reinit = prepared.module, prepared.tensor_map, prepared.reinit
    rows, unused = report(module, tmap, reinit)
    peft_model = None
    if strategy.mode == "lora":  # LoRA through peft: the base frozen, adapter and head train
        lora = lora_block(strategy.lora or {})
        check_targets(module, lora["target_modules"], display)
        peft_model = inject(module, lora, head_prefix(module))
        rows = adapter_rows(peft_model, set(tmap.pairs) - reinit if tmap else set())

    result = train(
        module,
        train_data.x_train,
        train_data.y_train,
        eval_data.x_eval,
        eval_data.y_eval,
        cfg,
        features=strategy.features,
        progress=progress,
        display=display,
        checkpoint=_checkpointer(reg, spec, cfg, config, datasets, src_manifest),
    )
    if not dist.is_writer():  # rank 0 evaluates, checks and writes; the others are done
        return {}
    device = torch.device(result.device)
    with cpu_threads(device):  # as trained: more threads only contend on a small model
        scored = evaluate(
            module,
            eval_data.x_eval,
            eval_data.y_eval,
            device,
            amp=cfg.amp and device.type == "cuda",
            loss=cfg.loss,
        )
    metrics = {m: scored[m] for m in task.metrics}
    module.to("cpu")
    adapter: Adapter | None = None
    files: dict[str, bytes] = {}
    if peft_model is not None:
        files = adapter_files(peft_model)
        blob = files[ADAPTER_WEIGHTS]
        weights_block = blob_weights(f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}", blob, "safetensors")
        assert src_manifest is not None and src_name is not None
        adapter = adapter_record(
            ModelRef.of(src_name, src_manifest.id),
            lora,
            blob_ref(f"{ADAPTER_DIR}/{ADAPTER_CONFIG}", files[ADAPTER_CONFIG], "json"),
            (head_prefix(module),),
        )
    else:  # streamed at the commit (`write_model`), which makes the manifest with the block
        weights_block = None

    trained = model_manifest(
        spec,
        name,
        None if src_manifest is None or src_name is None else (src_name, src_manifest),
        datasets,
        (config, rows),
        module,
        (strategy, bool(tmap), unused, result.features_cached),
        (metrics, scored["per_class"]),
    )
    names = class_names(reg, spec.train)
    # -- behavioural checks (migration/checks.py) --
    checks, check_data = run_checks(
        reg,
        spec,
        module,
        target_config=config,
        rows=rows,
        train_data=train_data,
        source_manifest=src_manifest,
        source_state=src_state,
        tensor_map=tmap,
        seed=cfg.seed,
        device=result.device,
    )
    trained = trained.with_datasets(check_data)
    # -- end of behavioural checks --
    run = run_record(
        reg,
        started,
        begin,
        device=result.device,
        seed=cfg.seed,
        deterministic=result.deterministic,
        threads=result.threads,
        train_s=round(result.train_seconds, 3),
        **result.run_notes(),
    )
    tokenizer, tokenizer_files = inherited_tokenizer(reg, src_name, src_manifest)
    adapter_outputs = {f"{ADAPTER_DIR}/{n}": data for n, data in files.items()} if files else {}
    adapter_outputs.update(tokenizer_files)
    manifest = write_model(
        reg,
        name,
        lambda weights: trained.manifest(
            weights,
            checks,
            # absent means classification: older ids stay
            task=None if task.name == CLASSIFICATION else task.name,
            class_names=None if names is None else tuple(names),
            adapter=adapter,
            exploration=exploration,
            search=searched,  # hyper-parameter search: every trial and the best settings
            run=run,
            tokenizer=tokenizer,
        ),
        module.state_dict() if weights_block is None else weights_block,
        metrics,
        result.curve,
        adapter_outputs,
    )
    _checkpointer(reg, spec, cfg, config, datasets, src_manifest).clear()  # the build is done
    return manifest


def register_model(
    reg: Registry,
    name: str,
    weights_path: Path,
    architecture: Mapping[str, Any] | None = None,
    eval_dataset: str | None = None,
    in_shape: list[int] | None = None,
    description: str | None = None,
    source: str | None = None,
    relation: str = "finetune",
) -> dict[str, Any]:
    """Import externally trained weights (see migration/register.py)."""
    return register(
        reg,
        name,
        weights_path,
        architecture=architecture,
        eval_dataset=eval_dataset,
        in_shape=in_shape,
        description=description,
        source=source,
        relation=relation,
    )
