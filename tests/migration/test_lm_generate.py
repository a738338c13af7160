"""Greedy sample generations fit the model's position table, whatever the prompt's length."""

from __future__ import annotations

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from stemma.migration import lm_train  # noqa: E402

TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "tiny-bpe"


def test_a_prompt_longer_than_the_position_table_keeps_its_last_tokens() -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(TOKENIZER)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=len(tokenizer)
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    prompt = "the quick brown fox jumps over the lazy dog " * 8  # far past 16 tokens
    assert len(tokenizer(prompt)["input_ids"]) > 16
    out = lm_train.generate(model, tokenizer, [prompt, "the"], max_new_tokens=32, seed=0)
    assert [o.prompt for o in out] == [prompt, "the"]
    assert all(isinstance(o.output, str) for o in out)
    assert [list(o.to_dict()) for o in out] == [["prompt", "output"]] * 2
