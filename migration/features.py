"""Penultimate features and source-head probabilities of a built model on a built dataset.

Exploration scores every candidate source on the same target data; the forward pass is the
expensive part, so its result is cached on disk under ``.stemma/features/`` (ignored by git),
keyed by the candidate's and the dataset's manifest ids. A rebuilt model or dataset has a new
id, so a stale entry is never read; entries are plain ``.npz`` files (no pickles).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.rules.layout import STATE_DIR
from stemma.registry.store import derived as _store
from torch import nn

from .architectures import head_of, penultimate
from .build_inputs import load_model
from .data import DatasetArrays, load_dataset
from .train import CPU_THREADS, resolve_device

CACHE_DIR = "features"
SPLITS = ("train", "eval")
BATCH = 1024


@dataclass(frozen=True)
class Features:
    """What a model produces on one split: features (N, D), head softmax (N, Z), labels (N,)
    (or the dataset's regression or multi-label targets)."""

    features: np.ndarray
    probs: np.ndarray
    labels: np.ndarray


@torch.inference_mode()  # no autograd bookkeeping at all: the features are only read
def compute(
    module: nn.Module, x: np.ndarray, device: str = "auto", batch_size: int = BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """float32 (features, softmax of the head) of `module` over `x`, in eval mode, batched."""
    dev = resolve_device(device)
    was_training = module.training
    prior_threads = torch.get_num_threads()
    if dev.type == "cpu":
        # a fixed thread count keeps float reductions (and so the cached bytes) reproducible
        torch.set_num_threads(CPU_THREADS)
    # images run channels-last: CPU convolutions and pooling take 2-3x less time in that layout
    # (a float32 rounding apart from the default one, and as deterministic)
    layout = torch.channels_last if np.ndim(x) == 4 else torch.contiguous_format
    # one walk over the module for both moves (a fixed cost per candidate that a small
    # sample's forward pass does not dwarf); torch takes both at once, its stubs list apart
    module.to(dev, memory_format=layout).eval()  # type: ignore[call-overload]
    head = head_of(module)
    feats, probs = [], []
    try:
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32).to(dev)
            xb = xb.contiguous(memory_format=layout)
            f = penultimate(module, xb).float()
            feats.append(f.cpu())
            probs.append(torch.softmax(head(f).float(), dim=1).cpu())
    finally:
        module.to(memory_format=torch.contiguous_format)  # the caller's weights as they were
        module.train(was_training)
        torch.set_num_threads(prior_threads)
    if not feats:
        raise BuildError("cannot extract features from an empty split")
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def cache_path(reg: Registry, model_id: str, dataset_id: str, split: str) -> Path:
    """Where the features of (model id, dataset id, split) are cached."""
    key = f"{_hex(model_id)[:16]}-{_hex(dataset_id)[:16]}-{split}.npz"
    return reg.repo_root / STATE_DIR / CACHE_DIR / key


def _hex(content_id: str) -> str:
    return content_id.split(":", 1)[-1]


def _read(path: Path, model_id: str, dataset_id: str) -> Features | None:
    """A cache entry, or None when absent, unreadable or written for other ids (read by the
    derived store's rule: a link, pipe, device or oversized file there is a miss)."""
    if _store.folder(path.parent.parent.parent) is None:
        return None
    data = _store.read(path)
    if data is None:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            # the file name holds 16 hex digits of each id; the full ids rule out a collision
            if str(npz["model_id"]) != model_id or str(npz["dataset_id"]) != dataset_id:
                return None
            return Features(
                np.asarray(npz["features"]), np.asarray(npz["probs"]), np.asarray(npz["labels"])
            )
    except (OSError, ValueError, KeyError, EOFError):
        return None  # a damaged entry is recomputed and replaced


def _write(path: Path, found: Features, model_id: str, dataset_id: str) -> None:
    buf = io.BytesIO()
    np.savez(
        buf,
        features=found.features,
        probs=found.probs,
        labels=found.labels,
        model_id=np.array(model_id),
        dataset_id=np.array(dataset_id),
    )
    if _store.folder(path.parent.parent.parent, create=True) is not None:
        _store.write(path, buf.getvalue())  # skipped where the store cannot hold it


def extract(
    reg: Registry,
    model_name: str,
    dataset_name: str,
    split: str = "train",
    *,
    device: str = "auto",
    cache: bool = True,
    data: DatasetArrays | None = None,
) -> Features:
    """Features and source-head probabilities of a built model on a built dataset's split.

    Read from the cache when (model manifest id, dataset manifest id, split) was seen before;
    otherwise computed (eval mode, no grad, batched, CUDA when available) and cached. `data`:
    the dataset's arrays when the caller has loaded them already (one load for many models).
    """
    if split not in SPLITS:
        raise BuildError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    model_manifest = reg.model_manifest(model_name)
    if model_manifest is None:
        raise BuildError(
            f"{reg.rel('models', model_name)}: model {model_name!r} has not been built;"
            " build it first (dvc repro)"
        )
    dataset_manifest = reg.dataset_manifest(dataset_name)
    if dataset_manifest is None:
        raise BuildError(
            f"{reg.rel('datasets', dataset_name)}: dataset {dataset_name!r} has not been built;"
            " build it first (dvc repro)"
        )
    path = cache_path(reg, model_manifest.id, dataset_manifest.id, split)
    if cache:
        hit = _read(path, model_manifest.id, dataset_manifest.id)
        if hit is not None:
            return hit
    arrays = load_dataset(reg, dataset_name) if data is None else data
    x, y = (arrays.x_train, arrays.y_train) if split == "train" else (arrays.x_eval, arrays.y_eval)
    feats, probs = compute(load_model(reg, model_name), x, device)
    found = Features(feats, probs, np.asarray(y))  # class ids, or regression targets
    if cache:
        _write(path, found, model_manifest.id, dataset_manifest.id)
    return found
