"""A detector's sample pictures in the report: eval images with true and predicted boxes.

The build writes `detections.json` (migration/detection_samples.py) and records its hashes in
the manifest under `samples`; the report reads that file, checks it against the manifest and
its own limits, and draws each image as an inline SVG: the pixels as a PNG data URI (encoded
here with the standard library's zlib, no imaging library), true boxes as solid green
rectangles, predicted ones as dashed magenta rectangles labelled with class name and score.
A missing, damaged or altered file costs the picture only: the report says why instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from stemma.registry.errors import StemmaError
from stemma.registry.records.manifest import FileRef
from stemma.registry.rules.layout import MODELS_DIR
from stemma.registry.store.files import parse_json_text, read_bytes_file
from stemma.registry.store.handle import Registry

SAMPLES_FILE = "detections.json"
MAX_BYTES = 4 << 20
MAX_IMAGES = 16
MAX_SIDE = 512
MAX_BOXES = 100
MAX_NAMES = 1000
DISPLAY_PX = 192  # each picture's width on the page
TRUE_COLOUR = "#1a7f37"
PRED_COLOUR = "#d6008f"


class SamplesError(StemmaError):
    """A samples file that does not hold what the report can draw."""


@dataclass(frozen=True)
class Box:
    """One box in image pixels (x1, y1, x2, y2); `score` only for a prediction."""

    label: int
    x1: float
    y1: float
    x2: float
    y2: float
    score: float | None = None

    @classmethod
    def from_dict(cls, doc: Any, where: str, scored: bool) -> Box:
        """A box entry, or `SamplesError` naming its JSON pointer."""
        if not isinstance(doc, Mapping) or set(doc) != (
            {"label", "box", "score"} if scored else {"label", "box"}
        ):
            raise SamplesError(f"{where}: expected label, box{', score' if scored else ''}")
        label, box = doc["label"], doc["box"]
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < MAX_NAMES:
            raise SamplesError(f"{where}/label: a class id 0-{MAX_NAMES - 1}")
        if not isinstance(box, list) or len(box) != 4 or not all(_finite(v) for v in box):
            raise SamplesError(f"{where}/box: four finite numbers x1, y1, x2, y2")
        score: float | None = None
        if scored:
            value = doc["score"]
            if not (_finite(value) and 0 <= value <= 1):
                raise SamplesError(f"{where}/score: a number in [0, 1]")
            score = float(value)
        x1, y1, x2, y2 = (float(v) for v in box)
        return cls(label, x1, y1, x2, y2, score)

    def to_dict(self) -> dict[str, Any]:
        """The file's form of the box."""
        scored = {} if self.score is None else {"score": self.score}
        return {"label": self.label, "box": [self.x1, self.y1, self.x2, self.y2], **scored}


@dataclass(frozen=True)
class SampleImage:
    """One eval image (RGB bytes, row by row) and its boxes."""

    width: int
    height: int
    rgb: bytes
    truth: tuple[Box, ...]
    predicted: tuple[Box, ...]

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> SampleImage:
        """An image entry, or `SamplesError` naming its JSON pointer."""
        if not isinstance(doc, Mapping) or set(doc) != {
            "width",
            "height",
            "rgb",
            "truth",
            "predicted",
        }:
            raise SamplesError(f"{where}: expected width, height, rgb, truth, predicted")
        size = []
        for key in ("width", "height"):
            v = doc[key]
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_SIDE:
                raise SamplesError(f"{where}/{key}: an integer 1-{MAX_SIDE}")
            size.append(v)
        try:
            rgb = base64.b64decode(str(doc["rgb"]), validate=True)
        except (binascii.Error, ValueError):
            raise SamplesError(f"{where}/rgb: not base64") from None
        if len(rgb) != size[0] * size[1] * 3:
            raise SamplesError(f"{where}/rgb: {len(rgb)} bytes, not width x height x 3")
        boxes = []
        for key in ("truth", "predicted"):
            items = doc[key]
            if not isinstance(items, list) or len(items) > MAX_BOXES:
                raise SamplesError(f"{where}/{key}: a list of at most {MAX_BOXES} boxes")
            boxes.append(
                tuple(
                    Box.from_dict(b, f"{where}/{key}/{i}", key == "predicted")
                    for i, b in enumerate(items)
                )
            )
        return cls(size[0], size[1], rgb, boxes[0], boxes[1])


