"""The core of a trained model's manifest, one assembly for every kind of build.

A classifier's build (build.py) and a detector's (detection.py) record the same facts in the
same shape: spec and digest, source and its id, datasets, weights, architecture and per-tensor
report, parameter counts, the transfer block, metrics, per-class figures and gates. Each then
adds its own keys (task, class names, checks, run). The content id is computed over the
canonical JSON (sorted keys), so the order keys are added in never changes an id.

The manifest is a typed record (`records/manifest.py`: `ModelManifest` and its blocks). Its
weights are known only once they are written (`build_outputs.write_model` streams them), so a
build first collects the rest (`Head`, and for a trained model `Trained`), and the record is
made from them and the written `Weights`; it becomes JSON with `to_dict()` at the commit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import (
    Architecture,
    Check,
    DatasetRef,
    Gate,
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
from .strategy import Strategy

MODEL_HEAD = (
    "kind",
    "schema_version",
    "name",
    "spec",
    "spec_digest",
    "source",
    "datasets",
    "weights",
    "architecture",
    "parameters",
)
"""The keys every model manifest opens with, in the order every build writes them."""


@dataclasses.dataclass(frozen=True, slots=True)
class Head:
    """What every model manifest opens with, known before the weights are written: the name,
    the spec as resolved and its digest, the `source` block (None for a model trained from
    scratch), the datasets by role, the architecture and the parameter counts."""

    name: str
    spec: Mapping[str, Any]
    spec_digest: str
    source: Source | None
    datasets: Mapping[str, DatasetRef]
    architecture: Architecture
    parameters: Parameters

    def manifest(self, weights: Weights, **blocks: Any) -> ModelManifest:
        """The manifest of these weights. `blocks` are its further fields (metrics, gates and
        run among them), written after the parameters in the order given, a None one left
        out; the id, filled in at the commit, comes last."""
        given = {k: v for k, v in blocks.items() if v is not None}
        return ModelManifest(
            keys=(*MODEL_HEAD, *given, "id"),
            kind="model",
            schema_version=1,
            name=self.name,
            id="",  # the content id, which commit_outputs computes from the rest
            spec=self.spec,
            spec_digest=self.spec_digest,
            source=self.source,
            datasets=dict(self.datasets),
            weights=weights,
            architecture=self.architecture,
            parameters=self.parameters,
            **given,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Trained:
    """A trained model's manifest but for its weights and what the build adds after the
    scores: the head, the transfer block, metrics, per-class figures and evaluated gates."""

    head: Head
    transfer: Transfer
    metrics: Mapping[str, float]
    per_class: Mapping[str, Any]
    gates: tuple[Gate, ...]

    def with_datasets(self, more: Mapping[str, DatasetRef]) -> Trained:
        """These blocks with `more` datasets by role (a check's) after the build's own."""
        head = dataclasses.replace(self.head, datasets={**self.head.datasets, **more})
        return dataclasses.replace(self, head=head)

    def manifest(
        self, weights: Weights, checks: Mapping[str, Check], **later: Any
    ) -> ModelManifest:
        """The manifest of these weights: the shared blocks, the checks, then `later` (task,
        class names, run ... in the order given, a None one left out)."""
        return self.head.manifest(
            weights,
            transfer=self.transfer,
            metrics=dict(self.metrics),
            per_class=self.per_class,
            gates=self.gates,
            checks=checks,
            **later,
        )


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
    architecture: tuple[dict[str, Any], Sequence[Tensor]],
    module: nn.Module,
    transfer: tuple[Strategy, bool, Sequence[str], bool],
    scores: tuple[Mapping[str, float], Mapping[str, float]],
) -> Trained:
    """The manifest's shared blocks, before the weights are written. `source`: (name,
    manifest) or None; `architecture`: (config, tensor rows); `transfer`: (strategy, whether a
    tensor map was used, unused source tensors, whether features were cached); `scores`:
    (metrics, per-class figures)."""
    config, rows = architecture
    strategy, mapped, unused, features_cached = transfer
    metrics, per_class = scores
    moved = transfer_block(strategy, mapped, unused, features_cached, renamed_pairs(rows))
    head = Head(
        name,
        spec.to_dict(),
        spec.digest,
        None if source is None else source_block(spec, *source),
        dict(datasets),
        Architecture.of(config, tuple(rows)),
        counted(dict(module.named_parameters()), rows),
    )
    gates = gate_records(spec.gates, metrics, per_class, spec.path)
    return Trained(head, moved, metrics, per_class, gates)
