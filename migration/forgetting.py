"""Forgetting: how much of the source task's main metric (accuracy, r2, map) a transfer lost."""

from __future__ import annotations

import math
from typing import Any

from stemma.registry.errors import BuildError
from stemma.registry.records.manifest import Check

DEFAULT_MAX_DROP = 0.10
"""Default gate: the source-task accuracy may fall by at most 10% of its value before transfer."""
_DECIMALS = 6  # figures are rounded so identical rebuilds write identical manifests


def forgetting_figures(
    before_accuracy: float,
    after_accuracy: float,
    max_drop: float = DEFAULT_MAX_DROP,
    metric: str = "accuracy",
) -> Check:
    """Relative drop ``(before - after) / before`` of the source task's `metric`, gated by
    `max_drop`.

    With ``before <= 0`` the drop is 0 (nothing to forget). A negative drop means the source
    task improved. Values must be finite and at most 1, and at least 0 except for r2.
    """
    low = -math.inf if metric == "r2" else 0.0
    for label, value in (("before", before_accuracy), ("after", after_accuracy)):
        if not (math.isfinite(value) and low <= value <= 1.0):
            span = "at most 1" if metric == "r2" else "in [0, 1]"
            raise BuildError(f"forgetting check: {metric} {label} must be {span}, got {value}")
    if not (math.isfinite(max_drop) and max_drop >= 0.0):
        raise BuildError(f"forgetting check: max_drop must be a number >= 0, got {max_drop}")
    drop = (before_accuracy - after_accuracy) / before_accuracy if before_accuracy > 0 else 0.0
    passed = drop <= max_drop
    figures: dict[str, Any] = {
        "before": round(float(before_accuracy), _DECIMALS),
        "after": round(float(after_accuracy), _DECIMALS),
        "relative_drop": round(drop, _DECIMALS),
    }
    if metric != "accuracy":  # named only where it is not accuracy: older ids stay
        figures["metric"] = metric
    violations = [] if passed else [f"relative {metric} drop {drop:.4f} > {max_drop}"]
    return Check.of(
        passed,
        extra={"figures": figures, "thresholds": {"max_drop": max_drop}, "violations": violations},
    )
