"""Metric gates as the manifest's `Gate` records (no torch: `stemma verify` takes them too).

The grammar and the comparison are `stemma.registry.rules.gates` (`parse_gate`, `passes`, the
per-class gates); this module makes each evaluated gate a typed record, whose `to_dict()` is
the row `rules.gates.gate_row` writes (tests compare the two).
"""

from __future__ import annotations

from collections.abc import Mapping

from stemma.registry.records.manifest import Gate
from stemma.registry.rules.gates import PER_CLASS_GATES, parse_gate, passes
from stemma.registry.rules.layout import SPEC_FILE


def gate_record(metric: str, op: str, threshold: float, value: float | None) -> Gate:
    """One evaluated gate: `value` (None: the build did not produce the metric) held to
    `op threshold`."""
    return Gate.of(metric, op, threshold, value, passes(op, value, threshold))


def gate_records(
    gates: Mapping[str, str],
    metrics: Mapping[str, float],
    per_class: Mapping[str, float] | None = None,
    display: str = SPEC_FILE,
) -> tuple[Gate, ...]:
    """The spec's gates evaluated, by metric name; a per-class gate takes the worst class. A
    gate on a metric the build did not produce records value None and fails. `display` names
    the spec in an error about a gate that does not parse."""
    found = []
    for metric in sorted(gates):
        op, threshold = parse_gate(gates[metric], f"{display} at /gates/{metric}")
        value: float | None
        if metric in PER_CLASS_GATES:
            value = min(per_class.values()) if per_class else None
        else:
            value = float(metrics[metric]) if metric in metrics else None
        found.append(gate_record(metric, op, threshold, value))
    return tuple(found)
