"""The one home of metric gates (`stemma.registry.rules.gates`): its grammar is the schema's,
its comparisons are the ones every build and `stemma verify` record."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from stemma.registry.errors import BuildError
from stemma.registry.rules import gates

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

PIECES = ("", " ", "\t", "\n", ">=", "<=", ">", "<", "==", "=", "!=", "=>")
NUMBERS = ("0.9", "1", "-2", "1e5", "1E-3", "2.5e+1", ".5", "1.", "+1", "1e", "0x1", "nan", "1_0")


def _strings() -> list[str]:
    """Gate-like strings, well formed and not: every op, number and spacing combined."""
    out = []
    for before, op, mid, number, after in itertools.product(
        ("", " ", "\n"), PIECES[4:], ("", " ", "\t"), NUMBERS, ("", " ", "\n", "x", "\n\n")
    ):
        out.append(f"{before}{op}{mid}{number}{after}")
    return [*out, "", " ", ">=", "0.9", ">= 0.9 >= 1"]


def test_the_grammar_is_the_schemas() -> None:
    """defs.json's `gate` pattern (as jsonschema applies it: `re.search`) and `GATE_RE` take
    exactly the same strings."""
    pattern = json.loads((SCHEMAS / "defs.json").read_text())["$defs"]["gate"]["pattern"]
    for text in _strings():
        by_schema = re.search(pattern, text) is not None
        assert by_schema == (gates.GATE_RE.match(text) is not None), repr(text)
        if by_schema:
            op, threshold = gates.parse_gate(text)
            assert op in gates.GATE_OPS and isinstance(threshold, float)
        else:
            with pytest.raises(BuildError, match="invalid gate"):
                gates.parse_gate(text, "models/m/spec.yaml at /gates/accuracy")


def test_the_ops_are_the_manifests() -> None:
    from stemma.registry.records.manifest import GATE_OPS

    doc = json.loads((SCHEMAS / "model-manifest.json").read_text())
    enum = doc["properties"]["gates"]["items"]["properties"]["op"]["enum"]
    assert tuple(enum) == gates.GATE_OPS == tuple(gates.OPS) == GATE_OPS


def test_evaluation() -> None:
    rows = gates.evaluate_gates(
        {"accuracy": ">= 0.9", "loss": "< 0.5", "f1": "> 0", "per_class_accuracy": ">= 0.5"},
        {"accuracy": 0.9, "loss": 0.5},
        {"0": 0.8, "1": 0.4},
    )
    assert rows == [
        {"metric": "accuracy", "op": ">=", "threshold": 0.9, "value": 0.9, "passed": True},
        {"metric": "f1", "op": ">", "threshold": 0.0, "value": None, "passed": False},
        {"metric": "loss", "op": "<", "threshold": 0.5, "value": 0.5, "passed": False},
        {
            "metric": "per_class_accuracy",
            "op": ">=",
            "threshold": 0.5,
            "value": 0.4,
            "passed": False,
        },
    ]
    # `==` allows the rounding of recorded metrics, no more
    assert gates.passes("==", 0.9000004, 0.9)
    assert not gates.passes("==", 0.90001, 0.9)
    assert not gates.passes(">=", None, 0.0)
    assert gates.evaluate_gates({"per_output_r2": ">= 0"}, {}, {}) == [
        gates.gate_row("per_output_r2", ">=", 0.0, None)
    ]
    with pytest.raises(BuildError, match=r"models/m/spec.yaml at /gates/accuracy: invalid gate"):
        gates.evaluate_gates({"accuracy": "at least 0.9"}, {}, display="models/m/spec.yaml")


def test_the_builds_take_the_one_rule() -> None:
    """The torch side rounds metrics to the decimals `==` allows, and its `Gate` records are
    the rows this module evaluates, as JSON."""
    from stemma.migration import gating, tasks
    from stemma.migration.quantize import drop_gate

    assert gates.METRIC_DECIMALS == tasks.DECIMALS
    for spec, metrics, per_class in (
        ({"accuracy": ">= 0.9", "loss": "< 0.5", "f1": "> 0"}, {"accuracy": 0.9, "loss": 1}, None),
        ({"per_class_accuracy": ">= 0.5", "accuracy": "== 0.9"}, {"accuracy": 0.9}, {"0": 0.4}),
        ({"per_output_r2": ">= 0", "r2": "<= -1e-2"}, {"r2": -0.5}, {}),
    ):
        rows = gates.evaluate_gates(spec, metrics, per_class)
        found = gating.gate_records(spec, metrics, per_class)
        assert [g.to_dict() for g in found] == rows
        assert [json.dumps(g.to_dict()) for g in found] == [json.dumps(r) for r in rows]
    for drop, max_drop in ((0.01, 0.05), (0.05, 0.05), (0.2, 0.05)):
        row = gates.gate_row("quantize_drop", "<=", max_drop, drop)
        assert drop_gate(drop, max_drop).to_dict() == row
        assert drop_gate(drop, max_drop).passed is row["passed"]


def test_validate_reports_failed_gates_and_checks(populated: Any) -> None:
    """`validate` reads a manifest's gates and checks through `Manifest`'s typed reads."""
    from factories import dataset_manifest, model_manifest
    from stemma.registry import Registry
    from stemma.registry.check.consistency import FAILED_CHECK, FAILED_GATE, check

    for ds in ("digits-0to4", "digits-5to9"):
        dataset_manifest(populated, ds)
    rows = gates.evaluate_gates({"accuracy": ">= 0.95", "loss": "<= 0.5"}, {"accuracy": 0.9})
    checks = {
        "forgetting": {"passed": False},
        "drift": {"passed": True},
        "parameters": {"passed": True},
    }
    model_manifest(populated, "scratch", gates=rows, checks=checks)
    reg = Registry.open(populated.root)
    manifest = reg.model_manifest("scratch")
    assert manifest is not None
    assert manifest.gates == tuple(gates.GateResult.of(r) for r in rows)
    assert manifest.failed_checks == ("forgetting",)
    found = [(v.code, v.message) for v in check(reg) if v.subject == "model:scratch"]
    assert found == [
        (FAILED_GATE, "gate accuracy >= 0.95 failed (value 0.9)"),
        (FAILED_GATE, "gate loss <= 0.5 failed (value None)"),
        (FAILED_CHECK, "check forgetting failed"),
    ]
