"""The torch side of each task type: target tensors, losses, scores, per-class figures.

A task follows from the stored labels (`task_of`): int64 (N,) classify, float32 (N,) or
(N, K) regress, int64 0/1 (N, K) are multi-label. Names (losses, metrics, gates, the main
metric) come from `stemma.registry.rules.taskspec`, which `validate` reads without torch.

- classification: logits (N, C); cross-entropy; accuracy, per-class accuracy.
- regression: outputs (N, K) (K = 1 for a 1-D target); mse, mae or huber; mse, mae, rmse and
  r2 (averaged over outputs, as scikit-learn's `uniform_average`), per-output r2.
- multilabel: logits (N, K), sigmoid >= 0.5 predicts a label; binary cross-entropy; micro and
  macro F1, mean average precision over labels with a positive, subset accuracy, per-label F1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stemma.registry.errors import BuildError
from stemma.registry.rules import taskspec
from stemma.registry.rules.layout import SPEC_FILE

DECIMALS = 6  # metrics are rounded so identical builds give identical manifest ids


def task_of(y: np.ndarray | torch.Tensor) -> str:
    """The task stored labels of this dtype and shape belong to."""
    floating = y.dtype.is_floating_point if isinstance(y, torch.Tensor) else y.dtype.kind == "f"
    if floating:
        return taskspec.REGRESSION
    return taskspec.MULTILABEL if y.ndim == 2 else taskspec.CLASSIFICATION


def _round(value: float) -> float:
    return round(float(value), DECIMALS)


@dataclass(frozen=True)
class Task:
    """One task type: what its targets, losses and metrics are."""

    name: str

    @property
    def losses(self) -> tuple[str, ...]:
        """Losses this task trains with (the first is the default)."""
        return taskspec.LOSSES[self.name]

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metrics a build of this task records."""
        return taskspec.METRICS[self.name]

    @property
    def main(self) -> str:
        """The metric forgetting is measured on."""
        return taskspec.MAIN_METRIC[self.name]

    @property
    def per_class_gate(self) -> str | None:
        """The gate on the worst per-class figure."""
        return taskspec.PER_CLASS_GATE[self.name]

    def outputs(self, y: np.ndarray) -> int:
        """Width of the head for labels `y`: classes, outputs or labels."""
        if self.name == taskspec.CLASSIFICATION:
            return int(y.max(initial=0)) + 1
        return 1 if y.ndim == 1 else int(y.shape[1])

    def target(self, y: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Labels as the tensor the loss takes: int64 (N,) or float32 (N, K)."""
        if self.name == taskspec.CLASSIFICATION:
            return torch.as_tensor(y, dtype=torch.int64)
        t = torch.as_tensor(y, dtype=torch.float32)
        return t.reshape(len(t), -1)

    def resolve_loss(self, name: str | None, display: str = SPEC_FILE) -> str:
        """The loss to train with: `name`, or the task's default; BuildError if it is another
        task's."""
        if name is None:
            return self.losses[0]
        if name not in self.losses:
            raise BuildError(
                f"{display} at /training/loss: loss {name!r} does not apply to a {self.name}"
                f" target; use one of {', '.join(self.losses)}"
            )
        return name

    def loss(
        self,
        out: torch.Tensor,
        y: torch.Tensor,
        name: str | None = None,
        smoothing: float = 0.0,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean loss of float outputs `out` against targets `y` (from `target`); `weight`:
        cross-entropy's per-class weights (`training.class_weights`)."""
        out = out.float()
        name = self.resolve_loss(name)
        if name == "cross_entropy":
            return F.cross_entropy(out, y, weight=weight, label_smoothing=smoothing)
        if name == "bce":
            return F.binary_cross_entropy_with_logits(out, y)
        out = out.reshape(y.shape)
        if name == "mse":
            return F.mse_loss(out, y)
        if name == "mae":
            return F.l1_loss(out, y)
        return F.huber_loss(out, y)

    @property
    def counts_hits(self) -> bool:
        """True when the training curve records train accuracy (classification)."""
        return self.name == taskspec.CLASSIFICATION

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Correct predictions in a batch (classification), for the training curve."""
        if not self.counts_hits:
            return None
        return (out.detach().argmax(dim=1) == y).sum()

    def scores(self, out: torch.Tensor, y: torch.Tensor, loss: str | None = None) -> dict[str, Any]:
        """{every metric of the task, "per_class": {index: figure}} of outputs against targets."""
        if len(y) == 0:
            raise BuildError("cannot evaluate on an empty eval split")
        value = _round(self.loss(out, y, loss).item())
        pred = out.detach().float().cpu().numpy()
        true = y.cpu().numpy()
        if self.name == taskspec.CLASSIFICATION:
            result = _classification(pred, true)
        elif self.name == taskspec.REGRESSION:
            result = _regression(pred.reshape(true.shape), true)
        else:
            result = _multilabel(pred, true)
        result["loss"] = value
        return result

    def curve_row(
        self, epoch: int, train_loss: float, hits: int | None, n: int, ev: dict[str, Any]
    ) -> dict[str, Any]:
        """One epoch of the training curve: losses and the task's main metric."""
        row: dict[str, Any] = {"epoch": epoch, "train_loss": _round(train_loss)}
        if hits is not None:
            row[f"train_{self.main}"] = _round(hits / n)
        row["eval_loss"] = ev["loss"]
        row[f"eval_{self.main}"] = ev[self.main]
        return row


def _classification(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    hits = logits.argmax(axis=1) == y
    per_class = {str(int(c)): _round(hits[y == c].mean()) for c in np.unique(y)}
    return {"accuracy": _round(hits.mean()), "per_class": per_class}


def _r2(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-output coefficient of determination; a constant target scores 1 if met, else 0."""
    residual = ((y - pred) ** 2).sum(axis=0)
    total = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    exact = np.where(residual == 0, 1.0, 0.0)
    return np.where(total > 0, 1.0 - residual / np.where(total > 0, total, 1.0), exact)


def _regression(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    p, t = pred.astype(np.float64), y.astype(np.float64)
    err = p - t
    mse = float(np.mean(err**2))
    r2 = _r2(p, t)
    return {
        "mse": _round(mse),
        "mae": _round(np.mean(np.abs(err))),
        "rmse": _round(math.sqrt(mse)),
        "r2": _round(r2.mean()),
        "per_class": {str(k): _round(v) for k, v in enumerate(r2)},
    }


def _multilabel(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score

    truth = y >= 0.5
    pred = logits >= 0.0  # sigmoid(logit) >= 0.5
    tp = (pred & truth).sum(axis=0).astype(np.float64)
    fp = (pred & ~truth).sum(axis=0).astype(np.float64)
    fn = (~pred & truth).sum(axis=0).astype(np.float64)
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    per_den = 2 * tp + fp + fn
    # a label neither present nor predicted has no F1: it is left out of the macro mean
    defined = per_den > 0
    f1 = np.divide(2 * tp, per_den, out=np.ones_like(tp), where=defined)
    positive = truth.any(axis=0)
    ap = [
        float(average_precision_score(truth[:, k], logits[:, k]))
        for k in range(truth.shape[1])
        if positive[k]
    ]
    return {
        "f1_micro": _round(2 * tp.sum() / micro_den if micro_den > 0 else 1.0),
        "f1_macro": _round(f1[defined].mean() if defined.any() else 1.0),
        "map": _round(np.mean(ap) if ap else 0.0),
        "subset_accuracy": _round((pred == truth).all(axis=1).mean()),
        "per_class": {str(k): _round(f1[k]) for k in range(truth.shape[1])},
    }


TASKS = {name: Task(name) for name in taskspec.TASKS}


def get(name: str) -> Task:
    """The task called `name`."""
    return TASKS[name]


def for_labels(y: np.ndarray | torch.Tensor) -> Task:
    """The task of stored labels `y`."""
    return TASKS[task_of(y)]
