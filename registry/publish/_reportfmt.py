"""Formatting shared by the text and HTML forms of a model report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stemma.registry.records.manifest import Check, Gate, Tensor, Transfer
from stemma.registry.rules import status

# Why a model is stale, in words (the reasons of `status.staleness`).
STALE_WHY = {
    status.SPEC_CHANGED: "its spec changed since the build",
    status.SOURCE_CHANGED: "its source model was rebuilt since the build",
    status.DATA_CHANGED: "a dataset it was built from was rebuilt or is gone since the build",
    status.LOCK_CHANGED: "its weights are not the ones its dvc.lock records",
}


REPORT = "report"  # how errors name a report document (it is built in memory, not read)


def gates(report: Mapping[str, Any]) -> list[Gate]:
    """The report's gates (as the manifest records them), typed."""
    return [Gate.from_dict(g, REPORT, f"/gates/{i}") for i, g in enumerate(report["gates"])]


def checks(report: Mapping[str, Any]) -> dict[str, Check]:
    """The report's check results by check name, typed."""
    return {k: Check.from_dict(v, REPORT, f"/checks/{k}") for k, v in report["checks"].items()}


def tensors(report: Mapping[str, Any]) -> list[Tensor]:
    """The report's tensor rows, typed."""
    return [Tensor.from_dict(t, REPORT, f"/tensors/{i}") for i, t in enumerate(report["tensors"])]


def transfer(report: Mapping[str, Any]) -> Transfer:
    """The report's transfer block, typed (its `counts` tally is in `extra`)."""
    return Transfer.from_dict(report["transfer"], REPORT, "/transfer")


def fmt(value: Any) -> str:
    """A value as a short string: 4 decimals for floats, yes/no, '-' for None."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if value is None:
        return "-"
    return str(value)


def main_metric(curve: Sequence[Mapping[str, Any]]) -> str:
    """The main metric a training curve records (accuracy, r2 or map)."""
    keys = [k for k in curve[0] if k.startswith("eval_") and k != "eval_loss"] if curve else []
    return keys[0][len("eval_") :] if keys else "accuracy"


def lineage_line(entry: Mapping[str, Any]) -> str:
    """One lineage entry: name, short id, and its link to its parent."""
    ident = entry["id"][7:19] if entry.get("id") else "not built"
    link = ""
    if entry.get("source"):
        stale = "" if entry.get("current", True) else ", stale"
        link = f"  <- {entry.get('relation', 'finetune')} of {entry['source']}{stale}"
    return f"{entry['name']} {ident}{link}"


def verdict(report: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Whether the model passes (gates, checks, freshness) and, each in one line, why not."""
    reasons: list[str] = []
    for gate in gates(report):
        if not gate.passed:
            reasons.append(
                f"gate {gate.metric} {gate.op} {gate.threshold} failed (value {fmt(gate.value)})"
            )
    for name, result in sorted(checks(report).items()):
        if not result.passed:
            first = (result.violations or ("",))[0]
            reasons.append(f"check {name} failed" + (f": {first}" if first else ""))
    why = report.get("stale")
    if why:
        reasons.append(f"stale: {STALE_WHY.get(why, why)}; run `dvc repro`")
    for entry in report["lineage"][1:]:
        if not entry.get("built"):
            reasons.append(f"ancestor {entry['name']} is not built")
        elif entry.get("source") and not entry.get("current", True):
            reasons.append(
                f"stale ancestor: {entry['name']} was built from an older {entry['source']}"
            )
    return not reasons, reasons
