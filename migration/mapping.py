"""Map a source state dict onto a target module and report every tensor's origin.

Rules: `exact` (every name and shape must match), `by-name` (copy where name and shape match),
`by-shape` (by name first, then pair the remaining tensors in order by identical shape).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from stemma.registry.errors import BuildError
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
            used = set(pairs.values())
            free = [n for n in source if n not in used]
            for name, tensor in target.items():
                if name in pairs:
                    continue
                match = next((s for s in free if _shape(source[s]) == _shape(tensor)), None)
                if match is not None:
                    pairs[name] = match
                    free.remove(match)
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


def report(
    module: nn.Module,
    mapping: TensorMap | None,
    reinit: Collection[str] = (),
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-tensor rows (name, shape, dtype, origin, frozen, source_name) and unused sources."""
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    pairs = mapping.pairs if mapping else {}
    rows: list[dict[str, Any]] = []
    for name, tensor in module.state_dict().items():
        src = pairs.get(name)
        if src is None:
            origin = "new"
        elif name in reinit:
            origin = "reinitialized"
        else:
            origin = "transferred"
        rows.append(
            {
                "name": name,
                "shape": _shape(tensor),
                "dtype": str(tensor.dtype).replace("torch.", ""),
                "origin": origin,
                "frozen": name not in trainable,
                "source_name": src,
            }
        )
    unused = list(mapping.unused) if mapping else []
    # a source tensor whose target was re-initialised was left out too
    unused += [pairs[n] for n in pairs if n in reinit]
    return rows, sorted(set(unused))
