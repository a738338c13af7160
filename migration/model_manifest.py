"""The core of a trained model's manifest, one assembly for every kind of build.

A classifier's build (build.py) and a detector's (detection.py) record the same facts in the
same shape: spec and digest, source and its id, datasets, weights, architecture and per-tensor
report, parameter counts, the transfer block, metrics, per-class figures and gates. Each then
adds its own keys (task, class names, checks, run). The content id is computed over the
canonical JSON (sorted keys), so the order keys are added in never changes an id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import ModelManifest
from torch import nn

from .evaluate import evaluate_gates
from .strategy import Strategy


def manifest_head(spec: ModelSpec, name: str, source: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keys every model manifest opens with: kind, schema version, name, the spec and its
    digest, and the `source` block (None for a model trained from scratch)."""
    return {
        "kind": "model",
        "schema_version": 1,
        "name": name,
        "spec": dict(spec.raw),
        "spec_digest": spec.digest,
        "source": None if source is None else dict(source),
    }


def source_block(spec: ModelSpec, model: str, manifest: ModelManifest) -> dict[str, Any]:
    """The `source` block of a model derived from `model` (whose manifest is `manifest`)."""
    return {
        "model": model,
        "relation": spec.source.relation if spec.source else "finetune",
        "id": manifest.id,
    }


def model_manifest(
    spec: ModelSpec,
    name: str,
    source: tuple[str, ModelManifest] | None,
    datasets: dict[str, Any],
    weights: dict[str, Any],
    architecture: tuple[dict[str, Any], list[dict[str, Any]]],
    module: nn.Module,
    transfer: tuple[Strategy, bool, Sequence[str], bool],
    scores: tuple[Mapping[str, float], Mapping[str, float]],
) -> dict[str, Any]:
    """The manifest's shared keys. `source`: (name, manifest) or None; `architecture`:
    (config, tensor rows); `transfer`: (strategy, whether a tensor map was used, unused source
    tensors, whether features were cached); `scores`: (metrics, per-class figures)."""
    config, rows = architecture
    strategy, mapped, unused, features_cached = transfer
    metrics, per_class = scores
    params = dict(module.named_parameters())
    transferred = sum(
        params[r["name"]].numel()
        for r in rows
        if r["origin"] == "transferred" and r["name"] in params
    )
    return {
        **manifest_head(spec, name, None if source is None else source_block(spec, *source)),
        "datasets": datasets,
        "weights": weights,
        "architecture": {"config": config, "tensors": rows},
        "parameters": {
            "total": sum(p.numel() for p in params.values()),
            "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
            "transferred": transferred,
        },
        "transfer": {
            "mapping": strategy.mapping if mapped else None,
            "mode": strategy.mode,
            "freeze": list(strategy.freeze),
            "reinit": list(strategy.reinit),
            "unused_source": list(unused),
            "features_cached": features_cached,
            "pairs": [
                {"target": r["name"], "source": r["source_name"]}
                for r in rows
                if r["source_name"] is not None and r["source_name"] != r["name"]
            ],
        },
        "metrics": dict(metrics),
        "per_class": per_class,
        "gates": evaluate_gates(spec.gates, metrics, per_class, spec.path),
        "checks": {},
    }
