"""Metric gates: the one grammar and the one evaluation (plain data, no torch).

A spec's `gates` block maps a metric to a comparison such as `'>= 0.90'`; the build evaluates
each against the metrics it produced and records a row {metric, op, threshold, value, passed}
in the manifest's `gates`. Every build (`migration`'s model manifest, merge, causal-lm,
quantize) and `stemma verify`, which evaluates the recorded metrics again, call
`evaluate_gates` here; a quantization's drop gate is made by `gate_row`, so it passes by the
same comparison. The model spec schema's `defs.json#/$defs/gate` pattern is this grammar for
files, and the manifest schema's `op` enum is `GATE_OPS`: tests compare them with this module.
Which metrics a gate of a task may name is `taskspec.gate_names`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from stemma.registry.errors import BuildError
from stemma.registry.rules.layout import SPEC_FILE
from stemma.registry.rules.taskspec import PER_CLASS_GATE

T = TypeVar("T")

GATE_OPS = (">=", "<=", ">", "<", "==")
GATE_RE = re.compile(r"^\s*(>=|<=|>|<|==)\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)\s*$")
METRIC_DECIMALS = 6
"""Metrics are recorded rounded to this many decimals (`migration.tasks.DECIMALS`): `==`
allows that much difference, so a gate on a recorded metric says what it said at the build."""

OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">=": lambda v, t: v >= t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    "<": lambda v, t: v < t,
    "==": lambda v, t: math.isclose(v, t, rel_tol=0.0, abs_tol=10.0**-METRIC_DECIMALS),
}
PER_CLASS_GATES = frozenset(g for g in PER_CLASS_GATE.values() if g)
"""Gates on the worst class (or output) of the per-class figures, for every task."""


@dataclass(frozen=True)
class GateResult:
    """One row of a manifest's `gates`, as light readers (`validate`) need it typed."""

    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> GateResult:
        """Read a schema-valid manifest row (`gate_row`'s keys); numbers as the file has them."""
        return cls(row["metric"], row["op"], row["threshold"], row["value"], row["passed"])


def parse_gate(text: str, where: str = "gates") -> tuple[str, float]:
    """Parse a comparison such as '>= 0.90' into (op, threshold); `where` locates an error."""
    m = GATE_RE.match(str(text))
    if not m:
        raise BuildError(f"{where}: invalid gate {text!r}; write e.g. '>= 0.90'")
    return m.group(1), float(m.group(2))


def passes(op: str, value: float | None, threshold: float) -> bool:
    """Whether `value` passes the comparison; a metric the build did not produce (None) fails."""
    return value is not None and OPS[op](value, threshold)


def gate_row(metric: str, op: str, threshold: float, value: float | None) -> dict[str, Any]:
    """The manifest's row for one evaluated gate."""
    return {
        "metric": metric,
        "op": op,
        "threshold": threshold,
        "value": value,
        "passed": passes(op, value, threshold),
    }


def evaluate_gates(
    gates: Mapping[str, str],
    metrics: Mapping[str, float],
    per_class: Mapping[str, float] | None = None,
    display: str = SPEC_FILE,
) -> list[dict[str, Any]]:
    """Rows {metric, op, threshold, value, passed} (`gate_row`), as `evaluated` finds them."""
    return evaluated(gate_row, gates, metrics, per_class, display)


def evaluated(
    row: Callable[[str, str, float, float | None], T],
    gates: Mapping[str, str],
    metrics: Mapping[str, float],
    per_class: Mapping[str, float] | None = None,
    display: str = SPEC_FILE,
) -> list[T]:
    """`row(metric, op, threshold, value)` of each gate evaluated, by metric name; a per-class
    gate takes the worst class. A gate on a metric the build did not produce has value None
    and fails. `display` names the spec in an error about a gate that does not parse."""
    rows = []
    for metric in sorted(gates):
        op, threshold = parse_gate(gates[metric], f"{display} at /gates/{metric}")
        value: float | None
        if metric in PER_CLASS_GATES:
            value = min(per_class.values()) if per_class else None
        else:
            value = float(metrics[metric]) if metric in metrics else None
        rows.append(row(metric, op, threshold, value))
    return rows
