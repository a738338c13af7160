"""`metrics.json` and `curve.json` must say what the manifest says.

DVC reads the two files (`dvc metrics show`, `dvc plots`), stemma reads the manifest; a build
writes all three from the same numbers, so any difference is a hand edit or a partial write.
The manifest is the record (its id covers the metrics); the files are checked against it:
`metrics.json` equals its metrics, and the curve's last epoch has `eval_<metric>` equal to
each metric the manifest holds, within CURVE_TOLERANCE: the curve is scored on the training
path (cached features, autocast on a GPU) and the manifest by a final evaluation, which agree
to rounding but need not agree in the last digit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from stemma.registry.errors import StemmaError
from stemma.registry.records.core import Manifest
from stemma.registry.rules.layout import CURVE_FILE as CURVE_FILE
from stemma.registry.rules.layout import METRICS_FILE as METRICS_FILE
from stemma.registry.rules.layout import MODELS_DIR
from stemma.registry.store.files import parse_json_text
from stemma.registry.store.handle import Registry
from stemma.registry.store.tree import WorkTree

CURVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Mismatch:
    """One difference between a metric file and the manifest."""

    path: str  # repo-relative path of the metric file
    pointer: str  # JSON pointer into that file
    message: str


def _same(a: Any, b: Any, tolerance: float = 1e-12) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=tolerance)
    return bool(a == b)


def _read(reg: Registry, name: str, file: str) -> tuple[bool, Any]:
    """(present, parsed JSON or a reason string when it cannot be read or parsed)."""
    path = reg.rel(MODELS_DIR, name, file)
    try:
        # a link out of the registry is never followed; only a path through a link can
        # resolve elsewhere (`_through_link`, a few lstats instead of two `resolve`s)
        if isinstance(reg.tree, WorkTree) and _through_link(reg, path):
            reg.resolve(f"{MODELS_DIR}/{name}/{file}", display=path)
        text = reg.tree.read_text(path)
    except StemmaError as exc:
        return True, exc.message
    except (OSError, UnicodeDecodeError):
        return True, "cannot be read"
    if text is None:
        return False, None
    try:
        return True, parse_json_text(text, path)
    except StemmaError:
        return True, "is not JSON"


def _through_link(reg: Registry, path: str) -> bool:
    """True unless `path` (from the repository root) is plain folder names, none of them a
    symbolic link: such a path lies where it says, inside the repository."""
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return True
    at = str(reg.repo_root)
    for part in parts:
        at = os.path.join(at, part)
        if os.path.islink(at):
            return True
    return False


def mismatches(reg: Registry, manifest: Manifest) -> list[Mismatch]:
    """Every way the model's metrics.json and curve.json disagree with its manifest."""
    metrics = manifest.metrics  # a model manifest's schema requires them
    found: list[Mismatch] = []
    mpath = reg.rel(MODELS_DIR, manifest.name, METRICS_FILE)
    present, doc = _read(reg, manifest.name, METRICS_FILE)
    if present and isinstance(doc, str):
        found.append(Mismatch(mpath, "", doc))
    elif present and not isinstance(doc, dict):
        found.append(Mismatch(mpath, "", "is not a JSON object of metrics"))
    elif present:
        for key in sorted(metrics.keys() | doc.keys()):
            if key not in doc:
                found.append(Mismatch(mpath, f"/{key}", f"metric {key} of the manifest is missing"))
            elif key not in metrics:
                found.append(Mismatch(mpath, f"/{key}", f"metric {key} is not in the manifest"))
            elif not _same(doc[key], metrics[key]):
                found.append(
                    Mismatch(
                        mpath,
                        f"/{key}",
                        f"{key} is {doc[key]!r}, the manifest says {metrics[key]!r}",
                    )
                )
    cpath = reg.rel(MODELS_DIR, manifest.name, CURVE_FILE)
    present, curve = _read(reg, manifest.name, CURVE_FILE)
    if present and isinstance(curve, str):
        found.append(Mismatch(cpath, "", curve))
    elif present and isinstance(curve, list) and curve:
        last = curve[-1]
        at = f"/{len(curve) - 1}"
        if not isinstance(last, dict):
            found.append(Mismatch(cpath, at, "the last epoch is not a JSON object"))
        else:
            for key in sorted(metrics):
                value = last.get(f"eval_{key}")
                if value is not None and not _same(value, metrics[key], CURVE_TOLERANCE):
                    found.append(
                        Mismatch(
                            cpath,
                            f"{at}/eval_{key}",
                            f"last epoch's eval_{key} is {value!r},"
                            f" the manifest says {metrics[key]!r}",
                        )
                    )
    elif present and not isinstance(curve, list):
        found.append(Mismatch(cpath, "", "is not a JSON list of epochs"))
    return found
