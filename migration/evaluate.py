"""Evaluation on the eval split (the task's metrics and per-class figures) and metric gates."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from stemma.registry.errors import BuildError
from stemma.registry.rules.layout import SPEC_FILE
from stemma.registry.rules.taskspec import PER_CLASS_GATE

from .tasks import DECIMALS, for_labels

GATE_RE = re.compile(r"^\s*(>=|<=|>|<|==)\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)\s*$")
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, t: v >= t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    "<": lambda v, t: v < t,
    "==": lambda v, t: math.isclose(v, t, rel_tol=0.0, abs_tol=10.0**-DECIMALS),
}
PER_CLASS = "per_class_accuracy"
PER_CLASS_GATES = frozenset(g for g in PER_CLASS_GATE.values() if g)
EVAL_BATCH = 1024


def autocast(device: torch.device, amp: bool) -> Any:
    """bf16 autocast on CUDA when `amp`, else a no-op context."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    batch_size: int = EVAL_BATCH,
    amp: bool = False,
) -> torch.Tensor:
    """float32 outputs of `fn` over `x` in batches (no grad)."""
    outs = []
    for start in range(0, len(x), batch_size):
        with autocast(x.device, amp):
            outs.append(fn(x[start : start + batch_size]).float())
    if not outs:
        return torch.zeros((0,), device=x.device)
    return torch.cat(outs)


def scores(logits: torch.Tensor, y: torch.Tensor, loss: str | None = None) -> dict[str, Any]:
    """The metrics of stored labels' task (`tasks.Task.scores`), "loss" and "per_class" too."""
    task = for_labels(y)
    return task.scores(logits, task.target(y).to(logits.device), loss)


def evaluate(
    module: torch.nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    device: torch.device | str = "cpu",
    amp: bool = False,
    loss: str | None = None,
) -> dict[str, Any]:
    """Evaluate `module` in eval mode: {the task's metrics, loss, per_class}."""
    dev = torch.device(device)
    task = for_labels(y)
    xt = torch.as_tensor(x, dtype=torch.float32).to(dev)
    yt = task.target(y).to(dev)
    was_training = module.training
    module.eval()
    try:
        return task.scores(predict(module, xt, amp=amp), yt, loss)
    finally:
        module.train(was_training)


def parse_gate(text: str, where: str = "gates") -> tuple[str, float]:
    """Parse a comparison such as '>= 0.90' into (op, threshold)."""
    m = GATE_RE.match(str(text))
    if not m:
        raise BuildError(f"{where}: invalid gate {text!r}; write e.g. '>= 0.90'")
    return m.group(1), float(m.group(2))


def evaluate_gates(
    gates: Mapping[str, str],
    metrics: Mapping[str, float],
    per_class: Mapping[str, float] | None = None,
    display: str = SPEC_FILE,
) -> list[dict[str, Any]]:
    """Rows {metric, op, threshold, value, passed}; a per-class gate takes the worst class.

    A gate on a metric the build did not produce records value None and does not pass.
    """
    rows = []
    for metric in sorted(gates):
        op, threshold = parse_gate(gates[metric], f"{display} at /gates/{metric}")
        value: float | None
        if metric in PER_CLASS_GATES:
            value = min(per_class.values()) if per_class else None
        else:
            value = float(metrics[metric]) if metric in metrics else None
        passed = value is not None and OPS[op](value, threshold)
        rows.append(
            {"metric": metric, "op": op, "threshold": threshold, "value": value, "passed": passed}
        )
    return rows
