"""A model spec's blocks as typed values: the causal-lm, quantize and merge blocks of the
language-model example's specs and the declared checks of the zoo's, read through `ModelSpec`
(the registry's own loader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stemma.registry import Registry
from stemma.registry.records.checkspec import (
    DeclaredChecks,
    DriftSpec,
    ForgettingSpec,
    ParametersSpec,
)
from stemma.registry.records.core import LmSettings, MergeSettings, ModelSpec, QuantizeSettings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "llm"


def test_a_causal_lm_spec_names_its_tokenizer_and_lm_settings() -> None:
    spec = Registry.open(EXAMPLE).model_spec("lm-base")
    assert spec.tokenizer == "tokenizer"
    assert spec.lm == LmSettings(
        block_size=64, prompts=("The import statement", "A class definition"), max_new_tokens=16
    )
    assert spec.quantize is None and spec.source is None


def test_a_spec_without_an_lm_block_leaves_each_setting_to_the_build() -> None:
    spec = Registry.open(EXAMPLE).model_spec("lm-int8")
    assert spec.tokenizer is None  # inherited from the source
    assert spec.lm == LmSettings(None, None, None)
    assert spec.quantize == QuantizeSettings(method="int8_weight_only", max_drop=0.02)
    assert spec.source is not None and spec.source.relation == "quantized"
    assert not spec.source.allow_failed_gates and spec.source.models == ()


def test_a_merge_spec_names_its_models_base_and_method() -> None:
    spec = Registry.open(EXAMPLE).model_spec("lm-merged")
    src = spec.source
    assert src is not None
    assert (src.model, src.relation) == ("lm-builtins", "merge")  # the first parent
    assert src.models == ("lm-builtins", "lm-topics") and src.base == "lm-base"
    # a number stays a number, an array of numbers becomes a tuple; unsaid parameters are None
    assert src.merge == MergeSettings(method="ties", weight=(1.0, 1.0), density=0.5)
    lora = Registry.open(EXAMPLE).model_spec("lm-lora-merged").source
    assert lora is not None and lora.models == ("lm-lora",)
    assert lora.base is None and lora.merge is None  # an adapter merged into its base


def test_merge_parameters_keep_the_spec_s_names_and_values() -> None:
    doc = {
        "source": {
            "relation": "merge",
            "models": ["a", "b"],
            "merge": {"method": "task_arithmetic", "lambda": 0.5, "normalize": True, "t": 0.25},
            "base": "c",
        },
        "data": {"train": "d"},
    }
    merge = ModelSpec.from_dict("m", doc).source
    assert merge is not None and merge.merge is not None
    assert (merge.merge.lam, merge.merge.normalize, merge.merge.t) == (0.5, True, 0.25)
    assert merge.merge.weight is None and merge.merge.density is None


def test_allow_failed_gates_is_read_from_the_source_block() -> None:
    doc = {"source": {"model": "base", "allow_failed_gates": True}, "data": {"train": "d"}}
    src = ModelSpec.from_dict("m", doc).source
    assert src is not None and src.allow_failed_gates and src.relation == "finetune"


def _checks(block: dict[str, Any]) -> DeclaredChecks:
    return ModelSpec.from_dict("m", {"data": {"train": "d"}, "checks": block}).checks


def test_a_spec_without_checks_declares_none() -> None:
    checks = ModelSpec.from_dict("m", {"data": {"train": "d"}}).checks
    assert checks == DeclaredChecks(forgetting=None, drift=None, parameters=None)
    assert checks.names == () and checks.datasets == () and checks.to_dict() == {}
    assert _checks({}) == checks


def test_an_empty_check_block_declares_the_check_with_every_setting_left_to_the_build() -> None:
    checks = _checks({"drift": {}, "parameters": {}})
    assert checks.forgetting is None
    assert checks.drift == DriftSpec(None, None, None, None, None)
    assert checks.parameters == ParametersSpec(None, None)
    assert checks.names == ("drift", "parameters")
    assert checks.datasets == ()  # drift reads the model's training data: no dataset named
    assert checks.to_dict() == {"drift": {}, "parameters": {}}


def test_every_declared_setting_is_read_and_written_back_as_given() -> None:
    block = {
        "parameters": {"min_relative_change": 1e-6, "max_relative_change": 2},
        "drift": {
            "permutations": 20,
            "data": "shifted",
            "max_mahalanobis": 3,
            "max_outlier_share": 0.2,
            "min_mmd_pvalue": 0.05,
        },
        "forgetting": {"max_drop": 0.25, "data": "old"},
    }
    checks = _checks(block)
    assert checks.forgetting == ForgettingSpec(data="old", max_drop=0.25)
    assert checks.drift == DriftSpec("shifted", 3, 0.2, 0.05, 20)
    assert checks.parameters == ParametersSpec(max_relative_change=2, min_relative_change=1e-6)
    # an integer threshold stays an integer: the build records thresholds as the spec says them
    assert checks.drift is not None and type(checks.drift.max_mahalanobis) is int
    assert checks.to_dict() == block
    assert DeclaredChecks.from_dict(checks.to_dict()) == checks
    assert checks.names == ("forgetting", "drift", "parameters")  # the schema's order
    assert checks.datasets == (("forgetting", "old"), ("drift", "shifted"))
    spec = ModelSpec.from_dict("m", {"data": {"train": "d"}, "checks": block})
    assert spec.dataset_refs() == {
        "/data/train": "d",
        "/checks/forgetting/data": "old",
        "/checks/drift/data": "shifted",
    }


def test_the_zoo_s_declared_checks() -> None:
    reg = Registry.open(REPO)
    ft = reg.model_spec("digits-5to9-ft").checks
    assert ft == DeclaredChecks(
        forgetting=ForgettingSpec(data="digits-0to4", max_drop=0.10), drift=DriftSpec()
    )
    assert ft.datasets == (("forgetting", "digits-0to4"),)
    assert reg.model_spec("digits-from-mnist").checks.names == ("drift",)
    assert reg.model_spec("digits-base").checks == DeclaredChecks()


def test_lora_is_the_strategy_s_mode() -> None:
    def spec(strategy: dict[str, object] | None) -> ModelSpec:
        doc: dict[str, object] = {"data": {"train": "d"}}
        if strategy is not None:
            doc["strategy"] = strategy
        return ModelSpec.from_dict("m", doc)

    assert spec({"mode": "lora", "lora": {"r": 4}}).lora is True
    assert [spec(s).lora for s in (None, {}, {"mode": "finetune"}, {"mode": "LoRA"})] == [
        False,
        False,
        False,
        False,
    ]
