"""Formatting shared by the text and HTML forms of a model report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stemma.registry.publish._reportdoc import CurvePoint, LineageEntry
from stemma.registry.records.manifest import Check, Gate
from stemma.registry.rules import status

# Why a model is stale, in words (the reasons of `status.staleness`).
STALE_WHY = {
    status.SPEC_CHANGED: "its spec changed since the build",
    status.SOURCE_CHANGED: "its source model was rebuilt since the build",
    status.DATA_CHANGED: "a dataset it was built from was rebuilt or is gone since the build",
    status.LOCK_CHANGED: "its weights are not the ones its dvc.lock records",
}


def fmt(value: Any) -> str:
    """A value as a short string: 4 decimals for floats, yes/no, '-' for None."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if value is None:
        return "-"
    return str(value)


def main_metric(curve: Sequence[CurvePoint]) -> str:
    """The main metric a training curve records (accuracy, r2 or map)."""
    keys = [k for k in curve[0].keys if k.startswith("eval_") and k != "eval_loss"] if curve else []
    return keys[0][len("eval_") :] if keys else "accuracy"


def lineage_line(entry: LineageEntry) -> str:
    """One lineage entry: name, short id, and its link to its parent."""
    link = ""
    if entry.source:
        stale = ", stale" if entry.link_stale else ""
        relation = "finetune" if entry.relation is None else entry.relation
        link = f"  <- {relation} of {entry.source}{stale}"
    return f"{entry.name} {entry.short_id}{link}"


def verdict(
    gates: Sequence[Gate],
    checks: Mapping[str, Check],
    stale: str | None,
    lineage: Sequence[LineageEntry],
) -> tuple[bool, list[str]]:
    """Whether the model passes (gates, checks, freshness) and, each in one line, why not."""
    reasons: list[str] = []
    for gate in gates:
        if not gate.passed:
            reasons.append(
                f"gate {gate.metric} {gate.op} {gate.threshold} failed (value {fmt(gate.value)})"
            )
    for name, result in sorted(checks.items()):
        if not result.passed:
            first = (result.violations or ("",))[0]
            reasons.append(f"check {name} failed" + (f": {first}" if first else ""))
    if stale:
        reasons.append(f"stale: {STALE_WHY.get(stale, stale)}; run `dvc repro`")
    for entry in lineage[1:]:
        if not entry.built:
            reasons.append(f"ancestor {entry.name} is not built")
        elif entry.source and entry.link_stale:
            reasons.append(f"stale ancestor: {entry.name} was built from an older {entry.source}")
    return not reasons, reasons
