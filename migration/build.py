"""Build datasets and models from their specs; the work behind `stemma build` and `dvc repro`.

A build reads everything it needs, trains and evaluates, and only then switches its outputs
in as one unit (migration/commit.py): an interrupted or failed build leaves the previous outputs
intact. A rebuild whose id equals the manifest's in place rewrites no file: the manifest and
every output stay byte for byte, and the new run's block goes to the untracked `last-run.json`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from stemma.registry import Registry
from stemma.registry import __version__ as STEMMA_VERSION
from stemma.registry.check.gate import check_buildable
from stemma.registry.errors import BuildError, StemmaError
from stemma.registry.records.core import (
    DATASET_MANIFEST,
    MODEL_MANIFEST,
    DatasetSpec,
    ModelSpec,
)
from stemma.registry.rules.parents import is_merge, pointer_of
from stemma.registry.rules.taskspec import CLASSIFICATION, MULTILABEL, REGRESSION, spec_problems
from stemma.registry.store.documents import validate_document
from stemma.registry.store.files import (
    canonical_json,
    content_id,
    file_hashes,
    read_json,
    write_atomic,
)
from stemma.registry.store.handle import DATA_FILE, INDEX_DIR, MANIFEST_FILE, WEIGHTS_FILE
from torch import nn

from . import distributed as dist
from . import fingerprint
from . import weights as _weights
from .adapters import ADAPTER_DIR
from .architectures import build_module, head_prefix, make_config
from .checkpoint import CHECKPOINTS, Checkpointer
from .checkpoint import key_of as checkpoint_key
from .checks import check_inputs, run_checks
from .commit import Stage
from .data import DatasetArrays, feature_stats, load_dataset, materialize, npz_bytes
from .entrypoints import importable
from .evaluate import evaluate
from .hubsnapshot import inherit_tokenizer
from .mapping import plan, report, transfer
from .model_manifest import model_manifest
from .numerics import mode_of
from .numerics import record as numerics_record
from .strategy import Strategy, prepare_target
from .tasks import get as get_task
from .train import Progress, TrainConfig, cpu_threads, train
from .weights import load_weights, read_checked

METRICS_FILE = "metrics.json"
CURVE_FILE = "curve.json"
EXPLORATION_FILE = "exploration.json"
LAST_RUN_FILE = "last-run.json"
"""The latest build's run block, git-ignored: an identical rebuild leaves the manifest as is."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _blob_file(path: str, blob: bytes, fmt: str) -> dict[str, Any]:
    """The manifest's file block for bytes about to be written."""
    return _weights.hashes_of(blob).block(path, fmt)


def _run_block(reg: Registry, started: str, begin: float, **extra: Any) -> dict[str, Any]:
    """How the build ran: its own work's duration (from `begin`), versions, numerics."""
    return {
        "started": started,
        "duration_s": round(time.perf_counter() - begin, 3),
        "stemma": STEMMA_VERSION,
        "torch": torch.__version__,
        "numerics": {
            **numerics_record(mode_of(reg.settings.defaults)),
            "fingerprint": fingerprint.of_this_machine(reg.repo_root / INDEX_DIR),
        },
        **extra,
    }


