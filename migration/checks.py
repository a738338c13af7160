"""The behavioural checks a model build runs: forgetting, feature drift, parameter drift.

`run_checks` is called by the build once the target is trained; it returns the manifest's
`checks` block and the datasets the checks read (roles `forgetting` and `drift`). Every result
records its inputs (dataset names and manifest ids), its figures, its thresholds and whether it
passed. Gates on metrics (`gates:` in the spec, per-class minimums included) are evaluated by
the build itself and recorded under `gates`.

- forgetting (declared): accuracy on a source-task dataset's eval split before the transfer
  (the source model) and after it (the target). When the target's head is the source's head,
  carried over unchanged in shape and not re-initialised, and covers the dataset's labels,
  both models are scored with their own heads. Otherwise a linear probe (`probe_accuracy`) is
  fitted on each model's penultimate features of the dataset's train split, so before and
  after compare like with like. Default `max_drop`: `forgetting.DEFAULT_MAX_DROP`.
- drift (declared; needs a source): the source model's penultimate features on the source's
  own training data versus on the target's data (the target's training data unless `data`
  is given), via `drift.drift_check`. By default it only records figures: a target with new
  classes sits far from the source by design, so a default gate would fail every such
  transfer; each threshold the spec gives gates.
- parameters (always when there is a source): per-tensor relative change of the transferred
  tensors, frozen transferred tensors bit-identical to the source (`paramcheck`).

Checks run in float32 on the build's device without autocast, with the training loop's fixed
thread count for torch and numpy's BLAS alike, so an identical CPU rebuild records identical
figures (they are part of the manifest id).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.records.checkspec import DriftSpec, ForgettingSpec, ParametersSpec
from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import Check, DatasetRef, ModelManifest, Tensor
from stemma.registry.rules.taskspec import CLASSIFICATION, REGRESSION
from torch import nn

from . import optim
from .architectures import build_module, head_of, head_prefix, penultimate
from .data import DatasetArrays, load_dataset
from .drift import DEFAULT_PERMUTATIONS, drift_check
from .evaluate import evaluate
from .forgetting import DEFAULT_MAX_DROP, forgetting_figures
from .mapping import TensorMap
from .paramcheck import DEFAULT_MIN_RELATIVE_CHANGE, ParameterCheck, parameter_check
from .tasks import for_labels
from .train import CPU_THREADS

PROBE_EPOCHS = 20
"""Epochs of the forgetting check's linear probe (logistic regression on cached features)."""
PROBE_MIN_STEPS = 300
"""Fewer epochs than this many optimizer steps would underfit a small split: more are run."""
PROBE_LR = 1e-2
"""Adam learning rate of the linear probe."""
PROBE_BATCH = 64
"""Mini-batch size of the linear probe."""
PROBE_WEIGHT_DECAY = 1e-4
"""L2 penalty of the linear probe."""
FEATURE_BATCH = 1024
_DECIMALS = 6
Ref = DatasetRef


def _ref(reg: Registry, name: str) -> Ref:
    """{name, id} of a built dataset (load_dataset has already refused unbuilt ones)."""
    manifest = reg.dataset_manifest(name)
    assert manifest is not None
    return DatasetRef.of(name, manifest.id)


@contextmanager
def _steady(device: torch.device) -> Iterator[None]:
    """Fixed thread counts for torch and numpy's BLAS, the global RNG left untouched.

    Figures are part of the manifest id: a float reduction split over another number of
    threads can round differently, so the checks run on as many threads everywhere.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    blas: Any = threadpool_limits(limits=CPU_THREADS)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        with blas, torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def features(module: nn.Module, x: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Penultimate features (N, D) of `module` in eval mode, float32, as a float64 array."""
    dev = torch.device(device)
    was_training = module.training
    module.eval()
    try:
        data = torch.as_tensor(x, dtype=torch.float32)
        outs = [
            penultimate(module, data[i : i + FEATURE_BATCH].to(dev)).float().cpu()
            for i in range(0, len(data), FEATURE_BATCH)
        ]
    finally:
        module.train(was_training)
    flat = torch.cat(outs).reshape(len(data), -1) if outs else torch.zeros((0, 0))
    return flat.numpy().astype(np.float64)


