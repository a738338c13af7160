"""Weights on disk: safetensors only (written atomically, deterministic bytes).

A `.pt` file can be imported, but only as a plain state dict loaded with `weights_only=True`:
stemma never unpickles arbitrary objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from stemma.registry.errors import BuildError
from stemma.registry.files import write_atomic


def to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a state dict: CPU, contiguous, unshared copies, no metadata."""
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state.items()}
    from safetensors.torch import save

    return bytes(save(tensors))


def save_weights(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors, atomically."""
    write_atomic(path, to_bytes(state))


def load_weights(path: Path, display: str = "") -> dict[str, torch.Tensor]:
    """Read a safetensors file into CPU tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise BuildError(f"{display or path}: weights file {path} does not exist")
    try:
        return dict(load(path.read_bytes()))
    except (SafetensorError, ValueError) as exc:
        raise BuildError(f"{display or path}: not a valid safetensors file: {exc}") from None


def load_pt(path: Path, display: str = "") -> dict[str, torch.Tensor]:
    """Read a `.pt` state dict with weights_only=True (a {'state_dict': ...} wrapper is fine)."""
    where = display or str(path)
    if not path.is_file():
        raise BuildError(f"{where}: weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a refused or corrupt pickle
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"{where}: cannot load as a weights-only state dict: {first}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise BuildError(f"{where}: expected a state dict (a mapping of names to tensors)")
    return dict(obj)


def read_any(path: Path, display: str = "") -> dict[str, torch.Tensor]:
    """Load `.safetensors` or a weights-only `.pt` / `.pth` state dict."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_weights(path, display)
    if suffix in (".pt", ".pth", ".bin"):
        return load_pt(path, display)
    raise BuildError(
        f"{display or path}: unsupported weights format {suffix!r};"
        " use .safetensors or a .pt state dict"
    )
