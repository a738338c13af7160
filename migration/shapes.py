"""Generated shapes: images of rectangles, ellipses and triangles with their boxes.

`shapes:detect` (migration/detection_data.py) labels every shape of an image with its box;
`shapes:classify` (migration/data.py) labels each image, one shape each, with its shape. Both
draw through `shapes`, seeded, so a dataset's bytes follow from its options alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from stemma.registry.errors import BuildError

SHAPES = ("rectangle", "ellipse", "triangle")
_LIMITS = {"count": (2, 100_000), "size": (16, 1024), "max_objects": (1, 64)}


def _options(options: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    opts = dict(options or {})
    known = {"count", "size", "classes", "max_objects", "seed"}
    extra = sorted(set(opts) - known)
    if extra:
        raise BuildError(f"{where}/options/{extra[0]}: unknown shapes option; use {sorted(known)}")
    out: dict[str, Any] = {"count": 64, "size": 64, "max_objects": 3, "seed": 0}
    for key, (low, high) in _LIMITS.items():
        value = opts.get(key, out[key])
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise BuildError(f"{where}/options/{key}: must be an integer {low}-{high}")
        out[key] = value
    seed = opts.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise BuildError(f"{where}/options/seed: must be an integer 0-4294967295")
    out["seed"] = seed
    classes = opts.get("classes", list(SHAPES))
    if (
        not isinstance(classes, list)
        or not classes
        or len(set(map(str, classes))) != len(classes)
        or any(c not in SHAPES for c in classes)
    ):
        raise BuildError(f"{where}/options/classes: a list of distinct names from {list(SHAPES)}")
    out["classes"] = [str(c) for c in classes]
    return out


def _mask(kind: str, size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean (size, size) mask of one shape filling `box` (x1, y1, x2, y2; x2, y2 exclusive)."""
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    inside = (xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)
    if kind == "rectangle":
        return inside
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    if kind == "ellipse":
        return bool_((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1.0)
    # triangle: apex at the top middle, base along the bottom edge
    half = (yy - y1) / max(y2 - y1, 1) * rx
    return inside & (np.abs(xx - cx) <= half)


def bool_(a: np.ndarray) -> np.ndarray:
    """`a` as a boolean array (numpy comparisons already are; kept for mypy)."""
    return np.asarray(a, dtype=bool)


def _draw(
    rng: np.random.Generator, size: int, kinds: Sequence[int], names: Sequence[str]
) -> tuple[np.ndarray, list[list[float]]]:
    """One image and its boxes [label, x1, y1, x2, y2]."""
    img = np.empty((3, size, size), dtype=np.float32)
    img[:] = rng.uniform(0.0, 0.25, size=(3, 1, 1)).astype(np.float32)
    img += rng.normal(0.0, 0.02, size=img.shape).astype(np.float32)
    boxes: list[list[float]] = []
    for label in kinds:
        w, h = (int(v) for v in rng.integers(size // 6, size // 2 + 1, size=2))
        x1 = int(rng.integers(0, size - w + 1))
        y1 = int(rng.integers(0, size - h + 1))
        colour = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
        mask = _mask(names[label], size, (x1, y1, x1 + w, y1 + h))
        img[:, mask] = colour[:, None]
        boxes.append([float(label), float(x1), float(y1), float(x1 + w), float(y1 + h)])
    return np.clip(img, 0.0, 1.0), boxes


def shapes(
    mode: str, options: Mapping[str, Any] | None, where: str
) -> tuple[np.ndarray, list[list[list[float]]], tuple[str, ...]]:
    """Generated images, their boxes and the class names; `mode` detect or classify."""
    opts = _options(options, where)
    rng = np.random.default_rng(opts["seed"])
    names = tuple(opts["classes"])
    images, boxes = [], []
    for i in range(opts["count"]):
        if mode == "classify":  # balanced classes, one shape each
            kinds = [i % len(names)]
        else:
            n = int(rng.integers(1, opts["max_objects"] + 1))
            kinds = [int(k) for k in rng.integers(0, len(names), size=n)]
        img, found = _draw(rng, opts["size"], kinds, names)
        images.append(img)
        boxes.append(found)
    return np.stack(images), boxes, names
