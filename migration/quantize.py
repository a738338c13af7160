"""Quantized models as builds: a parent's weights quantized on the CPU with torchao.

A spec with `source: {model: PARENT, relation: quantized}` and a `quantize:` block names no
training: the build loads the parent (checked against its manifest), scores it on the spec's
eval data (migration/quantize_eval.py: the task's metrics, or a causal LM's perplexity with
the parent's tokenizer, which the quantized model inherits), quantizes every `nn.Linear`
(but a decoder's output embeddings) with torchao (`int8_weight_only`: int8 weights, float
activations; `int8_dynamic`: int8 weights and activations quantized per token at run time),
scores the quantized model the same way, and gates the relative drop of the task's main
metric (`quantize.max_drop`) besides the spec's usual gates.

The weights file is torchao's own safetensors form (`flatten_tensor_state_dict`: each int8
tensor as `qdata`, `scale` and `zero_point`, with the subclass described in the file's JSON
metadata; never pickle), the form transformers writes and `from_pretrained` reads for a
`TorchAoConfig` model; migration/quantized.py reads it back.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.records.core import MODEL_MANIFEST, ModelSpec, QuantizeSettings
from stemma.registry.records.manifest import (
    Architecture,
    Gate,
    Library,
    ModelManifest,
    Parameters,
    Quantize,
    QuantizeQuality,
    QuantizeSize,
    Tensor,
)
from stemma.registry.rules.layout import CURVE_FILE, METRICS_FILE, WEIGHTS_FILE
from stemma.registry.rules.taskspec import LOWER_IS_BETTER, MAIN_METRIC
from torch import nn

from . import weights as _weights
from .architectures import build_module
from .build_inputs import class_names, load_source, refuse_failed_source
from .build_outputs import blob_weights, commit_outputs, run_record
from .families import require
from .gating import gate_record, gate_records
from .hubsnapshot import inherited_tokenizer
from .mapping import plan, tensor_row, transfer
from .model_manifest import Head, source_block
from .quantize_eval import scoring

METHODS = {
    "int8_weight_only": "Int8WeightOnlyConfig",
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig",
}
"""Spec method -> torchao config class (torchao.quantization)."""
DEFAULT_MAX_DROP = 0.02
"""Largest relative drop of the main metric a quantization may cost when the spec names none."""
DROP_GATE = "quantize_drop"
"""The gate row (manifest `gates`) that `quantize.max_drop` becomes."""
_SOURCE_POINTER = "/source"


@dataclass(frozen=True)
class QuantizeSpec:
    """The spec's `quantize` block."""

    method: str
    max_drop: float = DEFAULT_MAX_DROP

    @classmethod
    def from_spec(cls, given: QuantizeSettings | None, display: str) -> QuantizeSpec:
        """The block as the schema admits it; anything else is one error naming the pointer."""
        if given is None or given.method not in METHODS:
            raise BuildError(
                f"{display} at /quantize/method: a quantized model names a method, one of"
                f" {', '.join(METHODS)}"
            )
        drop = DEFAULT_MAX_DROP if given.max_drop is None else given.max_drop
        if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0 <= drop <= 1:
            raise BuildError(f"{display} at /quantize/max_drop: a number from 0 to 1")
        return cls(given.method, float(drop))


def quantize_record(
    method: str,
    library: tuple[str, str],
    config: Mapping[str, Any],
    layers: int,
    size: tuple[int, int],
    quality: tuple[str, float, float, float],
    hf_quantization_config: Mapping[str, Any] | None = None,
) -> Quantize:
    """The manifest's `quantize` block: what was done (`method`, the (name, version) of the
    `library`, its `config`, the quantized `layers`), what it saved (`size`: stored bytes
    before and after) and what it cost (`quality`: the main metric, its parent and quantized
    values, and the largest relative drop allowed)."""
    before, after = size
    metric, parent, quantized, max_drop = quality
    drop = relative_drop(metric, parent, quantized)
    return Quantize(
        keys=("method", "library", "config", "layers", "size", "quality")
        + (() if hf_quantization_config is None else ("hf_quantization_config",)),
        method=method,
        library=Library(keys=("name", "version"), name=library[0], version=library[1]),
        config=config,
        layers=layers,
        size=QuantizeSize(
            keys=("bytes_before", "bytes_after", "ratio"),
            bytes_before=before,
            bytes_after=after,
            ratio=round(after / before, 6) if before else 0.0,
        ),
        quality=QuantizeQuality(
            keys=("metric", "parent", "quantized", "drop", "max_drop", "passed"),
            metric=metric,
            parent=parent,
            quantized=quantized,
            drop=drop,
            max_drop=max_drop,
            passed=drop <= max_drop,
        ),
        hf_quantization_config=hf_quantization_config,
    )


