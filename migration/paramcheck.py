"""Parameter drift between a source's and a target's weights, tensor by tensor.

For every tensor the target shares with its source (same name, or the name a mapping gives,
and the same shape) the check records the relative change ``||t - s|| / ||s||``. Frozen
tensors must be bit-for-bit equal to the source; a trainable tensor that barely moved is a
warning (a learning rate of zero, a wrong optimizer group), not a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from stemma.registry.records.manifest import Check

DEFAULT_MIN_RELATIVE_CHANGE = 1e-8
"""A trainable tensor whose relative change is below this did not move (a warning)."""
_DECIMALS = 6  # figures are rounded so identical rebuilds write identical manifests


@dataclass(frozen=True)
class ParameterCheck:
    """The parameter check's result: verdict, figures, the tensors that changed though
    frozen, did not move though trainable, or could not be compared, thresholds, violations."""

    passed: bool
    figures: Mapping[str, Any]
    frozen_changed: list[str]
    not_moved: list[str]
    skipped: list[str]
    thresholds: Mapping[str, float | None]
    violations: list[str]

    def record(self, warnings: list[str], inputs: Mapping[str, Any]) -> Check:
        """The manifest's `checks.parameters`, with the build's `warnings` and `inputs`."""
        return Check.of(
            self.passed,
            extra={
                "figures": self.figures,
                "frozen_changed": self.frozen_changed,
                "not_moved": self.not_moved,
                "skipped": self.skipped,
                "thresholds": self.thresholds,
                "violations": self.violations,
                "warnings": warnings,
                "inputs": inputs,
            },
        )


def relative_change(source: torch.Tensor, target: torch.Tensor) -> float:
    """``||t - s|| / ||s||`` in float64; with ``||s|| = 0`` the denominator is ``||t||``.

    So a zero source tensor (a bias initialised to zero) that moved counts as fully changed,
    1.0, and one that stayed zero counts as 0.0. NaN when the target is not finite.
    """
    s = source.detach().to("cpu", torch.float64)
    t = target.detach().to("cpu", torch.float64)
    change = float(torch.linalg.vector_norm(t - s))
    scale = float(torch.linalg.vector_norm(s))
    if scale == 0.0:
        scale = float(torch.linalg.vector_norm(t))
    if scale == 0.0 or not torch.isfinite(t).all():
        return 0.0 if change == 0.0 else float("nan")
    return change / scale


def _pairs(
    source_state: Mapping[str, torch.Tensor],
    target_state: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str] | None,
) -> tuple[dict[str, str], list[str]]:
    """Comparable target -> source names, and the target names that cannot be compared."""
    candidates = dict(mapping) if mapping is not None else {name: name for name in target_state}
    pairs: dict[str, str] = {}
    skipped: list[str] = []
    for target_name in sorted(target_state):
        source_name = candidates.get(target_name)
        if (
            source_name is None
            or source_name not in source_state
            or tuple(source_state[source_name].shape) != tuple(target_state[target_name].shape)
        ):
            skipped.append(target_name)
        else:
            pairs[target_name] = source_name
    return pairs, skipped


def parameter_check(
    source_state: Mapping[str, torch.Tensor],
    target_state: Mapping[str, torch.Tensor],
    frozen: set[str] | frozenset[str],
    mapping: Mapping[str, str] | None = None,
    *,
    max_relative_change: float | None = None,
    min_relative_change: float = DEFAULT_MIN_RELATIVE_CHANGE,
) -> ParameterCheck:
    """Per-tensor relative change, frozen tensors unchanged bit for bit, unmoved ones warned.

    `mapping` maps target names to source names (the transfer report's pairs); without it a
    target tensor is compared with the source tensor of the same name. Pairs whose shapes
    differ and tensors without a counterpart are listed under `skipped`. Fails when a frozen
    tensor differs from its source (``torch.equal``: same dtype and every element equal), when
    a frozen name has no source counterpart, when a target tensor is not finite, or when a
    trainable tensor's relative change exceeds `max_relative_change` (if given).
    `mean_relative_change` averages over every compared tensor, frozen ones included.
    """
    pairs, skipped = _pairs(source_state, target_state, mapping)
    per_tensor: dict[str, float | None] = {}
    frozen_changed: list[str] = []
    not_moved: list[str] = []
    violations: list[str] = []
    for target_name, source_name in pairs.items():
        source, target = source_state[source_name], target_state[target_name]
        change = relative_change(source, target)
        finite = change == change  # NaN marks a target with NaN or infinite values
        per_tensor[target_name] = round(change, _DECIMALS) if finite else None
        if not finite:
            violations.append(f"{target_name}: NaN or infinite values")
        if target_name in frozen:
            # torch.equal alone promotes dtypes; bit for bit also means the same dtype
            if source.dtype != target.dtype or not torch.equal(
                source.detach().cpu(), target.detach().cpu()
            ):
                frozen_changed.append(target_name)
        elif finite and change < min_relative_change:
            not_moved.append(target_name)
        elif finite and max_relative_change is not None and change > max_relative_change:
            violations.append(
                f"{target_name}: relative change {change:.6g} > {max_relative_change}"
            )
    if frozen_changed:
        violations.append(f"frozen tensors changed: {', '.join(frozen_changed)}")
    unpaired = sorted(name for name in frozen if name not in pairs)
    if unpaired:
        violations.append(f"frozen tensors without a source counterpart: {', '.join(unpaired)}")
    values = [v for v in per_tensor.values() if v is not None]
    figures = {
        "per_tensor": per_tensor,
        "max_relative_change": round(max(values), _DECIMALS) if values else 0.0,
        "mean_relative_change": round(sum(values) / len(values), _DECIMALS) if values else 0.0,
        "compared": len(pairs),
    }
    thresholds = {
        "max_relative_change": max_relative_change,
        "min_relative_change": min_relative_change,
    }
    return ParameterCheck(
        not violations, figures, frozen_changed, not_moved, skipped, thresholds, violations
    )