def _non_finite(doc: Any, pointer: str = "") -> str | None:
    """The JSON pointer of the first NaN or infinity in `doc`, or None."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return pointer
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for key, value in items:
        found = _non_finite(value, f"{pointer}/{key}")
        if found is not None:
            return found
    return None


def _commit(
    reg: Registry,
    folder: Path,
    kind: str,
    manifest: dict[str, Any],
    schema: str,
    outputs: Mapping[str, Any],
    stage: Stage | None = None,
) -> None:
    """Fill in the id, validate, then switch the outputs and the manifest in as one unit.

    `outputs` maps file names to bytes or to JSON documents (written as canonical JSON).

    When a valid manifest with the same id is in place, it stays as it is (the run block is
    not part of the id): only outputs whose bytes differ are written, usually none.
    """
    from .commit import commit

    rel = reg.rel(kind, manifest["name"], MANIFEST_FILE)
    docs = {name: doc for name, doc in outputs.items() if not isinstance(doc, bytes)}
    for where, doc in (
        (rel, manifest),
        *((reg.rel(kind, manifest["name"], n), d) for n, d in docs.items()),
    ):
        pointer = _non_finite(doc)
        if pointer is not None:
            raise BuildError(
                f"{where} at {pointer or '/'}: the build produced a value that is not a finite"
                " number (training diverged?); nothing was written: lower training.lr or"
                " check the data"
            )
    manifest["id"] = content_id(manifest)
    validate_document(manifest, schema, rel)
    try:
        found = (reg.model_manifest if kind == "models" else reg.dataset_manifest)(manifest["name"])
    except StemmaError:
        found = None  # unreadable or invalid: replaced like any changed file
    same = found is not None and found.id == manifest["id"] == found.computed_id
    files = {
        n: b if isinstance(b, bytes) else canonical_json(b).encode() for n, b in outputs.items()
    }
    if not same:
        files[MANIFEST_FILE] = canonical_json(manifest).encode()
    commit(folder, files, stage)
    reg.forget(rel)
    write_atomic(folder / LAST_RUN_FILE, canonical_json(manifest["run"]))


# -- datasets -------------------------------------------------------------------------------


def build_dataset(reg: Registry, name: str) -> dict[str, Any]:
    """Materialize a dataset spec, write data.npz and its manifest; returns the manifest."""
    started, begin = _now(), time.perf_counter()
    importable(reg.repo_root)
    check_buildable(reg, "dataset", name)
    spec = reg.dataset_spec(name)
    from .detection_data import is_detection_source

    if is_detection_source(str(spec.raw["source"])):  # boxes per image: migration/detection.py
        from .detection import build_detection_dataset

        return build_detection_dataset(reg, name, spec, started, begin)
    from .textdata import is_text_source

    if is_text_source(spec.raw):  # text for causal language models: migration/causal_lm.py
        from .causal_lm import build_text_dataset

        return build_text_dataset(reg, name, spec, started, begin)
    arrays = materialize(
        spec.raw,
        display=spec.path,
        trusted=reg.settings.entrypoints,
        resolve=lambda rel: reg.resolve(rel, "/source", spec.path),
    )
    blob = npz_bytes(arrays)
    manifest: dict[str, Any] = {
        **dataset_head(spec, name, blob),
        "shape": arrays.shape,
        "dtype": str(arrays.x_train.dtype),
        "classes": arrays.classes,
        "splits": {
            "train": _split_block(arrays.y_train),
            "eval": _split_block(arrays.y_eval),
        },
        "stats": feature_stats(arrays.x_train),
    }
    # recorded only where they say something, so class-id datasets keep their manifest ids
    if arrays.task != CLASSIFICATION:
        manifest["task"] = arrays.task
    if arrays.class_names is not None:
        manifest["class_names"] = list(arrays.class_names)
    manifest["run"] = _run_block(reg, started, begin)
    _commit(reg, reg.dataset_dir(name), "datasets", manifest, DATASET_MANIFEST, {DATA_FILE: blob})
    return manifest


def dataset_head(spec: DatasetSpec, name: str, blob: bytes) -> dict[str, Any]:
    """The keys every dataset manifest opens with: kind, schema version, name, the spec and
    its digest, and the `data.npz` file the build wrote (`blob`)."""
    return {
        "kind": "dataset",
        "schema_version": 1,
        "name": name,
        "spec": dict(spec.raw),
        "spec_digest": spec.digest,
        "data": _blob_file(DATA_FILE, blob, "npz"),
    }


def _split_block(y: np.ndarray) -> dict[str, Any]:
    if y.dtype.kind == "f":  # regression targets have no classes
        return {"samples": len(y), "class_counts": {}}
    if y.ndim == 2:  # multi-label: positives per label
        return {"samples": len(y), "class_counts": {str(k): int(n) for k, n in enumerate(y.sum(0))}}
    labels, counts = np.unique(y, return_counts=True)
    return {
        "samples": len(y),
        "class_counts": {str(int(c)): int(n) for c, n in zip(labels, counts, strict=True)},
    }


# -- models ---------------------------------------------------------------------------------


def load_model(reg: Registry, name: str, checked_for: ModelSpec | None = None) -> nn.Module:
    """Rebuild a built model from its manifest's architecture config and its weights; an
    adapter model is its base (loaded the same way) with the adapter merged in. With
    `checked_for` (the spec of a build deriving from it), every weights file read, an
    adapter's base included, is read once and checked against its manifest's hashes."""
    importable(reg.repo_root)
    manifest = reg.model_manifest(name)
    path = reg.model_dir(name) / str((manifest.raw["weights"] if manifest else {}).get("path", ""))
    if manifest is None or not path.is_file():
        raise BuildError(
            f"{reg.rel('models', name)}: model {name!r} has no weights; build it first (dvc repro)"
        )
    if manifest.raw.get("quantize"):  # torchao's tensors: migration/quantize.py loads them
        from .quantize import load_quantized

        return load_quantized(reg, name)
    with torch.random.fork_rng(devices=[]):  # building initialises from the global RNG
        module = build_module(
            manifest.raw["architecture"]["config"], reg.settings.entrypoints, manifest.path
        )
    adapter = manifest.raw.get("adapter")
    if adapter:
        from .adapters import compose

        base = load_model(reg, str(adapter["base"]["model"]), checked_for)
        return compose(module, base.state_dict(), path.parent, manifest.path)
    if checked_for is not None:
        state = _checked_state(reg, checked_for, name, manifest.raw)
    else:
        state = load_weights(path, reg.rel("models", name, path.name))
    transfer(module, state, plan(state, module.state_dict(), "exact", manifest.path))
    module.eval()
    return module


def _source_name(reg: Registry, spec: ModelSpec) -> tuple[str, dict[str, Any] | None]:
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


def _load_source(
    reg: Registry, spec: ModelSpec, src: str
) -> tuple[Mapping[str, Any], dict[str, torch.Tensor]]:
    """The source's manifest and weights, checked against each other."""
    manifest = reg.model_manifest(src)
    rel = str((manifest.raw["weights"] if manifest else {}).get("path", WEIGHTS_FILE))
    path = reg.model_dir(src) / rel
    if manifest is None or not path.is_file():
        raise BuildError(
            f"{spec.path} at {pointer_of(spec, src)}: source model {src!r} has no weights;"
            " build it first (dvc repro)"
        )
    if manifest.raw.get("quantize"):  # torchao int8 tensors: no weights to derive from
        from .quantize import quantized_source_error

        raise quantized_source_error(spec, src, manifest.raw)
    recorded = manifest.raw["weights"]
    if manifest.raw.get("adapter"):  # base + adapter, merged: a plain state dict to map
        found = file_hashes(path, reg.repo_root, reg.rel("models", src, rel))
        _same_as_recorded(spec, reg.rel("models", src, rel), found["sha256"], recorded)
        return manifest.raw, dict(load_model(reg, src, spec).state_dict())
    return manifest.raw, _checked_state(reg, spec, src, manifest.raw)