def drop_gate(drop: float, max_drop: float) -> Gate:
    """The gate of a quantization's drop (manifest `gates`, after the spec's own)."""
    return gate_record(DROP_GATE, "<=", max_drop, drop)


def recorded_gates(manifest: ModelManifest) -> tuple[Gate, ...]:
    """The drop gate recomputed from a manifest's `quantize.quality` (none for other models):
    `verify` checks the recorded row against it, as it checks the spec's gates."""
    if manifest.quantize is None:
        return ()
    quality = manifest.quantize.quality
    drop = relative_drop(quality.metric, float(quality.parent), float(quality.quantized))
    return (drop_gate(drop, float(quality.max_drop)),)


def relative_drop(metric: str, parent: float, quantized: float) -> float:
    """How much worse the quantized model is, relative to the parent (0 when not worse)."""
    worse = quantized - parent if metric in LOWER_IS_BETTER else parent - quantized
    scale = abs(parent) if parent else 1.0
    return round(max(worse, 0.0) / scale, 8)


def torchao_config(method: str) -> Any:
    """torchao's config object for a spec method."""
    quantization = require("torchao.quantization", "quantize")
    return getattr(quantization, METHODS[method])()


def quantize_module(module: nn.Module, method: str) -> tuple[float, int]:
    """Quantize the linear layers of `module` in place (CPU); returns the seconds it took and
    how many layers were quantized. A decoder's output embeddings stay as they are, as
    transformers' TorchAoConfig leaves them by default: they are often tied to the input
    embeddings, and a quantized copy would untie them."""
    quantization = require("torchao.quantization", "quantize")
    get_output = getattr(module, "get_output_embeddings", None)
    skip = get_output() if callable(get_output) else None

    def wanted(layer: nn.Module, _fqn: str) -> bool:
        return isinstance(layer, nn.Linear) and layer is not skip

    begin = time.perf_counter()
    quantization.quantize_(module, torchao_config(method), filter_fn=wanted, device="cpu")
    seconds = time.perf_counter() - begin
    plain = (torch.Tensor, nn.Parameter)
    layers = sum(
        1
        for layer in module.modules()
        if isinstance(layer, nn.Linear) and type(layer.weight) not in plain
    )
    return seconds, layers


def stored_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Bytes of `state` written as safetensors (header included), without writing it."""
    head, _ = _weights.layout(state, metadata)
    return len(head) + sum(t.numel() * t.element_size() for t in state.values())


def flat_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """torchao's safetensors form of a quantized module: plain tensors and their metadata."""
    support = require("torchao.prototype.safetensors.safetensors_support", "quantize")
    state = {k: v.detach() for k, v in module.state_dict().items()}
    tensors, metadata = support.flatten_tensor_state_dict(state)
    return {k: v.contiguous() for k, v in tensors.items()}, dict(metadata)


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The file's bytes: stemma's streamed writer, with torchao's metadata in the header."""
    out = io.BytesIO()
    _weights.stream(out, tensors, metadata)
    return out.getvalue()


def _parent_module(config: dict[str, Any], state: dict[str, torch.Tensor], reg: Registry) -> Any:
    with torch.random.fork_rng(devices=[]):  # building initialises from the global RNG
        module = build_module(config, reg.settings.entrypoints, "architecture")
    transfer(module, state, plan(state, module.state_dict(), "exact", "architecture"))
    module.eval()
    return module


def hf_quantization_config(method: str) -> dict[str, Any]:
    """transformers' `quantization_config` for the method, as `config.json` carries it."""
    transformers = require("transformers")
    doc: dict[str, Any] = transformers.TorchAoConfig(torchao_config(method)).to_dict()
    return doc


