"""Metric gates as the manifest's `Gate` records (no torch: `stemma verify` takes them too).

The grammar and the comparison are `stemma.registry.rules.gates` (`parse_gate`, `passes`, the
per-class gates); this module makes each evaluated gate a typed record, whose `to_dict()` is
the row `rules.gates.gate_row` writes (tests compare the two).
"""

from __future__ import annotations

from collections.abc import Mapping

from stemma.registry.records.manifest import Gate
from stemma.registry.rules.gates import evaluated, passes
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
    """The spec's gates evaluated as records (`rules.gates.evaluated`: by metric name, a
    per-class gate on the worst class, a metric the build did not produce fails)."""
    return tuple(evaluated(gate_record, gates, metrics, per_class, display))
