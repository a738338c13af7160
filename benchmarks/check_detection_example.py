"""Check the detection example's committed outputs from outside stemma's loaders.

For each detector in examples/detection: rebuild it with
`torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=...,
**options)`, load its weights with `load_state_dict(strict=True)`, score the eval split of its
dataset with torchmetrics' MeanAveragePrecision and compare with the manifest's figures.
Run after building the example (`cd examples/detection && dvc repro`, its own DVC project):
`python benchmarks/check_detection_example.py`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models import get_model

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "detection"


def check(model: str) -> dict[str, tuple[float, float]]:
    """{metric: (recorded, recomputed)} of one detector."""
    folder = EXAMPLE / "models" / model
    manifest = json.loads((folder / "manifest.json").read_text())
    config = manifest["architecture"]["config"]
    module = get_model(
        config["name"],
        weights=None,
        weights_backbone=None,
        num_classes=config["num_classes"],
        **config.get("options", {}),
    )
    module.load_state_dict(load_file(folder / manifest["weights"]["path"]), strict=True)
    module.eval()
    dataset = manifest["datasets"]["eval"]["name"]
    with np.load(EXAMPLE / "datasets" / dataset / "data.npz", allow_pickle=False) as npz:
        x, y = npz["x_eval"], npz["y_eval"]
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True)
    with torch.no_grad():
        for start in range(0, len(x), 16):
            preds = module([torch.from_numpy(img) for img in x[start : start + 16]])
            truth = []
            for rows in y[start : start + 16]:
                rows = rows[rows[:, 0] >= 0]
                truth.append(
                    {
                        "boxes": torch.from_numpy(rows[:, 1:5]).reshape(-1, 4),
                        "labels": torch.from_numpy(rows[:, 0]).long() + 1,
                    }
                )
            metric.update(preds, truth)
    result = metric.compute()
    samples = (folder / manifest["samples"]["path"]).read_bytes()  # the report's pictures
    if "sha256:" + hashlib.sha256(samples).hexdigest() != manifest["samples"]["sha256"]:
        raise SystemExit(f"{model}: detections.json differs from its manifest record")
    return {
        k: (float(v), round(max(float(result[k]), 0.0), 6)) for k, v in manifest["metrics"].items()
    }


def backbone_from_classifier() -> int:
    """How many of shapes-det's backbone tensors the manifest records as transferred from the
    classifier's features; every backbone.body tensor must be."""
    manifest = json.loads((EXAMPLE / "models" / "shapes-det" / "manifest.json").read_text())
    assert manifest["source"]["model"] == "shapes-clf"
    body = [
        r for r in manifest["architecture"]["tensors"] if r["name"].startswith("backbone.body.")
    ]
    moved = [
        r
        for r in body
        if r["origin"] == "transferred"
        and r["source_name"] == r["name"].replace("backbone.body.", "features.", 1)
    ]
    print(f"shapes-det: {len(moved)}/{len(body)} backbone.body tensors from shapes-clf features")
    return 0 if body and len(moved) == len(body) else 1


def main() -> int:
    """Print each detector's recorded and recomputed figures; exit 1 on a difference."""
    bad = backbone_from_classifier()
    for model in ("shapes-det", "shapes-det3"):
        for metric, (recorded, again) in check(model).items():
            same = recorded == again
            bad += not same
            verdict = "ok" if same else "DIFFERS"
            print(f"{model} {metric}: recorded {recorded} recomputed {again} {verdict}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
