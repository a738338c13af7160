"""A model spec's blocks as typed values: the causal-lm, quantize and merge blocks of the
language-model example's specs, read through `ModelSpec` (the registry's own loader)."""

from __future__ import annotations

from pathlib import Path

from stemma.registry import Registry
from stemma.registry.records.core import LmSettings, MergeSettings, ModelSpec, QuantizeSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm"


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