def probe_epochs(samples: int, epochs: int = PROBE_EPOCHS) -> int:
    """Epochs the probe runs on `samples` training rows: `epochs`, or enough for the minimum."""
    batches = max(1, -(-samples // PROBE_BATCH))
    return max(epochs, -(-PROBE_MIN_STEPS // batches))


def probe_accuracy(
    train_feats: np.ndarray,
    y_train: np.ndarray,
    eval_feats: np.ndarray,
    y_eval: np.ndarray,
    seed: int = 0,
    epochs: int = PROBE_EPOCHS,
) -> float:
    """Eval accuracy of a linear probe: multinomial logistic regression on frozen features.

    Features are standardised with the train split's mean and standard deviation; the
    weights start at zero and train for `epochs` epochs of Adam (lr `PROBE_LR`, weight decay
    `PROBE_WEIGHT_DECAY`, batches of `PROBE_BATCH` in a seeded order) on the CPU in float32,
    and for at least `PROBE_MIN_STEPS` steps. The problem is convex, so the zero start and the
    seed make the result deterministic.
    """
    return probe_score(train_feats, y_train, eval_feats, y_eval, seed, epochs)


def probe_score(
    train_feats: np.ndarray,
    y_train: np.ndarray,
    eval_feats: np.ndarray,
    y_eval: np.ndarray,
    seed: int = 0,
    epochs: int = PROBE_EPOCHS,
) -> float:
    """The labels' task's main metric of a linear probe on frozen features: `probe_accuracy`
    for class labels; for regression and multi-label targets the same probe trained with the
    task's default loss (mse, bce), regression targets standardised with the train split's
    mean and deviation (r2 does not change under that map)."""
    task = for_labels(y_train)
    if task.name == REGRESSION:
        centre, spread = y_train.mean(axis=0), np.maximum(y_train.std(axis=0), 1e-6)
        y_train, y_eval = (y_train - centre) / spread, (y_eval - centre) / spread
    mean = train_feats.mean(axis=0)
    std = np.maximum(train_feats.std(axis=0), 1e-6)  # constant features: centre, do not blow up
    xt = torch.as_tensor((train_feats - mean) / std, dtype=torch.float32)
    xe = torch.as_tensor((eval_feats - mean) / std, dtype=torch.float32)
    yt, ye = task.target(y_train), task.target(y_eval)
    if task.name == CLASSIFICATION:
        width = int(max(int(yt.max()), int(ye.max()))) + 1
    else:
        width = task.outputs(y_train)
    probe = nn.Linear(xt.shape[1], width)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    opt = optim.Adam(probe.parameters(), lr=PROBE_LR, weight_decay=PROBE_WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(probe_epochs(len(yt), epochs)):
        order = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(yt), PROBE_BATCH):
            idx = order[start : start + PROBE_BATCH]
            loss = task.loss(probe(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    with torch.no_grad():
        if task.name != CLASSIFICATION:
            return float(task.scores(probe(xe), ye)[task.main])
        hits = (probe(xe).argmax(dim=1) == ye).float().mean()
    return round(float(hits), _DECIMALS)


def source_module(
    reg: Registry, manifest: ModelManifest, state: Mapping[str, torch.Tensor]
) -> nn.Module:
    """The source model rebuilt from its manifest's architecture config and its weights."""
    with torch.random.fork_rng(devices=[]):  # building initialises from the global RNG
        module = build_module(
            dict(manifest.architecture.config), reg.settings.entrypoints, manifest.name
        )
    module.load_state_dict(dict(state), strict=True)
    module.eval()
    return module


def _in_shape(module_config: Mapping[str, Any]) -> list[int]:
    return [int(d) for d in ArchitectureConfig.from_dict(module_config).in_shape]


def _same_head(rows: Sequence[Tensor], prefix: str = "head") -> bool:
    """True when every head tensor was carried over from the source's own head, unchanged."""
    head = [r for r in rows if r.name.startswith(prefix + ".")]
    return bool(head) and all(r.origin == "transferred" and r.source_name == r.name for r in head)


def _out_features(module: nn.Module) -> int | None:
    head = head_of(module)
    return int(head.out_features) if isinstance(head, nn.Linear) else None


def _forgetting(
    reg: Registry,
    spec: ModelSpec,
    block: ForgettingSpec,
    module: nn.Module,
    target_config: Mapping[str, Any],
    source: nn.Module,
    source_manifest: ModelManifest,
    rows: Sequence[Tensor],
    seed: int,
    device: torch.device,
) -> tuple[Check, Ref]:
    name = block.data
    data = _forgetting_data(reg, spec, name, target_config, source_manifest)
    task = for_labels(data.y_train)
    widths = (_out_features(source), _out_features(module))
    if task.name == CLASSIFICATION:
        labels = int(max(data.y_train.max(initial=0), data.y_eval.max(initial=0)))
        fits = all(w is not None and labels < w for w in widths)
    else:
        fits = all(w == task.outputs(data.y_train) for w in widths)
    use_head = _same_head(rows, head_prefix(module)) and fits
    if use_head:
        method = "head"
        before = evaluate(source, data.x_eval, data.y_eval, device)[task.main]
        after = evaluate(module, data.x_eval, data.y_eval, device)[task.main]
    else:
        method = "linear-probe"
        before, after = (
            probe_score(
                features(m, data.x_train, device),
                data.y_train,
                features(m, data.x_eval, device),
                data.y_eval,
                seed,
            )
            for m in (source, module)
        )
    max_drop = float(DEFAULT_MAX_DROP if block.max_drop is None else block.max_drop)
    found = forgetting_figures(before, after, max_drop, task.main)
    ref = _ref(reg, name)
    inputs: dict[str, Any] = {
        "data": {**ref.to_dict(), "split": "eval", "samples": len(data.y_eval)},
        "source_model": {"name": source_manifest.name, "id": source_manifest.id},
    }
    if method == "linear-probe":
        inputs["probe"] = {
            "fit_split": "train",
            "fit_samples": len(data.y_train),
            "epochs": probe_epochs(len(data.y_train)),
            "lr": PROBE_LR,
            "seed": seed,
        }
    return Check.of(found.passed, extra={**found.extra, "method": method, "inputs": inputs}), ref


def _forgetting_data(
    reg: Registry,
    spec: ModelSpec,
    name: str,
    target_config: Mapping[str, Any],
    source_manifest: ModelManifest,
) -> DatasetArrays:
    """The forgetting check's dataset, whose samples both models must take."""
    data = load_dataset(reg, name, "/checks/forgetting/data", spec.path)
    for who, config in (
        (f"model {spec.name!r}", target_config),
        (f"source model {source_manifest.name!r}", source_manifest.architecture.config),
    ):
        if data.shape != _in_shape(config):
            raise BuildError(
                f"{spec.path} at /checks/forgetting/data: samples of {name!r} have shape"
                f" {data.shape}, but {who} takes {_in_shape(config)}; name a dataset of the"
                " source task with the model's input shape"
            )
    return data


def _drift_data(
    reg: Registry,
    spec: ModelSpec,
    block: DriftSpec,
    source_manifest: ModelManifest,
    train_data: DatasetArrays,
) -> tuple[DatasetRef, DatasetArrays, str, DatasetArrays]:
    """The drift check's inputs: the source's recorded training dataset and its arrays, and
    the name and arrays of the target data, whose samples the source must take."""
    src_name = source_manifest.name
    recorded = source_manifest.datasets.get("train")
    if recorded is None:
        raise BuildError(
            f"{spec.path} at /checks/drift: source model {src_name!r} records no training"
            " dataset (registered weights?); drift needs the source's training data"
        )
    source_data = load_dataset(reg, recorded.name, "/checks/drift", spec.path)
    name = spec.train if block.data is None else block.data
    pointer = "/data/train" if block.data is None else "/checks/drift/data"
    target = train_data if name == spec.train else load_dataset(reg, name, pointer, spec.path)
    source_shape = _in_shape(source_manifest.architecture.config)
    if target.shape != source_shape:
        raise BuildError(
            f"{spec.path} at {pointer}: samples of {name!r} have shape {target.shape}, but"
            f" source model {src_name!r} takes {source_shape}; drift is measured in the"
            " source's feature space"
        )
    return recorded, source_data, name, target


def _drift(
    reg: Registry,
    spec: ModelSpec,
    block: DriftSpec,
    source: nn.Module,
    source_manifest: ModelManifest,
    train_data: DatasetArrays,
    seed: int,
    device: torch.device,
) -> tuple[Check, Ref]:
    src_name = source_manifest.name
    recorded, source_data, name, target = _drift_data(reg, spec, block, source_manifest, train_data)
    # class means need class labels: other targets are one group
    labels = source_data.y_train
    if source_data.task != CLASSIFICATION:
        labels = np.zeros(len(labels), dtype=np.int64)
    found = drift_check(
        features(source, source_data.x_train, device),
        labels,
        features(source, target.x_train, device),
        max_mahalanobis=block.max_mahalanobis,
        max_outlier_share=block.max_outlier_share,
        min_mmd_pvalue=block.min_mmd_pvalue,
        permutations=int(
            DEFAULT_PERMUTATIONS if block.permutations is None else block.permutations
        ),
        seed=seed,
    )
    ref = _ref(reg, name)
    inputs = {
        **found.inputs,  # the drift test's own (samples, permutations, seed)
        "data": {**ref.to_dict(), "split": "train"},
        "source_data": {**_ref(reg, recorded.name).to_dict(), "split": "train"},
        "source_model": {"name": src_name, "id": source_manifest.id},
    }
    return Check.of(found.passed, extra={**found.extra, "inputs": inputs}), ref


def _parameters(
    block: ParametersSpec,
    module: nn.Module,
    source_state: Mapping[str, torch.Tensor],
    source_manifest: ModelManifest,
    tensor_map: TensorMap,
    rows: Sequence[Tensor],
) -> tuple[ParameterCheck, Check]:
    # Re-initialised tensors start from the target's own initialisation: comparing them with
    # the source says nothing about the transfer, so only transferred tensors are compared.
    reinit = {r.name for r in rows if r.origin == "reinitialized"}
    mapping = {t: s for t, s in tensor_map.pairs.items() if t not in reinit}
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad and n in mapping}
    # buffers of modules held in eval mode (batch-norm statistics) must not move either
    frozen |= {r.name for r in rows if r.kind == "buffer" and r.frozen} & set(mapping)
    found = parameter_check(
        source_state,
        module.state_dict(),
        frozen,
        mapping,
        max_relative_change=block.max_relative_change,
        min_relative_change=float(
            DEFAULT_MIN_RELATIVE_CHANGE
            if block.min_relative_change is None
            else block.min_relative_change
        ),
    )
    moved = found.not_moved
    warnings = [f"trainable tensors did not move: {', '.join(moved)}"] if moved else []
    inputs = {
        "source_model": {"name": source_manifest.name, "id": source_manifest.id},
        "mapping": tensor_map.rule,
        "frozen": sorted(frozen),
    }
    return found, found.record(warnings, inputs)


def check_inputs(
    reg: Registry,
    spec: ModelSpec,
    target_config: Mapping[str, Any],
    source_manifest: ModelManifest | None,
    train_data: DatasetArrays,
) -> None:
    """Raise the errors of the spec's checks that need no trained model (a check that needs
    a source without one; a check dataset whose samples a model cannot take), so that a
    build fails before it trains rather than after. `run_checks` raises them too."""
    if source_manifest is None:
        _require_source(spec)
        return
    declared = spec.checks
    if declared.forgetting is not None:
        _forgetting_data(reg, spec, declared.forgetting.data, target_config, source_manifest)
    if declared.drift is not None:
        _drift_data(reg, spec, declared.drift, source_manifest, train_data)


def _require_source(spec: ModelSpec) -> None:
    declared = spec.checks.names
    if declared:
        check = declared[0]
        raise BuildError(
            f"{spec.path} at /checks/{check}: {check} needs a source model;"
            " remove the check or declare a source"
        )


def run_checks(
    reg: Registry,
    spec: ModelSpec,
    module: nn.Module,
    *,
    target_config: Mapping[str, Any],
    rows: Sequence[Tensor],
    train_data: DatasetArrays,
    source_manifest: ModelManifest | None = None,
    source_state: Mapping[str, torch.Tensor] | None = None,
    tensor_map: TensorMap | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, Check], dict[str, Ref]]:
    """Run the spec's checks on a trained target: (the `checks` block, datasets by role).

    `module` is the trained target (its parameters' `requires_grad` says which are frozen),
    `target_config` its architecture config, `rows` the transfer report's per-tensor rows,
    `train_data` its training arrays; the source arguments are None for a model without a
    source. Declaring forgetting, drift or parameters without a source raises BuildError
    naming the spec and `/checks/NAME`, as does a check dataset of the wrong sample shape; a
    frozen tensor that changed raises one at `/strategy/freeze`.
    """
    declared = spec.checks
    dev = torch.device(device)
    has_source = source_manifest is not None and source_state is not None
    if not has_source:
        _require_source(spec)
        return {}, {}
    assert source_manifest is not None and source_state is not None
    checks: dict[str, Check] = {}
    datasets: dict[str, Ref] = {}
    home = next((p.device for p in module.parameters()), torch.device("cpu"))
    with _steady(dev):
        source = source_module(reg, source_manifest, source_state).to(dev)
        module.to(dev)
        try:
            if declared.forgetting is not None:
                checks["forgetting"], datasets["forgetting"] = _forgetting(
                    reg,
                    spec,
                    declared.forgetting,
                    module,
                    target_config,
                    source,
                    source_manifest,
                    rows,
                    seed,
                    dev,
                )
            if declared.drift is not None:
                checks["drift"], datasets["drift"] = _drift(
                    reg,
                    spec,
                    declared.drift,
                    source,
                    source_manifest,
                    train_data,
                    seed,
                    dev,
                )
        finally:
            module.to(home)
        tmap = tensor_map if tensor_map is not None else TensorMap(None)
        found, checks["parameters"] = _parameters(
            declared.parameters or ParametersSpec(),
            module,
            source_state,
            source_manifest,
            tmap,
            rows,
        )
    if found.frozen_changed:  # a frozen tensor that moved is a broken build, not a finding
        raise BuildError(
            f"{spec.path} at /strategy/freeze: frozen tensors changed: {found.frozen_changed[0]}"
        )
    return checks, datasets
