"""A detector's sample pictures: a few eval images with their true and predicted boxes.

The report shows them (registry/_reportboxes.py) without torch: the build writes
`detections.json` beside the weights and records its hashes in the manifest (`samples`), so
the report reads what the build saw, checked against the manifest.

Pixels are stored as base64 of raw RGB bytes, not as PNG: a PNG's bytes depend on the zlib
that compressed them, and the file's hash is part of the model's id, which must not change
from one machine to the next. Images wider or taller than `MAX_SIDE` are subsampled (every
k-th pixel, boxes scaled with them) so the file stays small whatever the dataset.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .detection_data import unpad
from .detection_train import predict

SAMPLES_FILE = "detections.json"
SAMPLE_IMAGES = 4
SCORE_THRESHOLD = 0.3
"""Predictions below this score are left out of the picture (and of the file)."""
MAX_PREDICTIONS = 10
MAX_SIDE = 128


def _pixels(image: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W, 3) uint8 of a (C, H, W) float image in [0, 1], and the subsampling step."""
    step = max(1, -(-max(image.shape[1:]) // MAX_SIDE))
    img = np.asarray(image, dtype=np.float32)[:, ::step, ::step]
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    rgb = np.clip(np.rint(img[:3] * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb.transpose(1, 2, 0)), step


def _box(values: Sequence[float], step: int) -> list[float]:
    return [round(float(v) / step, 2) for v in values]


def detection_samples(
    module: nn.Module,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    class_names: Sequence[str],
    count: int = SAMPLE_IMAGES,
) -> dict[str, Any]:
    """The first `count` eval images, their true boxes and the detector's boxes scoring at
    least `SCORE_THRESHOLD` (labels are dataset class ids, 0-based)."""
    chosen = x_eval[:count]
    found = predict(module, chosen)
    images = []
    for image, truth, pred in zip(chosen, unpad(y_eval[:count]), found, strict=True):
        rgb, step = _pixels(image)
        keep = pred["scores"] >= SCORE_THRESHOLD
        order = torch.argsort(pred["scores"][keep], descending=True, stable=True)
        boxes, scores = pred["boxes"][keep][order], pred["scores"][keep][order]
        labels = pred["labels"][keep][order] - 1  # past torchvision's background label
        images.append(
            {
                "height": int(rgb.shape[0]),
                "width": int(rgb.shape[1]),
                "rgb": base64.b64encode(rgb.tobytes()).decode("ascii"),
                "truth": [{"label": int(row[0]), "box": _box(row[1:5], step)} for row in truth],
                "predicted": [
                    {"label": int(lab), "score": round(float(s), 3), "box": _box(b, step)}
                    for lab, s, b in zip(
                        labels[:MAX_PREDICTIONS].tolist(),
                        scores[:MAX_PREDICTIONS].tolist(),
                        boxes[:MAX_PREDICTIONS].tolist(),
                        strict=True,
                    )
                ],
            }
        )
    return {
        "schema_version": 1,
        "score_threshold": SCORE_THRESHOLD,
        "class_names": [str(n) for n in class_names],
        "images": images,
    }
