"""Hyper-parameter search: `training.search` in a model spec runs an Optuna study in the build.

Each trial overrides some training settings, prepares the model exactly as the build does
(source mapping, re-initialisation, freezing), trains it on a validation split carved from
the *training* split and scores it there, so the eval split stays untouched for the final
metric. The best settings then train the final weights on the whole training split.

The study is deterministic given `training.seed`: a seeded TPE sampler, one trial at a time,
every trial initialised from the same seed (on CPU, where training itself is deterministic).
With `pruning: true`, a median pruner stops a trial whose per-epoch validation metric falls
below the median of earlier trials at the same epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.core import ModelSpec
from stemma.registry.rules.layout import SPEC_FILE
from stemma.registry.rules.taskspec import CLASSIFICATION
from torch import nn

from .data import DatasetArrays, split
from .evaluate import evaluate
from .strategy import Strategy, prepare_target
from .tasks import for_labels
from .train import TrainConfig, resolve_device, train

SEARCHABLE = (
    "batch_size",
    "epochs",
    "label_smoothing",
    "lr",
    "momentum",
    "optimizer",
    "weight_decay",
)
INTEGER = ("batch_size", "epochs")
METRICS = {"accuracy": "maximize", "loss": "minimize"}  # metric -> its natural direction
VALIDATION = 0.2  # share of the training split held out to score trials
PRUNER_STARTUP = 2  # finished trials before the median pruner may stop one


@dataclass(frozen=True)
class SearchSpace:
    """The validated `training.search` block."""

    params: Mapping[str, Mapping[str, Any]]
    trials: int = 10
    metric: str = "accuracy"
    direction: str = "maximize"
    pruning: bool = False

    @classmethod
    def from_spec(cls, block: Mapping[str, Any], display: str = SPEC_FILE) -> SearchSpace:
        """Check the block: known metric and parameters, ranges or choices, sane bounds."""
        where = f"{display} at /training/search"
        metric = str(block.get("metric", "accuracy"))
        if metric not in METRICS:
            raise BuildError(
                f"{where}/metric: unknown metric {metric!r}; use one of {', '.join(METRICS)}"
            )
        params = dict(block.get("params") or {})
        if not params:
            raise BuildError(f"{where}/params: name at least one parameter to search")
        for name, rng in params.items():
            _check_param(name, rng, f"{where}/params/{name}")
        direction = str(block.get("direction", METRICS[metric]))
        if direction not in ("maximize", "minimize"):
            raise BuildError(f"{where}/direction: use maximize or minimize, not {direction!r}")
        return cls(
            params=params,
            trials=int(block.get("trials", 10)),
            metric=metric,
            direction=direction,
            pruning=bool(block.get("pruning", False)),
        )


def _check_param(name: str, rng: Mapping[str, Any], where: str) -> None:
    if name not in SEARCHABLE:
        raise BuildError(f"{where}: cannot search {name!r}; use one of {', '.join(SEARCHABLE)}")
    if "choices" in rng:
        if {"low", "high", "log"} & set(rng):
            raise BuildError(f"{where}: give either choices or low/high, not both")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in rng["choices"]):
            raise BuildError(f"{where}/choices: choices must be numbers, strings or booleans")
        return
    if "low" not in rng or "high" not in rng:
        raise BuildError(f"{where}: give low and high (or choices)")
    low, high = rng["low"], rng["high"]
    if name in INTEGER and not (isinstance(low, int) and isinstance(high, int)):
        raise BuildError(f"{where}: {name} takes integer bounds, got {low!r} and {high!r}")
    if low > high:
        raise BuildError(f"{where}: low {low} is above high {high}")
    if rng.get("log") and low <= 0:
        raise BuildError(f"{where}/low: a log range needs low > 0, got {low}")


def _suggest(trial: Any, name: str, rng: Mapping[str, Any]) -> Any:
    if "choices" in rng:
        return trial.suggest_categorical(name, list(rng["choices"]))
    log = bool(rng.get("log", False))
    if name in INTEGER:
        return trial.suggest_int(name, int(rng["low"]), int(rng["high"]), log=log)
    return trial.suggest_float(name, float(rng["low"]), float(rng["high"]), log=log)


def _config(cfg: TrainConfig, params: Mapping[str, Any], display: str) -> TrainConfig:
    """`cfg` with the trial's overrides, checked like a spec's training block."""
    return TrainConfig.from_spec({**cfg.to_dict(), **params}, display)


def prepare_module(
    config: Mapping[str, Any],
    strategy: Strategy,
    seed: int,
    source: tuple[str, Mapping[str, Any]] | None = None,
    trusted: tuple[str, ...] = (),
    display: str = SPEC_FILE,
) -> nn.Module:
    """A freshly initialised target module with the source mapped in, as `build_model` does."""
    return prepare_target(config, strategy, seed, source, trusted, display).module


def search(
    space: SearchSpace,
    cfg: TrainConfig,
    make_module: Callable[[TrainConfig], nn.Module],
    x: np.ndarray,
    y: np.ndarray,
    *,
    features: str = "cached",
    display: str = SPEC_FILE,
) -> tuple[TrainConfig, dict[str, Any]]:
    """Run the study on a validation split of (x, y); return the best config and the record."""
    import optuna

    if space.metric == "accuracy" and for_labels(y).name != CLASSIFICATION:
        raise BuildError(
            f"{display} at /training/search/metric: accuracy needs class labels;"
            f" search a {for_labels(y).name} model by metric: loss"
        )
    fit = split(x, y, VALIDATION, cfg.seed)
    metric_key = f"eval_{space.metric}"
    device = resolve_device(cfg.device)

    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, space.params[name]) for name in sorted(space.params)}
        trial_cfg = _config(cfg, params, display)
        module = make_module(trial_cfg)

        def report(epoch: int, total: int, row: Mapping[str, Any]) -> None:
            if space.pruning:
                trial.report(float(row[metric_key]), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        train(
            module,
            fit.x_train,
            fit.y_train,
            fit.x_eval,
            fit.y_eval,
            trial_cfg,
            features=features,
            progress=report,
            display=display,
        )
        scored = evaluate(module, fit.x_eval, fit.y_eval, device)
        return float(scored[space.metric])

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            direction=optuna.study.StudyDirection[space.direction.upper()],
            sampler=optuna.samplers.TPESampler(seed=cfg.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP)
            if space.pruning
            else optuna.pruners.NopPruner(),
        )
        study.optimize(objective, n_trials=space.trials, n_jobs=1, gc_after_trial=False)
    finally:
        optuna.logging.set_verbosity(verbosity)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise BuildError(
            f"{display} at /training/search: no trial finished (every one was pruned or"
            " failed); widen the ranges or turn pruning off"
        )
    best = study.best_trial
    record = {
        "metric": space.metric,
        "direction": space.direction,
        "sampler": "tpe",
        "pruner": "median" if space.pruning else None,
        "seed": cfg.seed,
        "validation": {
            "fraction": VALIDATION,
            "train_samples": len(fit.y_train),
            "samples": len(fit.y_eval),
        },
        "trials": [_trial(t, space.pruning) for t in study.trials],
        "best": {"number": best.number, "params": dict(best.params), "value": best.value},
    }
    return _config(cfg, best.params, display), record


def _trial(trial: Any, pruning: bool) -> dict[str, Any]:
    """One trial's record; with pruning, also its per-epoch validation metric."""
    row = {
        "number": trial.number,
        "params": dict(trial.params),
        "value": _finite(trial.value),
        "state": trial.state.name.lower(),
    }
    if pruning:
        steps = trial.intermediate_values
        row["intermediate"] = [_finite(steps[k]) for k in sorted(steps)]
    return row


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: an undefined value is recorded as null."""
    return value if value is not None and np.isfinite(value) else None


def search_for_build(
    reg: Registry,
    spec: ModelSpec,
    cfg: TrainConfig,
    strategy: Strategy,
    config: Mapping[str, Any],
    source: tuple[str, Mapping[str, Any]] | None,
    data: DatasetArrays,
) -> tuple[TrainConfig, dict[str, Any]]:
    """The build's hook: search `spec`'s training settings on `data`'s training split."""
    space = SearchSpace.from_spec(spec.training["search"], spec.path)
    trusted = tuple(reg.settings.entrypoints)

    def make_module(trial_cfg: TrainConfig) -> nn.Module:
        return prepare_module(config, strategy, trial_cfg.seed, source, trusted, spec.path)

    return search(
        space,
        cfg,
        make_module,
        data.x_train,
        data.y_train,
        features=strategy.features,
        display=spec.path,
    )