def build_quantized(
    reg: Registry, name: str, spec: ModelSpec, started: str, begin: float
) -> dict[str, Any]:
    """Build a quantized model from its parent; returns the manifest (see the module doc)."""
    display = spec.path
    qspec = QuantizeSpec.from_spec(spec.quantize, display)
    if spec.source is None or spec.source.relation != "quantized" or spec.source.auto:
        raise BuildError(
            f"{display} at {_SOURCE_POINTER}: a quantize block needs"
            " source: {model: PARENT, relation: quantized}"
        )
    parent = spec.source.model
    src_manifest, src_state = load_source(reg, spec, parent)
    refuse_failed_source(spec, parent, src_manifest)
    config = dict(src_manifest.architecture.config)
    scored = scoring(reg, spec, parent, src_manifest)

    module = _parent_module(config, src_state, reg)
    bytes_before = stored_bytes({k: v.contiguous() for k, v in module.state_dict().items()})
    before = scored.score(module)
    seconds, layers = quantize_module(module, qspec.method)
    if not layers:
        raise BuildError(
            f"{display} at /source/model: {parent!r} has no torch.nn.Linear layer to quantize"
            " (torchao quantizes those; GPT-2's Conv1D layers are not)"
        )
    after = scored.score(module)
    tensors, metadata = flat_state(module)
    blob = safetensors_bytes(tensors, metadata)

    main = MAIN_METRIC[scored.task]
    torchao = require("torchao", "quantize")
    core = require("torchao.core.config", "quantize")
    record = quantize_record(
        qspec.method,
        ("torchao", str(torchao.__version__)),
        core.config_to_dict(torchao_config(qspec.method)),
        layers,
        (bytes_before, len(blob)),
        (main, float(before[main]), float(after[main]), qspec.max_drop),
        hf_quantization_config(qspec.method)
        if ArchitectureConfig.from_dict(config).family == "transformers"
        else None,
    )
    metrics = {m: float(after[m]) for m in scored.metrics}
    total = sum(p.numel() for p in module.parameters())
    names = class_names(reg, spec.eval)
    for key, value in (("before", before), ("after", after)):
        if not all(math.isfinite(float(value[m])) for m in scored.metrics):
            raise BuildError(f"{display} at /quantize: the {key} score is not a finite number")
    # the parent's tokenizer, as every child of a model with one keeps it (the same files)
    tokenizer, tokenizer_files = inherited_tokenizer(reg, parent, src_manifest)
    head = Head(
        name,
        spec.to_dict(),
        spec.digest,
        source_block(spec, parent, src_manifest),
        scored.datasets,
        Architecture.of(config, tuple(_rows(tensors, metadata, set(src_state)))),
        Parameters.of(total, 0, total),
    )
    built = head.manifest(
        blob_weights(WEIGHTS_FILE, blob, "safetensors"),
        metrics=metrics,
        gates=(
            *gate_records(spec.gates, metrics, after["per_class"], display),
            drop_gate(record.quality.drop, record.quality.max_drop),
        ),
        run=run_record(reg, started, begin, device="cpu", quantize_s=round(seconds, 3)),
        per_class=after["per_class"],
        task=scored.recorded_task,
        tokenizer=tokenizer,
        class_names=None if names is None else tuple(names),
        checks={},
        quantize=record,
    )
    manifest = built.to_dict()
    outputs: dict[str, Any] = {
        WEIGHTS_FILE: blob,
        METRICS_FILE: dict(metrics),
        CURVE_FILE: [],
        **tokenizer_files,
    }
    folder = reg.model_dir(name)
    commit_outputs(reg, folder, "models", manifest, MODEL_MANIFEST, outputs)
    return manifest


def _origins(metadata: Mapping[str, str]) -> dict[str, str]:
    """Stored name -> the parent tensor it was made from, for torchao's flattened tensors
    (`body.0._weight_qdata` from `body.0.weight`: its `qdata`, `scale`, `zero_point`)."""
    found: dict[str, str] = {}
    for name in json.loads(metadata.get("tensor_names", "[]")):
        info = json.loads(metadata.get(name, "{}"))
        prefix, _, attr = str(name).rpartition(".")
        for part in info.get("_tensor_data_names") or []:
            found[f"{prefix}._{attr}_{part}" if prefix else f"_{attr}_{part}"] = str(name)
    return found


def _rows(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], parent: set[str]
) -> list[Tensor]:
    """The stored tensors, as the manifest lists every model's: each from its parent tensor;
    those stored as they were are frozen (verify compares them bit for bit), the quantized
    ones are not (they are new numbers made from the parent's)."""
    made_from = _origins(metadata)
    rows = []
    for n, t in sorted(tensors.items()):
        kept = n in parent
        dtype = str(t.dtype).removeprefix("torch.")
        source = n if kept else made_from.get(n)
        rows.append(tensor_row(n, "parameter", t.shape, dtype, "transferred", kept, source))
    return rows