def _checked_state(
    reg: Registry, spec: ModelSpec, src: str, manifest: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Model `src`'s stored state dict, read once and checked against its manifest's hashes
    (a file that differs is refused in the words of `spec`, the build deriving from it)."""
    recorded = manifest["weights"]
    rel = str(recorded.get("path", WEIGHTS_FILE))
    path = reg.model_dir(src) / rel
    if "shards" in recorded:  # the index, then each shard read once: hashed and loaded
        from .shards import load_sharded

        index = file_hashes(path, reg.repo_root, reg.rel("models", src, rel))
        _same_as_recorded(spec, reg.rel("models", src, rel), index["sha256"], recorded)
        state, parts = load_sharded(path, reg.rel("models", src, rel), reg.repo_root)
        for shard in recorded["shards"]:
            got = parts.get(str(shard["path"]))
            shown = reg.rel("models", src, str(shard["path"]))
            _same_as_recorded(spec, shown, got.sha256 if got else "", shard)
        return state
    # one read: the bytes hashed are the bytes loaded
    state, hashes = read_checked(path, reg.rel("models", src, rel), reg.repo_root)
    _same_as_recorded(spec, reg.rel("models", src, rel), hashes.sha256, recorded)
    return state


def _same_as_recorded(spec: ModelSpec, shown: str, sha256: str, block: Mapping[str, Any]) -> None:
    """Refuse a source file whose sha256 is not the one its manifest records."""
    if sha256 != block.get("sha256"):
        raise BuildError(
            f"{spec.path} at /source/model: {shown} does not match its manifest;"
            " rebuild it (dvc repro) or check it out (dvc checkout)"
        )


def _refuse_failed_source(spec: ModelSpec, src: str, manifest: Mapping[str, Any]) -> None:
    """A source that failed its gates is no base to derive from, unless the spec says so."""
    failed = [str(g["metric"]) for g in manifest.get("gates") or [] if not g.get("passed")]
    if failed and not (spec.raw.get("source") or {}).get("allow_failed_gates", False):
        raise BuildError(
            f"{spec.path} at {pointer_of(spec, src)}: source model {src!r} failed its gates"
            f" ({', '.join(failed)}); fix it, or set source.allow_failed_gates: true"
        )


def _architecture(
    reg: Registry,
    spec: ModelSpec,
    source: Mapping[str, Any] | None,
    shape: list[int],
    num_classes: int,
) -> dict[str, Any]:
    if spec.architecture:
        arch = spec.architecture
        if arch.get("family") == "transformers" and "path" in arch:
            from .families import read_hf_config

            # the folder's config is copied into the manifest: the build needs no folder later
            folder = reg.resolve(str(arch["path"]), "/architecture/path", spec.path)
            config = read_hf_config(folder, f"{spec.path} at /architecture/path")
            arch = {**{k: v for k, v in arch.items() if k != "path"}, "config": config}
    elif source is not None:
        inherited = dict(source["architecture"]["config"])
        arch = {k: v for k, v in inherited.items() if k not in ("in_shape", "num_classes")}
    else:
        raise BuildError(
            f"{spec.path} at /architecture: a model without a source needs an"
            " architecture (e.g. {family: mlp, hidden: [128, 64]})"
        )
    return make_config(arch, shape, num_classes)


def _data(reg: Registry, spec: ModelSpec) -> tuple[DatasetArrays, DatasetArrays, dict[str, Any]]:
    """Train and eval arrays plus the manifest's datasets block."""
    train_data = load_dataset(reg, spec.train, "/data/train", spec.path)
    pointer = "/data/eval" if "eval" in spec.raw["data"] else "/data/train"
    eval_data = load_dataset(reg, spec.eval, pointer, spec.path)
    if eval_data.shape != train_data.shape:
        raise BuildError(
            f"{spec.path} at /data/eval: samples of {spec.eval!r} have shape"
            f" {eval_data.shape}, those of {spec.train!r} {train_data.shape}"
        )
    roles = [("train", spec.train, "/data/train"), ("eval", spec.eval, pointer)]
    # datasets the declared checks read are recorded too: a new version of one is a new build
    for check in ("forgetting", "drift"):
        if "data" in (spec.checks.get(check) or {}):
            roles.append((check, str(spec.checks[check]["data"]), f"/checks/{check}/data"))
    block = {}
    for role, ds, where in roles:
        manifest = reg.dataset_manifest(ds)
        if manifest is None:
            raise BuildError(
                f"{spec.path} at {where}: dataset {ds!r} has not been built; build it first"
                " (dvc repro)"
            )
        block[role] = {"name": ds, "id": manifest.id}
    return train_data, eval_data, block


def _outputs(
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


def _class_names(reg: Registry, dataset: str) -> list[str] | None:
    """The training dataset's class names, when its labels had names."""
    manifest = reg.dataset_manifest(dataset)
    names = manifest.raw.get("class_names") if manifest is not None else None
    return [str(n) for n in names] if isinstance(names, list) else None


def _checkpointer(
    reg: Registry,
    spec: ModelSpec,
    cfg: TrainConfig,
    config: Mapping[str, Any],
    datasets: Mapping[str, Any],
    source: Mapping[str, Any] | None,
) -> Checkpointer:
    """Where this build checkpoints, keyed by everything that decides its training."""
    key = checkpoint_key(
        {
            "spec_digest": spec.digest,
            "datasets": {role: d["id"] for role, d in datasets.items()},
            "source": None if source is None else source["id"],
            "training": cfg.to_dict(),
            "architecture": config,
            "numerics": mode_of(reg.settings.defaults),
            "torch": torch.__version__,
            "stemma": STEMMA_VERSION,
        }
    )
    folder = reg.repo_root / INDEX_DIR / CHECKPOINTS / spec.name
    return Checkpointer(folder, key, cfg.checkpoint_every, root=reg.repo_root)


def build_model(reg: Registry, name: str, progress: Progress | None = None) -> dict[str, Any]:
    """Build a model from its spec: map, train, evaluate, then write every output atomically.

    In a distributed launch (`training.distributed`, migration/distributed.py) every rank
    trains; rank 0 returns the manifest and the others an empty dict, having written nothing."""
    started, begin = _now(), time.perf_counter()
    importable(reg.repo_root)
    check_buildable(reg, "model", name)
    spec = reg.model_spec(name)
    from .detection import trains_detector

    if trains_detector(reg, spec):  # a torchvision detector: migration/detection.py
        from .detection import build_detector

        return build_detector(reg, name, progress, started, begin)
    if "quantize" in spec.raw or (spec.source and spec.source.relation == "quantized"):
        from .quantize import build_quantized  # the parent quantized with torchao, no training

        return build_quantized(reg, name, spec, started, begin)
    if is_merge(spec):  # several parents, or an adapter into its base: migration/merge.py
        from .merge import build_merge

        return build_merge(reg, spec, started, begin)
    from .causal_lm import trains_lm

    if trains_lm(reg, spec):  # a transformers decoder on text: migration/causal_lm.py
        from .causal_lm import build_lm

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
        src_name, exploration = _source_name(reg, spec)
        src_manifest, src_state = _load_source(reg, spec, src_name)
        _refuse_failed_source(spec, src_name, src_manifest)
    train_data, eval_data, datasets = _data(reg, spec)
    task = get_task(train_data.task)
    for pointer, message in spec_problems(task.name, spec.raw):
        raise BuildError(f"{display} at {pointer}: {message}")
    num_classes = _outputs(spec, task.name, train_data, eval_data)
    config = _architecture(reg, spec, src_manifest, train_data.shape, num_classes)
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
        from .search import search_for_build

        cfg, searched = search_for_build(reg, spec, cfg, strategy, config, source, train_data)
    # -- end of hyper-parameter search --

    prepared = prepare_target(config, strategy, cfg.seed, source, reg.settings.entrypoints, display)
    module, tmap, reinit = prepared.module, prepared.tensor_map, prepared.reinit
    rows, unused = report(module, tmap, reinit)
    peft_model = None
    if strategy.mode == "lora":  # LoRA through peft: the base frozen, adapter and head train
        from .adapters import check_targets, inject, lora_block
        from .adapters import rows as adapter_rows

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
    adapter: dict[str, Any] | None = None
    files: dict[str, bytes] = {}
    if peft_model is not None:
        from .adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_files

        files = adapter_files(peft_model)
        blob = files[ADAPTER_WEIGHTS]
        weights_block = _blob_file(f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}", blob, "safetensors")
        assert src_manifest is not None
        adapter = {
            "format": "peft-lora",
            "base": {"model": src_name, "id": src_manifest["id"]},
            **lora,
            "modules_to_save": [head_prefix(module)],
            "config": _blob_file(f"{ADAPTER_DIR}/{ADAPTER_CONFIG}", files[ADAPTER_CONFIG], "json"),
        }
    else:  # streamed at the commit (`_write_model`): the block is filled in there
        weights_block = {}

    manifest = model_manifest(
        spec,
        name,
        None if src_manifest is None or src_name is None else (src_name, src_manifest),
        datasets,
        weights_block,
        (config, rows),
        module,
        (strategy, bool(tmap), unused, result.features_cached),
        (metrics, scored["per_class"]),
    )
    if task.name != CLASSIFICATION:  # absent means classification: older ids stay
        manifest["task"] = task.name
    names = _class_names(reg, spec.train)
    if names is not None:
        manifest["class_names"] = names
    # -- behavioural checks (migration/checks.py) --
    manifest["checks"], check_data = run_checks(
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
    manifest["datasets"].update(check_data)
    changed = (manifest["checks"].get("parameters") or {}).get("frozen_changed")
    if changed:  # a frozen tensor that moved is a broken build, not a finding
        raise BuildError(f"{display} at /strategy/freeze: frozen tensors changed: {changed[0]}")
    # -- end of behavioural checks --
    if adapter is not None:
        manifest["adapter"] = adapter
    if exploration is not None:
        manifest["exploration"] = exploration
    if searched is not None:  # hyper-parameter search: every trial and the best settings
        manifest["search"] = searched
    manifest["run"] = _run_block(
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
    adapter_outputs = {f"{ADAPTER_DIR}/{n}": data for n, data in files.items()} if files else {}
    adapter_outputs.update(inherit_tokenizer(reg, manifest, src_name, src_manifest))
    _write_model(
        reg,
        name,
        manifest,
        None if files else module.state_dict(),
        metrics,
        result.curve,
        adapter_outputs,
    )
    _checkpointer(reg, spec, cfg, config, datasets, src_manifest).clear()  # the build is done
    return manifest


def _write_model(
    reg: Registry,
    name: str,
    manifest: dict[str, Any],
    state: Mapping[str, torch.Tensor] | None,
    metrics: Mapping[str, float],
    curve: list[dict[str, Any]],
    files: Mapping[str, bytes] | None = None,
) -> None:
    """Stream the weights into the staging folder (hashed as they are written, sharded above
    `limits.max_shard_bytes`) and record them in the manifest; then validate and switch
    weights, metrics, curve and the manifest in as one unit."""
    outputs: dict[str, Any] = {METRICS_FILE: dict(metrics), CURVE_FILE: curve}
    outputs.update(files or {})  # an adapter's own files come instead of `state`
    folder = reg.model_dir(name)
    with Stage(folder) as stage:
        if state is not None:
            limit = int(reg.settings.given_limits.get("max_shard_bytes", _weights.SHARD_BYTES))
            manifest["weights"] = _write_weights(stage, state, limit)
        _commit(reg, folder, "models", manifest, MODEL_MANIFEST, outputs, stage)
    _drop_unrecorded_shards(folder, manifest["weights"])


def _write_weights(stage: Stage, state: Mapping[str, torch.Tensor], limit: int) -> dict[str, Any]:
    """The weights as `weights.safetensors`: one file, or, above `limit`, a folder of that
    name holding the index and its shards (the hub's layout, files beside the index).

    Why a folder: the model stage's DVC output is `weights.safetensors` whatever the size
    (DVC takes a file or a folder at a declared path), so dvc.yaml follows from the specs
    alone and stays the same for every unsharded model; a sharded model is one DVC output
    that `dvc push`, `pull` and `status` handle whole."""
    from .shards import write

    def into_folder(file: str, writer: Callable[[IO[bytes]], _weights.Hashes]) -> _weights.Hashes:
        # the single-file case keeps its name; shards and index go inside the folder
        return stage.write(file if file == WEIGHTS_FILE else f"{WEIGHTS_FILE}/{file}", writer)

    block = write(into_folder, state, WEIGHTS_FILE, limit)
    if "shards" in block:  # paths in the manifest are relative to the model's folder
        block["path"] = f"{WEIGHTS_FILE}/{block['path']}"
        for shard in block["shards"]:
            shard["path"] = f"{WEIGHTS_FILE}/{shard['path']}"
    return block


def _drop_unrecorded_shards(folder: Path, block: Mapping[str, Any]) -> None:
    """After the switch: files of an earlier sharded build (other shard counts) that the
    manifest no longer names leave the weights folder, which DVC records whole."""
    shards = folder / WEIGHTS_FILE
    if "shards" not in block or not shards.is_dir() or shards.is_symlink():
        return
    keep = {str(block["path"]), *(str(s["path"]) for s in block["shards"])}
    for path in shards.iterdir():
        if f"{WEIGHTS_FILE}/{path.name}" not in keep and path.is_file():
            path.unlink()


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
    from .register import register

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
