"""Evaluation on the eval split (the task's metrics and per-class figures).

Metric gates are `stemma.registry.rules.gates` (no torch), evaluated into the manifest's
`Gate` records by `gating.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from .tasks import for_labels

PER_CLASS = "per_class_accuracy"
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
