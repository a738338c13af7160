"""Map a source state dict onto a target module and report every tensor's origin.

Rules: `exact` (every name and shape must match), `by-name` (copy where name and shape match),
`by-shape` (by name first, then the remaining tensors by identical shape). By-shape pairs in a
fixed order: within one shape, the unpaired target tensors and the unpaired source tensors are
each sorted by name, digit runs compared as numbers (`layer.2` before `layer.10`), and paired
first with first. When the two sides of a shape hold different numbers of tensors (both more
than none) the pairing is ambiguous and refused: rename the tensors or map by name.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from stemma.registry.errors import BuildError
from stemma.registry.records.manifest import Tensor
from torch import nn

RULES = ("exact", "by-name", "by-shape")


@dataclass(frozen=True)
class TensorMap:
    """Which source tensor feeds which target tensor, and which source tensors went unused."""

    rule: str | None
    pairs: dict[str, str] = field(default_factory=dict)  # target name -> source name
    unused: list[str] = field(default_factory=list)


def _shape(t: torch.Tensor) -> list[int]:
    return [int(d) for d in t.shape]


def natural_key(name: str) -> list[Any]:
    """Sort key of a tensor name with digit runs compared as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]


def _by_shape(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    pairs: dict[str, str],
    where: str,
    source_label: str,
) -> None:
    """Add shape pairs of the still unpaired tensors in natural name order; refuse ambiguity."""
    used = set(pairs.values())
    groups: dict[tuple[int, ...], tuple[list[str], list[str]]] = {}
    for name, tensor in target.items():
        if name not in pairs:
            groups.setdefault(tuple(tensor.shape), ([], []))[0].append(name)
    for name, tensor in source.items():
        if name not in used and tuple(tensor.shape) in groups:
            groups[tuple(tensor.shape)][1].append(name)
    for shape in sorted(groups):
        targets, sources = (sorted(side, key=natural_key) for side in groups[shape])
        if not sources:
            continue
        if len(targets) != len(sources):
            raise BuildError(
                f"{where}: mapping by-shape is ambiguous for shape {list(shape)}:"
                f" {len(targets)} target tensors ({', '.join(targets[:3])}) and"
                f" {len(sources)} in {source_label} ({', '.join(sources[:3])});"
                " use mapping by-name"
            )
        pairs.update(zip(targets, sources, strict=True))


def plan(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    rule: str,
    where: str = "strategy",
    source_label: str = "the source",
) -> TensorMap:
    """Pair target tensors with source tensors under `rule`; raise BuildError on a conflict."""
    if rule not in RULES:
        raise BuildError(f"{where}: unknown mapping {rule!r}; use one of {', '.join(RULES)}")
    pairs: dict[str, str] = {}
    if rule == "exact":
        for name, tensor in target.items():
            if name not in source:
                raise BuildError(
                    f"{where}: mapping exact: target tensor {name}"
                    f" {_shape(tensor)} has no counterpart in {source_label}"
                )
            if _shape(source[name]) != _shape(tensor):
                raise BuildError(
                    f"{where}: mapping exact: shape mismatch for {name}:"
                    f" target {_shape(tensor)}, {source_label}"
                    f" {_shape(source[name])}; use mapping by-name or by-shape"
                )
            pairs[name] = name
        extra = [n for n in source if n not in target]
        if extra:
            raise BuildError(
                f"{where}: mapping exact: {source_label} tensor {extra[0]}"
                f" {_shape(source[extra[0]])} has no counterpart in the target"
            )
    else:
        for name, tensor in target.items():
            if name in source and _shape(source[name]) == _shape(tensor):
                pairs[name] = name
        if rule == "by-shape":
            _by_shape(source, target, pairs, where, source_label)
    used = set(pairs.values())
    return TensorMap(rule, pairs, [n for n in source if n not in used])


def transfer(
    module: nn.Module,
    source: Mapping[str, torch.Tensor],
    mapping: TensorMap,
    reinit: Collection[str] = (),
) -> None:
    """Copy mapped source tensors into `module`, except those named in `reinit`."""
    state = module.state_dict()
    with torch.no_grad():
        for name, src in mapping.pairs.items():
            if name not in reinit:
                state[name].copy_(source[src].to(dtype=state[name].dtype))


def held_in_eval(module: nn.Module) -> set[str]:
    """Names of the modules that have parameters of their own, all of them frozen: training
    holds them in eval mode (`strategy.hold_in_eval`), so their buffers stay as mapped."""
    held = set()
    for name, sub in module.named_modules():
        own = list(sub.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            held.add(name)
    return held


TENSOR_KEYS = ("name", "kind", "shape", "dtype", "origin", "frozen", "source_name")
"""The keys of a row of the architecture's tensors, in the order builds write them."""


def tensor_row(
    name: str,
    kind: str,
    shape: Sequence[int],
    dtype: str,
    origin: str,
    frozen: bool,
    source_name: str | None,
) -> Tensor:
    """One tensor of the architecture as a build records it (`source_name` null where no
    source tensor fed it)."""
    return Tensor(
        keys=TENSOR_KEYS,
        name=name,
        kind=kind,
        shape=tuple(int(d) for d in shape),
        dtype=dtype,
        origin=origin,
        frozen=frozen,
        source_name=source_name,
    )


def report(
    module: nn.Module,
    mapping: TensorMap | None,
    reinit: Collection[str] = (),
) -> tuple[list[Tensor], list[str]]:
    """Per-tensor rows (name, kind, shape, dtype, origin, frozen, source_name), unused sources.

    A parameter is frozen when it does not train; a buffer (batch-norm statistics) when its
    module is held in eval mode during training (`held_in_eval`).
    """
    params = dict(module.named_parameters())
    held = held_in_eval(module)
    pairs = mapping.pairs if mapping else {}
    rows: list[Tensor] = []
    for name, tensor in module.state_dict().items():
        if name in params:
            kind, frozen = "parameter", not params[name].requires_grad
        else:
            kind, frozen = "buffer", name.rpartition(".")[0] in held
        src = pairs.get(name)
        if src is None:
            origin = "new"
        elif name in reinit:
            origin = "reinitialized"
        else:
            origin = "transferred"
        dtype = str(tensor.dtype).replace("torch.", "")
        rows.append(tensor_row(name, kind, _shape(tensor), dtype, origin, frozen, src))
    unused = list(mapping.unused) if mapping else []
    # a source tensor whose target was re-initialised was left out too
    unused += [pairs[n] for n in pairs if n in reinit]
    return rows, sorted(set(unused))
