"""The core of a trained model's manifest, one assembly for every kind of build.

A classifier's build (build.py) and a detector's (detection.py) record the same facts in the
same shape: spec and digest, source and its id, datasets, weights, architecture and per-tensor
report, parameter counts, the transfer block, metrics, per-class figures and gates. Each then
adds its own keys (task, class names, checks, run). The content id is computed over the
canonical JSON (sorted keys), so the order keys are added in never changes an id.

The blocks are assembled as typed records (`records/manifest.py`: `Source`, `Parameters`,
`Transfer`) and become JSON with `to_dict()` where the manifest document is put together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import (
    DatasetRef,
    ModelManifest,
    ModelRef,
    Pair,
    Parameters,
    Source,
    Tensor,
    Transfer,
    Weights,
)
from torch import nn

from .gating import gate_records
from .mapping import tensors_block
from .strategy import Strategy


def manifest_head(spec: ModelSpec, name: str, source: Source | None) -> dict[str, Any]:
    """The keys every model manifest opens with: kind, schema version, name, the spec and its
    digest, and the `source` block (None for a model trained from scratch)."""
    return {
        "kind": "model",
        "schema_version": 1,
        "name": name,
        "spec": spec.to_dict(),
        "spec_digest": spec.digest,
        "source": None if source is None else source.to_dict(),
    }


def source_block(spec: ModelSpec, model: str, manifest: ModelManifest) -> Source:
    """The `source` block of a model derived from `model` (whose manifest is `manifest`)."""
    return Source.of(model, spec.source.relation if spec.source else "finetune", manifest.id)


def merge_source(parents: Sequence[tuple[str, str]], combined: str) -> Source:
    """A merge's `source` block: its first parent, relation merge, the `combined` id of all
    the parents, and each parent as (name, manifest id)."""
    refs = tuple(ModelRef.of(m, i) for m, i in parents)
    return Source.of(refs[0].model, "merge", combined, refs)


def datasets_block(refs: Mapping[str, DatasetRef]) -> dict[str, Any]:
    """The manifest's `datasets` block: each role's dataset as JSON."""
    return {role: ref.to_dict() for role, ref in refs.items()}


def counted(params: Mapping[str, nn.Parameter], rows: Sequence[Tensor]) -> Parameters:
    """The `parameters` block of a module's named parameters and its per-tensor report rows
    (transferred: the parameters whose row says they came from the source)."""
    transferred = sum(
        params[r.name].numel() for r in rows if r.origin == "transferred" and r.name in params
    )
    return Parameters.of(
        sum(p.numel() for p in params.values()),
        sum(p.numel() for p in params.values() if p.requires_grad),
        transferred,
    )


def renamed_pairs(rows: Sequence[Tensor]) -> tuple[Pair, ...]:
    """The target tensors fed by a source tensor of another name, from the report rows."""
    return tuple(
        Pair.of(r.name, r.source_name)
        for r in rows
        if r.source_name is not None and r.source_name != r.name
    )


def transfer_block(
    strategy: Strategy,
    mapped: bool,
    unused: Sequence[str],
    features_cached: bool,
    pairs: Sequence[Pair],
) -> Transfer:
    """The `transfer` block of a trained build: the mapping rule (None without a tensor map),
    the strategy's mode, freeze and reinit globs, unused source tensors, renamed pairs."""
    return Transfer(
        keys=(
            "mapping",
            "mode",
            "freeze",
            "reinit",
            "unused_source",
            "features_cached",
            "pairs",
        ),
        extra={"freeze": list(strategy.freeze), "reinit": list(strategy.reinit)},
        mapping=strategy.mapping if mapped else None,
        mode=strategy.mode,
        unused_source=tuple(unused),
        features_cached=features_cached,
        pairs=tuple(pairs),
    )


def model_manifest(
    spec: ModelSpec,
    name: str,
    source: tuple[str, ModelManifest] | None,
    datasets: Mapping[str, DatasetRef],
    weights: Weights | None,
    architecture: tuple[dict[str, Any], Sequence[Tensor]],
    module: nn.Module,
    transfer: tuple[Strategy, bool, Sequence[str], bool],
    scores: tuple[Mapping[str, float], Mapping[str, float]],
) -> dict[str, Any]:
    """The manifest's shared keys. `source`: (name, manifest) or None; `architecture`:
    (config, tensor rows); `transfer`: (strategy, whether a tensor map was used, unused source
    tensors, whether features were cached); `scores`: (metrics, per-class figures); `weights`:
    None where `write_model` streams them and fills the block in."""
    config, rows = architecture
    strategy, mapped, unused, features_cached = transfer
    metrics, per_class = scores
    moved = transfer_block(strategy, mapped, unused, features_cached, renamed_pairs(rows))
    return {
        **manifest_head(spec, name, None if source is None else source_block(spec, *source)),
        "datasets": datasets_block(datasets),
        "weights": {} if weights is None else weights.to_dict(),
        "architecture": {"config": config, "tensors": tensors_block(rows)},
        "parameters": counted(dict(module.named_parameters()), rows).to_dict(),
        "transfer": moved.to_dict(),
        "metrics": dict(metrics),
        "per_class": per_class,
        "gates": [g.to_dict() for g in gate_records(spec.gates, metrics, per_class, spec.path)],
        "checks": {},
    }
