"""Detection datasets: generated shapes and COCO-format folders, stored as padded box arrays.

Sources (dataset specs):

- `shapes:detect`: coloured rectangles, ellipses and triangles drawn with numpy on small
  images, one to `max_objects` per image; `shapes:classify` draws one shape per image and
  labels the image with its class (a classifier's data for the backbone a detector reuses).
  `options`: `count` (images, default 64), `size` (pixels a side, default 64), `classes`
  (a subset of rectangle, ellipse, triangle, in label order), `max_objects` (default 3),
  `seed` (default 0). The same options draw the same images on every machine.
- `coco:FOLDER`: a folder in the repository holding the images and `annotations.json`
  (COCO's instances layout; `options.annotations` names another file in the folder). Images
  are read as `imagefolder:` reads them (`data._image`: regular files of bounded size inside
  the repository, links out refused); categories become classes 0.. in category-id order.

`data.npz` keeps the usual four arrays: images (N, C, H, W) float32 in [0, 1], and per image
a (M, 5) float32 block of [label, x1, y1, x2, y2] in pixels, padded with label -1 to the
largest box count; the manifest records `task: detection`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stemma.registry.errors import BuildError
from stemma.registry.records.core import DatasetSpec
from stemma.registry.rules.taskspec import DETECTION
from stemma.registry.store.files import read_bytes_file

from .data import DatasetArrays, _image, _resize
from .shapes import shapes

PAD = -1.0  # label of a padding row
MAX_ANNOTATION_BYTES = 64 << 20
MAX_IMAGES = 100_000


def is_detection_source(source: str) -> bool:
    """True for the sources this module materializes as boxes."""
    return source == "shapes:detect" or source.startswith("coco:")


# -- COCO folders -------------------------------------------------------------------------------


def coco(
    rel: str,
    resolve: Callable[[str], Path],
    options: Mapping[str, Any] | None,
    size: Sequence[int] | None,
    where: str,
) -> tuple[np.ndarray, list[list[list[float]]], tuple[str, ...]]:
    """Images, boxes and category names of a COCO-format folder (see the module docstring)."""
    opts = dict(options or {})
    extra = sorted(set(opts) - {"annotations"})
    if extra:
        raise BuildError(f"{where}/options/{extra[0]}: unknown coco option; use annotations")
    ann_name = str(opts.get("annotations", "annotations.json"))
    if "/" in ann_name or "\\" in ann_name or ann_name in ("", ".", ".."):
        raise BuildError(f"{where}/options/annotations: a file name in the folder, not a path")
    folder = rel.rstrip("/")
    ann_rel = f"{folder}/{ann_name}"
    data = read_bytes_file(resolve(ann_rel), ann_rel, limit=MAX_ANNOTATION_BYTES)
    if data is None:
        raise BuildError(f"{where}: annotations file {ann_rel} does not exist")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BuildError(f"{where}: {ann_rel} is not JSON: {str(exc)[:120]}") from None
    images, anns, cats = _coco_parts(doc, ann_rel)
    cat_ids = sorted(cats)
    label_of = {cid: i for i, cid in enumerate(cat_ids)}
    by_image: dict[int, list[list[float]]] = {iid: [] for iid in images}
    for i, ann in enumerate(anns):
        pointer = f"{ann_rel} at /annotations/{i}"
        iid, cid, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
        if iid not in by_image or cid not in label_of:
            raise BuildError(f"{pointer}: image_id or category_id names no entry")
        if ann.get("iscrowd"):
            continue  # crowd regions are no instances to detect
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
            or not all(np.isfinite(bbox))
            or bbox[2] <= 0
            or bbox[3] <= 0
        ):
            raise BuildError(f"{pointer}/bbox: [x, y, width, height] with width and height > 0")
        x, y, w, h = (float(v) for v in bbox)
        by_image[iid].append([float(label_of[cid]), x, y, x + w, y + h])
    arrays: list[np.ndarray] = []
    boxes: list[list[list[float]]] = []
    for iid in sorted(images):
        path = f"{folder}/{images[iid]}"
        img = _image(resolve(path), path, where)
        a = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
        found = by_image[iid]
        if size is not None and list(a.shape[1:]) != list(size):
            sy, sx = size[0] / a.shape[1], size[1] / a.shape[2]
            found = [[b[0], b[1] * sx, b[2] * sy, b[3] * sx, b[4] * sy] for b in found]
            a = _resize(a[None], int(size[0]), int(size[1]))[0]
        if arrays and a.shape != arrays[0].shape:
            raise BuildError(
                f"{where}: {path} is {a.shape[2]}x{a.shape[1]}, other images"
                f" {arrays[0].shape[2]}x{arrays[0].shape[1]}; add a transform {{resize: [H, W]}}"
            )
        arrays.append(a.astype(np.float32))
        boxes.append(found)
    if not arrays:
        raise BuildError(f"{where}: {ann_rel} lists no images")
    names = tuple(str(cats[c]) for c in cat_ids)
    return np.stack(arrays), boxes, names


def _coco_parts(
    doc: Any, ann_rel: str
) -> tuple[dict[int, str], list[dict[str, Any]], dict[int, str]]:
    """(image id -> file name, annotations, category id -> name), each entry checked."""
    if not isinstance(doc, dict):
        raise BuildError(f"{ann_rel}: expected a COCO object with images, annotations, categories")
    parts = {}
    for key in ("images", "annotations", "categories"):
        value = doc.get(key)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise BuildError(f"{ann_rel} at /{key}: expected a list of objects")
        parts[key] = value
    if len(parts["images"]) > MAX_IMAGES:
        raise BuildError(f"{ann_rel} at /images: more than {MAX_IMAGES} images")
    images: dict[int, str] = {}
    for i, entry in enumerate(parts["images"]):
        iid, name = entry.get("id"), entry.get("file_name")
        if not isinstance(iid, int) or isinstance(iid, bool) or iid in images:
            raise BuildError(f"{ann_rel} at /images/{i}/id: a unique integer")
        if (
            not isinstance(name, str)
            or not name
            or name.startswith(("/", "\\"))
            or any(p in ("", ".", "..") for p in name.replace("\\", "/").split("/"))
        ):
            raise BuildError(
                f"{ann_rel} at /images/{i}/file_name: a relative path inside the folder"
            )
        images[iid] = name
    cats: dict[int, str] = {}
    for i, entry in enumerate(parts["categories"]):
        cid, name = entry.get("id"), entry.get("name")
        if not isinstance(cid, int) or isinstance(cid, bool) or cid in cats:
            raise BuildError(f"{ann_rel} at /categories/{i}/id: a unique integer")
        cats[cid] = str(name)
    if not cats:
        raise BuildError(f"{ann_rel} at /categories: no category")
    return images, parts["annotations"], cats


# -- the stored arrays ----------------------------------------------------------------------------


def pad_boxes(boxes: Sequence[Sequence[Sequence[float]]]) -> np.ndarray:
    """(N, M, 5) float32 of per-image boxes, padded with label -1."""
    width = max((len(b) for b in boxes), default=0) or 1
    out = np.zeros((len(boxes), width, 5), dtype=np.float32)
    out[:, :, 0] = PAD
    for i, found in enumerate(boxes):
        if found:
            out[i, : len(found)] = np.asarray(found, dtype=np.float32)
    return out


def unpad(y: np.ndarray) -> list[np.ndarray]:
    """Per image: its (M_i, 5) rows of [label, x1, y1, x2, y2] without padding."""
    return [row[row[:, 0] >= 0] for row in np.asarray(y, dtype=np.float32)]


def materialize_detection(
    spec: DatasetSpec,
    *,
    display: str,
    resolve: Callable[[str], Path],
) -> DatasetArrays:
    """A detection dataset spec's train and eval arrays (seeded split)."""
    where = f"{display} at /source"
    source = spec.source
    for key in ("select", "target", "features"):
        if key in spec.declared_fields:
            raise BuildError(f"{display} at /{key}: does not apply to a detection source")
    size = spec.resize
    if len(spec.transforms) > 1 or (spec.transforms and size is None):
        raise BuildError(f"{display} at /transforms: a detection source takes one resize only")
    if spec.task is not None and spec.task != DETECTION:
        raise BuildError(f"{display} at /task: {source} is a detection source")
    if source == "shapes:detect":
        x, boxes, names = shapes("detect", spec.options, where)
        if size is not None:
            raise BuildError(f"{display} at /transforms: set options.size instead of a resize")
    else:
        x, boxes, names = coco(source.partition(":")[2], resolve, spec.options, size, where)
    split = spec.split
    order = np.random.default_rng(split.seed).permutation(len(x))
    n_eval = max(1, round(len(x) * split.eval))
    if n_eval >= len(x):
        raise BuildError(f"{display} at /split/eval: leaves no training image")
    ev, tr = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    y = pad_boxes(boxes)
    return DatasetArrays(x[tr], y[tr], x[ev], y[ev], names)


def class_counts(y: np.ndarray) -> dict[str, int]:
    """Boxes per class label in one split."""
    labels = np.concatenate([b[:, 0] for b in unpad(y)] or [np.zeros(0)]).astype(np.int64)
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}
