"""The training loop's state beyond the module: early stopping, and the tensors a checkpoint
holds so that a resumed build continues exactly where it stopped (migration/checkpoint.py).

A checkpoint's tensors are named by role: `model/NAME` (the state dict), `best/NAME` (the
early-stopping best weights), `adam/NAME/{step,exp_avg,exp_avg_sq}` or `sgd/NAME` (the
optimizer's state, by parameter name), `rng/order` (the generator of the data order) and
`rng/global` / `rng/cuda` (the global generators dropout draws from).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from stemma.registry.errors import BuildError
from stemma.registry.rules.layout import SPEC_FILE
from torch import nn

from . import optim
from .checkpoint import Loaded
from .tasks import Task

LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse")


@dataclass(frozen=True)
class EarlyStopping:
    """The resolved `training.early_stopping` block; `mode` None: by the metric."""

    metric: str = "loss"
    patience: int = 3
    mode: str | None = None

    @classmethod
    def from_spec(cls, block: Mapping[str, Any], display: str = SPEC_FILE) -> EarlyStopping:
        """Read a schema-valid block."""
        where = f"{display} at /training/early_stopping"
        unknown = sorted(set(block) - set(cls.__dataclass_fields__))
        if unknown:
            raise BuildError(f"{where}/{unknown[0]}: unknown early-stopping setting")
        found = cls(**block)
        if found.mode not in (None, "min", "max"):
            raise BuildError(f"{where}/mode: use min or max, not {found.mode!r}")
        return found

    def to_dict(self) -> dict[str, Any]:
        """The resolved block (no mode: the metric's natural direction)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


class Tracker:
    """Follows the eval metric epoch by epoch and keeps the best epoch's weights."""

    def __init__(self, rule: EarlyStopping | None, task: Task, display: str) -> None:
        self.rule = rule
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.bad = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.mode = "min"
        if rule is not None:
            if rule.metric not in task.metrics:
                raise BuildError(
                    f"{display} at /training/early_stopping/metric: {rule.metric!r} is not a"
                    f" {task.name} metric; use one of {', '.join(task.metrics)}"
                )
            lower = rule.metric in LOWER_IS_BETTER
            self.mode = rule.mode or ("min" if lower else "max")

    def update(self, epoch: int, scores: Mapping[str, Any], module: nn.Module) -> bool:
        """Record an epoch's eval scores; True when patience has run out."""
        if self.rule is None:
            return False
        value = float(scores[self.rule.metric])
        best = self.best_value
        if best is None or (value < best if self.mode == "min" else value > best):
            self.best_epoch, self.best_value, self.bad = epoch, value, 0
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            return False
        self.bad += 1
        return self.bad >= self.rule.patience

    def to_dict(self) -> dict[str, Any]:
        """The scalar state, for a checkpoint."""
        return {"best_epoch": self.best_epoch, "best_value": self.best_value, "bad": self.bad}


def _names(module: nn.Module) -> dict[nn.Parameter, str]:
    return {p: n for n, p in module.named_parameters()}


def snapshot(
    module: nn.Module,
    opt: optim.Optimizer | None,
    gen: torch.Generator,
    tracker: Tracker,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Every tensor a resumed loop needs, by role (see the module's docstring)."""
    out = {f"model/{k}": v for k, v in module.state_dict().items()}
    names = _names(module)
    if isinstance(opt, optim.Adam):
        for p, (step, avg, avg_sq) in opt.state.items():
            out.update({f"adam/{names[p]}/step": step, f"adam/{names[p]}/exp_avg": avg})
            out[f"adam/{names[p]}/exp_avg_sq"] = avg_sq
    elif isinstance(opt, optim.SGD):
        out.update({f"sgd/{names[p]}": buf for p, buf in opt.buffers.items()})
    out["rng/order"] = gen.get_state()
    out["rng/global"] = torch.get_rng_state()
    if device.type == "cuda":
        out["rng/cuda"] = torch.cuda.get_rng_state(device)
    for k, v in (tracker.best_state or {}).items():
        out[f"best/{k}"] = v
    return out


def restore(
    loaded: Loaded,
    module: nn.Module,
    opt: optim.Optimizer | None,
    gen: torch.Generator,
    tracker: Tracker,
    device: torch.device,
) -> dict[str, Any] | None:
    """Put a checkpoint's state back; None (nothing changed) when it does not fit the module."""
    t, meta = loaded.tensors, loaded.meta
    state = module.state_dict()
    model = {k[len("model/") :]: v for k, v in t.items() if k.startswith("model/")}
    fits = set(model) == set(state) and all(model[k].shape == state[k].shape for k in state)
    params = dict(module.named_parameters())
    moments = {k.split("/")[1] for k in t if k.startswith(("adam/", "sgd/"))}
    if not fits or not moments <= set(params) or "rng/order" not in t:
        return None
    if not isinstance(meta.get("curve"), list):
        return None
    module.load_state_dict(model)
    if isinstance(opt, optim.Adam):
        for name in {k.split("/")[1] for k in t if k.startswith("adam/")}:
            p = params[name]
            opt.state[p] = (
                t[f"adam/{name}/step"].clone(),  # on the CPU, as torch.optim keeps it
                t[f"adam/{name}/exp_avg"].to(p.device),
                t[f"adam/{name}/exp_avg_sq"].to(p.device),
            )
    elif isinstance(opt, optim.SGD):
        for k, v in t.items():
            if k.startswith("sgd/"):
                p = params[k[len("sgd/") :]]
                opt.buffers[p] = v.to(p.device)
    gen.set_state(t["rng/order"])
    torch.set_rng_state(t["rng/global"])
    if device.type == "cuda" and "rng/cuda" in t:
        torch.cuda.set_rng_state(t["rng/cuda"], device)
    best = {k[len("best/") :]: v.to(device) for k, v in t.items() if k.startswith("best/")}
    tracker.best_state = best or None
    scalars = meta.get("tracker") or {}
    tracker.best_epoch = scalars.get("best_epoch")
    tracker.best_value = scalars.get("best_value")
    tracker.bad = int(scalars.get("bad", 0))
    return meta
