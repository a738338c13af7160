"""Quantized models read back: torchao's safetensors form rebuilt into a module.

The weights file of a quantized build (migration/quantize.py) holds each int8 tensor as
`qdata`, `scale` and `zero_point`, with torchao's subclass described in the file's JSON
metadata (never pickle). `load_quantized` / `load_exported` rebuild the module and load it with
torchao's `unflatten_tensor_state_dict`, or with transformers' own loader for that family.
Every build that loads a model or a source reads quantized ones through here, so this module
imports no build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import ModelManifest, model_record
from stemma.registry.rules.parents import pointer_of
from torch import nn

from . import weights as _weights
from .architectures import build_module
from .families import require


def quantized_source_error(spec: ModelSpec, src: str, manifest: ModelManifest) -> BuildError:
    """Why a quantized model is no source: its int8 tensors are no weights to train, merge or
    quantize again; its parent is (the one rule for every build that loads a source)."""
    parent = None if manifest.source is None else manifest.source.model
    method = None if manifest.quantize is None else manifest.quantize.method
    return BuildError(
        f"{spec.path} at {pointer_of(spec, src)}: source model {src!r} is quantized"
        f" ({method}); derive from its parent {parent!r} instead"
    )


def _metadata(path: Path) -> dict[str, str]:
    """The header's `__metadata__` of a safetensors file that `read_checked` validated."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(min(size, _weights.MAX_HEADER)))
    return dict(header.get("__metadata__") or {})


def load_state(
    path: Path, display: str = "", root: Path | None = None, sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """A quantized weights file as torchao tensors (`unflatten_tensor_state_dict`, which
    rebuilds only torchao's own tensor classes from the JSON metadata: no pickle, no code).
    A regular file with a valid header, inside `root` when given, equal to `sha256` when given;
    anything torchao cannot describe is one error naming the file."""
    where = display or str(path)
    tensors, hashes = _weights.read_checked(path, where, root)
    if sha256 is not None and hashes.sha256 != sha256:
        raise BuildError(f"{where} does not match its manifest; rebuild it (dvc repro)")
    support = require("torchao.prototype.safetensors.safetensors_support", "quantize")
    try:
        state, leftover = support.unflatten_tensor_state_dict(tensors, _metadata(path))
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BuildError(f"{where}: not torchao quantized weights: {first}") from None
    if leftover:
        raise BuildError(f"{where}: tensors torchao does not describe: {sorted(leftover)[:3]}")
    return dict(state)


def rebuild(
    config: dict[str, Any],
    path: Path,
    trusted: tuple[str, ...] = (),
    display: str = "",
    root: Path | None = None,
    sha256: str | None = None,
) -> nn.Module:
    """The quantized module: built from stemma's architecture config, its linear layers
    quantized with the recorded method's layout, the stored tensors assigned as they are."""
    with torch.random.fork_rng(devices=[]):
        module = build_module(config, list(trusted), "architecture")
    state = load_state(path, display, root, sha256)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # a stored shape the architecture does not have
        first = (str(exc).strip().splitlines() or ["RuntimeError"])[-1].strip()
        raise BuildError(f"{display or path}: does not fit the architecture: {first}") from None
    if missing or unexpected:
        raise BuildError(
            f"{display or path}: does not fit the architecture (missing {missing[:3]},"
            f" unexpected {unexpected[:3]})"
        )
    module.eval()
    return module


def load_quantized(reg: Registry, name: str) -> nn.Module:
    """A built quantized model of the registry, ready to evaluate."""
    found = reg.model_manifest(name)
    manifest = None if found is None else model_record(found)
    if manifest is None or manifest.quantize is None:
        raise BuildError(f"{reg.rel('models', name)}: model {name!r} is no built quantized model")
    rel = manifest.weights.path
    return rebuild(
        dict(manifest.architecture.config),
        reg.model_dir(name) / rel,
        tuple(reg.settings.entrypoints),
        reg.rel("models", name, rel),
        reg.repo_root,
        manifest.weights.sha256,
    )


def load_exported(folder: Path) -> nn.Module:
    """A quantized model from its exported folder (`config.json` + `model.safetensors`, as
    `stemma export card --weights` writes it): transformers' own `from_pretrained` for a
    transformers model (its config carries `quantization_config`), else stemma's config."""
    config = json.loads((Path(folder) / "config.json").read_text())
    if "quantization_config" in config:
        transformers = require("transformers")
        decoder = any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])
        auto = (
            transformers.AutoModelForCausalLM
            if decoder
            else transformers.AutoModelForSequenceClassification
        )
        model: nn.Module = auto.from_pretrained(str(folder))
        return model.eval()
    return rebuild(config, Path(folder) / "model.safetensors")