@dataclass(frozen=True)
class Samples:
    """The sample pictures of one detector."""

    score_threshold: float
    class_names: tuple[str, ...]
    images: tuple[SampleImage, ...]

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> Samples:
        """The whole file, or `SamplesError` naming the first bad JSON pointer."""
        keys = {"schema_version", "score_threshold", "class_names", "images"}
        if not isinstance(doc, Mapping) or set(doc) != keys or not _is_one(doc["schema_version"]):
            raise SamplesError(
                f"{where}: expected schema_version 1 and {sorted(keys - {'schema_version'})}"
            )
        threshold = doc["score_threshold"]
        if not (_finite(threshold) and 0 <= threshold <= 1):
            raise SamplesError(f"{where} at /score_threshold: a number in [0, 1]")
        names = doc["class_names"]
        if (
            not isinstance(names, list)
            or len(names) > MAX_NAMES
            or not all(isinstance(n, str) for n in names)
        ):
            raise SamplesError(f"{where} at /class_names: a list of names")
        images = doc["images"]
        if not isinstance(images, list) or len(images) > MAX_IMAGES:
            raise SamplesError(f"{where} at /images: a list of at most {MAX_IMAGES} images")
        return cls(
            float(threshold),
            tuple(names),
            tuple(
                SampleImage.from_dict(img, f"{where} at /images/{i}")
                for i, img in enumerate(images)
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """The file's form (the report's JSON carries it as read)."""
        return {
            "schema_version": 1,
            "score_threshold": self.score_threshold,
            "class_names": list(self.class_names),
            "images": [
                {
                    "width": img.width,
                    "height": img.height,
                    "rgb": base64.b64encode(img.rgb).decode("ascii"),
                    "truth": [b.to_dict() for b in img.truth],
                    "predicted": [b.to_dict() for b in img.predicted],
                }
                for img in self.images
            ],
        }


@dataclass(frozen=True)
class SamplesProblem:
    """Why a detector's pictures are not shown: its file is missing, altered since the
    build, or malformed (the report's `samples` is then `{"problem": why}`)."""

    problem: str

    @classmethod
    def from_dict(cls, doc: Any) -> SamplesProblem | None:
        """The problem a report's `samples` holds; None where it holds the pictures."""
        if isinstance(doc, Mapping) and "problem" in doc:
            return cls(str(doc["problem"]))
        return None

    def to_dict(self) -> dict[str, Any]:
        """The report's form of the problem."""
        return {"problem": self.problem}


def _is_one(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == 1


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_samples(reg: Registry, name: str, record: FileRef | None) -> dict[str, Any] | None:
    """The report's `samples`: None when the manifest records none (`record`, its `samples`
    block); else the file as read, or `{"problem": why}` when it is missing, altered since
    the build, or malformed."""
    if record is None:
        return None
    return _read_samples(reg, name, record).to_dict()


def _read_samples(reg: Registry, name: str, record: FileRef) -> Samples | SamplesProblem:
    """The samples file of model `name`, checked against its manifest's `record` of it."""
    display = reg.rel(MODELS_DIR, name, SAMPLES_FILE)
    try:
        data = read_bytes_file(
            reg.model_dir(name) / SAMPLES_FILE, display, root=reg.root, limit=MAX_BYTES
        )
        if data is None:
            raise SamplesError(f"{display}: the file does not exist; rebuild the model")
        if "sha256:" + hashlib.sha256(data).hexdigest() != record.sha256:
            raise SamplesError(
                f"{display}: differs from the sha256 in the manifest; rebuild the model"
            )
        doc = parse_json_text(data.decode("utf-8", errors="strict"), display)
        return Samples.from_dict(doc, display)
    except UnicodeDecodeError:
        return SamplesProblem(f"{display}: not UTF-8")
    except StemmaError as exc:
        return SamplesProblem(str(exc))


def png(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG of `rgb` (row by row, no filter)."""
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _name(names: Sequence[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)


def _rect(box: Box, colour: str, stroke: float, dashed: bool) -> str:
    dash = f" stroke-dasharray='{2 * stroke:g} {stroke:g}'" if dashed else ""
    x, y = min(box.x1, box.x2), min(box.y1, box.y2)
    w, h = abs(box.x2 - box.x1), abs(box.y2 - box.y1)
    return (
        f"<rect class='{'pred' if dashed else 'true'}' x='{x:g}' y='{y:g}' width='{w:g}'"
        f" height='{h:g}' fill='none' stroke='{colour}' stroke-width='{stroke:g}'{dash}/>"
    )


def _picture(img: SampleImage, names: Sequence[str], index: int) -> str:
    data = base64.b64encode(png(img.width, img.height, img.rgb)).decode("ascii")
    stroke = max(img.width, img.height) / 96
    font = max(img.width, img.height) / 14
    parts = [
        "<svg class='boxes' xmlns='http://www.w3.org/2000/svg'"
        f" viewBox='0 0 {img.width} {img.height}'"
        f" width='{DISPLAY_PX}' height='{DISPLAY_PX * img.height / img.width:g}' role='img'"
        f" aria-label='eval image {index} with true and predicted boxes'>",
        f"<image href='data:image/png;base64,{data}' width='{img.width}' height='{img.height}'"
        " style='image-rendering:pixelated'/>",
    ]
    parts += [_rect(b, TRUE_COLOUR, stroke, False) for b in img.truth]
    for b in img.predicted:
        parts.append(_rect(b, PRED_COLOUR, stroke, True))
        text = escape(f"{_name(names, b.label)} {b.score or 0:.2f}")
        y = max(min(b.y1, b.y2) - stroke, font)
        parts.append(
            f"<text x='{min(b.x1, b.x2):g}' y='{y:g}' font-size='{font:g}' fill='{PRED_COLOUR}'"
            f" stroke='white' stroke-width='{stroke / 2:g}' paint-order='stroke'>{text}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def samples_html(samples: Mapping[str, Any] | None) -> str:
    """The report's sample pictures section; empty when the model records none."""
    if samples is None:
        return ""
    head = "<h2>sample detections</h2>"
    problem = SamplesProblem.from_dict(samples)
    if problem is not None:
        return head + f"<p>no pictures: {escape(problem.problem)}</p>"
    try:
        found = Samples.from_dict(samples, "samples")
    except StemmaError as exc:
        return head + f"<p>no pictures: {escape(str(exc))}</p>"
    legend = (
        f"<p><span style='color:{TRUE_COLOUR}'>solid green: true boxes</span>;"
        f" <span style='color:{PRED_COLOUR}'>dashed magenta: predicted boxes with score"
        f" \u2265 {found.score_threshold:g}</span>, labelled with class and score</p>"
    )
    pictures = "".join(
        "<figure style='display:inline-block;margin:0 .5rem .5rem 0'>"
        + _picture(img, found.class_names, i)
        + f"<figcaption><small>{len(img.truth)} true, {len(img.predicted)} predicted"
        "</small></figcaption></figure>"
        for i, img in enumerate(found.images)
    )
    return head + legend + f"<div class='wide'>{pictures}</div>"


__all__ = ["Samples", "SamplesError", "SamplesProblem", "load_samples", "png", "samples_html"]
