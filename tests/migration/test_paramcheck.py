"""Parameter drift between source and target weights, and forgetting figures."""

from __future__ import annotations

import json
import math

import pytest
import torch
from stemma.migration.forgetting import DEFAULT_MAX_DROP, forgetting_figures
from stemma.migration.paramcheck import (
    DEFAULT_MIN_RELATIVE_CHANGE,
    parameter_check,
    relative_change,
)
from stemma.registry.errors import BuildError


def states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A tiny MLP's source weights and a target that trained all but `body.0`."""
    gen = torch.Generator().manual_seed(0)
    source = {
        "body.0.weight": torch.randn(4, 3, generator=gen),
        "body.0.bias": torch.randn(4, generator=gen),
        "body.2.weight": torch.randn(2, 4, generator=gen),
        "body.2.bias": torch.zeros(2),
        "head.weight": torch.randn(5, 2, generator=gen),
    }
    target = {name: tensor.clone() for name, tensor in source.items()}
    target["body.2.weight"] += 0.1 * torch.randn(2, 4, generator=gen)
    target["body.2.bias"] += 0.5
    target["head.weight"] = torch.randn(3, 2, generator=gen)  # new head, other shape
    return source, target


FROZEN = {"body.0.weight", "body.0.bias"}


def test_relative_change_on_a_hand_example() -> None:
    source = torch.tensor([3.0, 4.0])  # norm 5
    target = torch.tensor([3.0, 7.0])  # difference (0, 3)
    assert relative_change(source, target) == pytest.approx(0.6, abs=1e-15)
    assert relative_change(torch.zeros(3), torch.tensor([0.0, 2.0, 0.0])) == 1.0
    assert relative_change(torch.zeros(3), torch.zeros(3)) == 0.0
    assert math.isnan(relative_change(source, torch.tensor([math.nan, 1.0])))
    # computed in float64 whatever the stored dtype
    assert relative_change(source.half(), target.half()) == pytest.approx(0.6, abs=1e-15)


def test_clean_transfer_passes_with_exact_figures() -> None:
    source, target = states()
    result = parameter_check(source, target, FROZEN)
    assert result.passed and result.violations == []
    per = result.figures["per_tensor"]
    assert set(per) == {"body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}
    assert per["body.0.weight"] == 0.0 and per["body.2.bias"] == 1.0  # zero source: 1.0
    expected = float((target["body.2.weight"] - source["body.2.weight"]).norm())
    expected /= float(source["body.2.weight"].norm())
    assert per["body.2.weight"] == round(expected, 6)
    assert result.figures["max_relative_change"] == 1.0
    assert result.figures["mean_relative_change"] == round(sum(per.values()) / 4, 6)
    assert result.figures["compared"] == 4
    assert result.skipped == ["head.weight"]  # shapes differ: nothing to compare
    assert result.frozen_changed == [] and result.not_moved == []
    assert result.thresholds == {
        "max_relative_change": None,
        "min_relative_change": DEFAULT_MIN_RELATIVE_CHANGE,
    }
    block = result.record(["a warning"], {"frozen": []}).to_dict()  # checks.parameters
    assert list(block) == [
        "passed",
        "figures",
        "frozen_changed",
        "not_moved",
        "skipped",
        "thresholds",
        "violations",
        "warnings",
        "inputs",
    ]
    assert block["warnings"] == ["a warning"] and block["figures"] == result.figures
    json.dumps(block, allow_nan=False)


def test_one_changed_element_of_a_frozen_tensor_fails() -> None:
    source, target = states()
    target["body.0.weight"][1, 2] = torch.nextafter(
        target["body.0.weight"][1, 2], torch.tensor(math.inf)
    )  # the smallest possible change
    result = parameter_check(source, target, FROZEN)
    assert not result.passed
    assert result.frozen_changed == ["body.0.weight"]
    assert "body.0.weight" in result.violations[0]
    # a dtype change is not bit-for-bit equality either
    _, target = states()
    target["body.0.bias"] = target["body.0.bias"].double()
    assert parameter_check(source, target, FROZEN).frozen_changed == ["body.0.bias"]


def test_trainable_tensor_that_did_not_move_is_a_warning() -> None:
    source, target = states()
    target["body.2.weight"] = source["body.2.weight"].clone()
    result = parameter_check(source, target, FROZEN)
    assert result.passed  # a warning, not a failure
    assert result.not_moved == ["body.2.weight"]  # frozen ones never count as not moved
    loose = parameter_check(source, target, FROZEN, min_relative_change=0.0)
    assert loose.not_moved == []


def test_max_relative_change_gate() -> None:
    source, target = states()
    result = parameter_check(source, target, FROZEN, max_relative_change=0.5)
    assert not result.passed
    assert result.violations == ["body.2.bias: relative change 1 > 0.5"]
    assert parameter_check(source, target, FROZEN, max_relative_change=1.0).passed


def test_mapping_pairs_renamed_tensors() -> None:
    source, target = states()
    renamed = {f"backbone.{name}": tensor for name, tensor in target.items()}
    mapping = {f"backbone.{name}": name for name in ["body.0.weight", "body.2.weight"]}
    frozen = {"backbone.body.0.weight"}
    result = parameter_check(source, renamed, frozen, mapping)
    assert result.passed
    assert set(result.figures["per_tensor"]) == set(mapping)
    assert "backbone.body.0.bias" in result.skipped
    # without the mapping nothing pairs, and a frozen tensor with no source cannot be verified
    unpaired = parameter_check(source, renamed, frozen)
    assert not unpaired.passed and unpaired.figures["compared"] == 0
    assert "without a source counterpart: backbone.body.0.weight" in unpaired.violations[0]


def test_non_finite_target_fails_and_stays_serialisable() -> None:
    source, target = states()
    target["body.2.weight"][0, 0] = math.nan
    result = parameter_check(source, target, FROZEN)
    assert not result.passed
    assert result.figures["per_tensor"]["body.2.weight"] is None
    assert result.violations == ["body.2.weight: NaN or infinite values"]
    json.dumps(result.record([], {}).to_dict(), allow_nan=False)


def test_forgetting_figures() -> None:
    ok = forgetting_figures(0.95, 0.90)
    assert ok.passed
    assert ok.figures == {"before": 0.95, "after": 0.9, "relative_drop": round(0.05 / 0.95, 6)}
    assert ok.thresholds == {"max_drop": DEFAULT_MAX_DROP} and ok.violations == ()
    assert ok.to_dict() == {  # the manifest's checks.forgetting, before the build's inputs
        "passed": True,
        "figures": ok.figures,
        "thresholds": {"max_drop": DEFAULT_MAX_DROP},
        "violations": [],
    }
    bad = forgetting_figures(0.95, 0.40)
    assert not bad.passed and bad.figures["relative_drop"] == round(0.55 / 0.95, 6)
    assert bad.violations
    assert forgetting_figures(0.5, 0.45, max_drop=0.1).passed  # exactly at the threshold
    assert not forgetting_figures(0.5, 0.449, max_drop=0.1).passed
    assert forgetting_figures(0.0, 0.0).figures["relative_drop"] == 0.0
    assert forgetting_figures(0.8, 0.9).figures["relative_drop"] == -0.125  # improved
    with pytest.raises(BuildError, match="in \\[0, 1\\]"):
        forgetting_figures(95.0, 90.0)
    with pytest.raises(BuildError, match="max_drop"):
        forgetting_figures(0.9, 0.8, max_drop=-1)
