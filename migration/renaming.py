"""Tensor-name prefixes renamed before a mapping (`strategy.rename`).

A classifier's backbone sits under other names in a detector: torchvision's
`mobilenet_v3_large` keeps it in `features.*`, `fasterrcnn_mobilenet_v3_large_fpn` in
`backbone.body.*`. Renaming the source's names first lets the ordinary rules (by-name,
by-shape) pair them; the pairs and unused names recorded are the source's own names.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .mapping import TensorMap, plan


def rename(name: str, prefixes: Mapping[str, str]) -> str:
    """`name` with its longest matching prefix replaced (unchanged when none matches)."""
    best = max((p for p in prefixes if name.startswith(p)), key=len, default=None)
    return name if best is None else prefixes[best] + name[len(best) :]


def derived_prefixes(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, str]:
    """The rename a torchvision classifier -> detector transfer needs, when one is plain:
    the source's `features.` onto the target's `backbone.body.` (Faster R-CNN, RetinaNet on
    MobileNet) or `backbone.features.` when those names exist; {} otherwise."""
    if not any(n.startswith("features.") for n in source) or any(
        n.startswith("features.") for n in target
    ):
        return {}
    for prefix in ("backbone.body.", "backbone.features."):
        if any(rename(n, {"features.": prefix}) in target for n in source):
            return {"features.": prefix}
    return {}


def plan_renamed(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    rule: str,
    prefixes: Mapping[str, str],
    where: str = "strategy",
    source_label: str = "the source",
) -> TensorMap:
    """`mapping.plan` over the renamed source, reported with the source's own names."""
    if not prefixes:
        return plan(source, target, rule, where, source_label)
    back = {rename(n, prefixes): n for n in source}
    renamed = {new: source[old] for new, old in back.items()}
    found = plan(renamed, target, rule, where, source_label)
    pairs = {t: back[s] for t, s in found.pairs.items()}
    return TensorMap(found.rule, pairs, [back[n] for n in found.unused])
