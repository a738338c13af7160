"""Training and scoring a torchvision detector on stored box arrays.

Targets follow torchvision's detection API: per image a dict of `boxes` (M, 4, xyxy pixels)
and `labels` (M,), where label 0 is the background, so a dataset's class k is label k + 1
and a detector of K classes has `num_classes` K + 1. Scores are torchmetrics'
`MeanAveragePrecision` (COCO's mAP over IoU 0.50:0.95, mAP@50, mAP@75 and per-class AP).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from stemma.registry.errors import BuildError
from stemma.registry.publish import _optional
from stemma.registry.rules.layout import SPEC_FILE
from torch import nn

from .augment import Augment
from .detection_data import unpad
from .train import TrainConfig, cpu_threads, lr_scales, make_optimizer, resolve_device

DECIMALS = 6
EVAL_BATCH = 16

Progress = Callable[[int, int, float], None]


def targets(y: np.ndarray) -> list[dict[str, torch.Tensor]]:
    """Stored box arrays as torchvision targets (labels shifted past the background)."""
    out = []
    for rows in unpad(y):
        out.append(
            {
                "boxes": torch.as_tensor(rows[:, 1:5], dtype=torch.float32).reshape(-1, 4),
                "labels": torch.as_tensor(rows[:, 0], dtype=torch.int64) + 1,
            }
        )
    return out


@dataclass
class DetectionRun:
    """What training produced: the curve, the device, seconds spent."""

    curve: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"
    train_seconds: float = 0.0
    threads: int = 1


def train_detector(
    module: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    cfg: TrainConfig,
    augment: Augment,
    display: str = SPEC_FILE,
    progress: Progress | None = None,
) -> DetectionRun:
    """Train `module` (its trainable parameters) for `cfg.epochs`; batches drawn in a seeded
    order, each augmented as drawn; one curve row per epoch with the eval mAP."""
    device = resolve_device(cfg.device)
    run = DetectionRun(device=str(device.type))
    torch.manual_seed(cfg.seed)  # the detector's own sampling (proposals, matching)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = augment.generator(cfg.seed)
    images = torch.as_tensor(x_train, dtype=torch.float32)
    tgts = targets(y_train)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        raise BuildError(f"{display} at /strategy/freeze: every parameter is frozen")
    opt = make_optimizer([p for _, p in named], cfg, display, lr_scales(named, cfg, display))
    begin = time.perf_counter()
    with cpu_threads(device):
        run.threads = torch.get_num_threads()
        module.to(device)
        for epoch in range(1, cfg.epochs + 1):
            module.train()
            perm = torch.randperm(len(images), generator=order_gen).tolist()
            total, batches = 0.0, 0
            for start in range(0, len(perm), cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                batch_x, batch_t = [], []
                for i in idx:
                    img, boxes = images[i], tgts[i]["boxes"]
                    if augment.active:
                        img, boxes = augment.apply(img, boxes, aug_gen)
                    batch_x.append(img.to(device))
                    batch_t.append(
                        {"boxes": boxes.to(device), "labels": tgts[i]["labels"].to(device)}
                    )
                losses = module(batch_x, batch_t)
                loss = sum(losses.values(), torch.zeros((), device=device))
                if not torch.isfinite(loss):
                    raise BuildError(
                        f"{display} at /training/lr: the detector's loss is not finite at"
                        f" epoch {epoch}; lower training.lr"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad_norm:
                    nn.utils.clip_grad_norm_([p for _, p in named], cfg.clip_grad_norm)
                opt.step()
                total += float(loss.detach())
                batches += 1
            scored = score(module, x_eval, y_eval, device)
            row = {
                "epoch": epoch,
                "train_loss": round(total / max(batches, 1), DECIMALS),
                "eval_map": scored["map"],
            }
            run.curve.append(row)
            if progress is not None:
                progress(epoch, cfg.epochs, row["train_loss"])
    run.train_seconds = time.perf_counter() - begin
    module.to("cpu")
    return run


def predict(
    module: nn.Module, x: np.ndarray, device: torch.device | str = "cpu"
) -> list[dict[str, torch.Tensor]]:
    """The detector's boxes, scores and labels per image (eval mode, on the CPU after)."""
    module.eval()
    out: list[dict[str, torch.Tensor]] = []
    images = torch.as_tensor(x, dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, len(images), EVAL_BATCH):
            batch = [img.to(device) for img in images[start : start + EVAL_BATCH]]
            for found in module(batch):
                out.append({k: v.detach().to("cpu") for k, v in found.items()})
    return out


def mean_average_precision(
    preds: Sequence[dict[str, torch.Tensor]], truth: Sequence[dict[str, torch.Tensor]]
) -> dict[str, Any]:
    """{map, map_50, map_75, per_class: {dataset class: AP}} of predictions against targets;
    classes without a box in `truth` have no AP and are left out of per_class."""
    detection = _optional.require("torchmetrics.detection", "detection", error=BuildError)
    metric = detection.MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True)
    metric.update(
        [{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds],
        [{"boxes": t["boxes"], "labels": t["labels"]} for t in truth],
    )
    result = metric.compute()
    per_class: dict[str, float] = {}
    classes = result["classes"].reshape(-1).tolist()
    values = result["map_per_class"].reshape(-1).tolist()
    for label, ap in zip(classes, values, strict=True):
        if ap >= 0:  # -1: no box of the class to find
            per_class[str(int(label) - 1)] = round(float(ap), DECIMALS)

    def value(key: str) -> float:
        v = float(result[key])
        return round(max(v, 0.0), DECIMALS)  # -1 (nothing to score) reads as 0

    return {
        "map": value("map"),
        "map_50": value("map_50"),
        "map_75": value("map_75"),
        "per_class": dict(sorted(per_class.items(), key=lambda kv: int(kv[0]))),
    }


def score(
    module: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """The detector's mAP figures on images `x` with stored boxes `y`."""
    if len(x) == 0:
        raise BuildError("cannot evaluate on an empty eval split")
    return mean_average_precision(predict(module, x, device), targets(y))
