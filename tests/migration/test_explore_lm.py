"""Exploration for text datasets: candidate language models ranked by bits per byte (each with
its own tokenizer), LogME on pooled hidden states for a labelled text dataset, scores that do
not apply listed, and bad input refused with one located error.

One registry is built once for the module: a target corpus (Python's documentation text),
generated text, and three tiny GPT-2 models: one trained on the target's text, one on the
generated text with the same tokenizer, one on the generated text with its own tokenizer.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from stemma.registry import Registry
from stemma.registry.errors import BuildError

pytest.importorskip("transformers")

TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "tiny-bpe"
TRAIN = "{epochs: 2, batch_size: 8, optimizer: adamw, lr: 0.005, seed: 0}"
ARCH = "{model_type: gpt2, n_layer: 2, n_head: 2, n_embd: 32, n_positions: 32, vocab_size: 384}"


def _model(tokenizer: str, data: str) -> str:
    return f"""
architecture: {{family: transformers, config: {ARCH}}}
tokenizer: {tokenizer}
data: {{train: {data}, eval: {data}}}
lm: {{block_size: 32, max_new_tokens: 2}}
training: {TRAIN}
"""


SPECS = {
    "datasets/docs/spec.yaml": "source: text:data/docs.txt\nsplit: {eval: 0.25, seed: 0}\n",
    "datasets/gen/spec.yaml": "source: text:data/gen.txt\nsplit: {eval: 0.25, seed: 0}\n",
    "datasets/labelled/spec.yaml": "source: jsonl:data/labelled.jsonl\n",
    "models/lm-docs/spec.yaml": _model("tokenizers/docs", "docs"),
    "models/lm-gen/spec.yaml": _model("tokenizers/docs", "gen"),
    "models/lm-gen-own/spec.yaml": _model("tokenizers/gen", "gen"),
}


def _docs() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(" ".join(topics[k].split())[:200] for k in sorted(topics)[:32]) + "\n"


def _gen() -> str:
    rng = random.Random(0)
    lines = []
    for _ in range(40):
        lines.append(" ".join(f"{rng.randrange(1000)} {rng.choice('xyzq')}" for _ in range(12)))
    return "\n\n".join(lines) + "\n"


def _labelled() -> str:
    from pydoc_data.topics import topics

    rows = []
    for i, key in enumerate(sorted(topics)[:20]):
        rows.append({"prompt": " ".join(topics[key].split()[:12]), "completion": " doc"})
        rng = random.Random(i)
        numbers = " ".join(str(rng.randrange(99)) for _ in range(8))
        rows.append({"prompt": numbers, "completion": " num"})
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def _gen_tokenizer(folder: Path) -> None:
    """A second byte-level BPE tokenizer, trained on the generated text (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_gen()], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    fast.save_pretrained(str(folder))


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Registry:
    """The registry with its three datasets and three candidate models built."""
    from stemma.migration.build import build_dataset, build_model

    root = tmp_path_factory.mktemp("explore-lm") / "repo"
    shutil.copytree(registry_template, root, symlinks=True)
    reg = Registry.open(root)
    _write(reg.repo_root, "data/docs.txt", _docs())
    _write(reg.repo_root, "data/gen.txt", _gen())
    _write(reg.repo_root, "data/labelled.jsonl", _labelled())
    shutil.copytree(TOKENIZER, reg.repo_root / "tokenizers" / "docs")
    _gen_tokenizer(reg.repo_root / "tokenizers" / "gen")
    for rel, text in SPECS.items():
        _write(reg.root, rel, text)
    reg = Registry.open(root)
    for name in ("docs", "gen", "labelled"):
        build_dataset(reg, name)
    for name in ("lm-docs", "lm-gen", "lm-gen-own"):
        build_model(reg, name)
    return reg


def _ranked(doc: dict[str, Any]) -> list[str]:
    return [row["model"] for row in doc["ranking"]]


def test_the_model_trained_on_the_target_text_ranks_first(built: Registry) -> None:
    from stemma.migration.explore import explore

    doc = explore(built, "docs", "lm-*").to_dict(timings=False)
    assert doc["decided_by"] == "bits_per_byte" and doc["lower_is_better"] == ["bits_per_byte"]
    assert _ranked(doc)[0] == "lm-docs" and doc["selected"] == "lm-docs"
    values = [row["scores"]["bits_per_byte"] for row in doc["ranking"]]
    assert values == sorted(values) and all(0 < v < 16 for v in values)
    # the two tokenizers make different numbers of tokens of the same bytes
    tokens = {row["model"]: row["tokens"] for row in doc["ranking"]}
    assert tokens["lm-docs"] == tokens["lm-gen"] != tokens["lm-gen-own"]
    assert all(list(row) == ["model", "id", "scores", "tokens", "rank"] for row in doc["ranking"])
    assert doc["budget"]["bytes"] <= doc["budget"]["max_bytes"] and "per-token" in doc["note"]
    # on the generated text, the models trained on it come first
    gen = explore(built, "gen", "lm-*").to_dict(timings=False)
    assert _ranked(gen)[-1] == "lm-docs"
    # deterministic: the same bytes again
    assert explore(built, "docs", "lm-*").to_dict(timings=False) == doc


def test_scores_that_do_not_apply_are_listed(built: Registry) -> None:
    from stemma.migration.explore import explore
    from stemma.migration.transferability import SCORES

    plain = explore(built, "docs", "lm-*", scores=tuple(SCORES)).to_dict(timings=False)
    assert plain["scores"] == ["bits_per_byte"]
    assert set(plain["not_applicable"]) == set(SCORES)
    assert "class labels" in plain["not_applicable"]["logme"]
    labelled = explore(built, "labelled", "lm-*", scores=tuple(SCORES)).to_dict(timings=False)
    assert labelled["decided_by"] == "logme"
    assert set(labelled["not_applicable"]) == {"leep", "nce"}
    assert "head" in labelled["not_applicable"]["leep"]
    assert labelled["scores"] == ["bits_per_byte", "logme", "hscore", "knn"]
    for row in labelled["ranking"]:
        assert isinstance(row["scores"]["logme"], float)
    logmes = [row["scores"]["logme"] for row in labelled["ranking"]]
    assert logmes == sorted(logmes, reverse=True)


def test_auto_source_picks_by_bits_per_byte(built: Registry, tmp_path: Path) -> None:
    from stemma.migration.build import build_model
    from stemma.migration.explore import explore_for

    root = tmp_path / "repo"
    shutil.copytree(built.repo_root, root, symlinks=True)
    reg = Registry.open(root)
    _write(
        reg.root,
        "models/lm-auto/spec.yaml",
        """
source: {model: auto, candidates: "lm-*", score: bits_per_byte}
data: {train: docs, eval: docs}
lm: {block_size: 32, max_new_tokens: 2}
training: {epochs: 1, batch_size: 8, optimizer: adamw, lr: 0.001, seed: 0}
""",
    )
    reg = Registry.open(root)
    ranking = explore_for(reg, "lm-auto")
    assert ranking.selected == "lm-docs" and ranking.decided_by == "bits_per_byte"
    exploration = json.loads((reg.model_dir("lm-auto") / "exploration.json").read_text())
    assert exploration == ranking.to_dict(timings=False)
    manifest = build_model(reg, "lm-auto")
    assert manifest["source"]["model"] == "lm-docs"
    assert manifest["exploration"]["selected"] == "lm-docs"


def test_bad_input_is_one_located_error(built: Registry, cli: Any) -> None:
    from stemma.migration.explore import explore

    with pytest.raises(BuildError, match="'leep' does not apply to the text dataset 'docs'"):
        explore(built, "docs", scores=("leep",), decide="leep")
    with pytest.raises(BuildError, match=r"'logme' does not apply.*decide by bits_per_byte"):
        explore(built, "docs", decide="logme")
    with pytest.raises(BuildError, match="unknown score 'perplexity'"):
        explore(built, "docs", scores=("perplexity",))
    with pytest.raises(BuildError, match="has not been built"):
        explore(built, "missing")
    res = cli(["explore", "docs", "--score", "nce"], built.repo_root)
    assert res.code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "'nce' does not apply" in lines[0] and "Traceback" not in res.stderr
    res = cli(["explore", "docs", "--score", "perplexity"], built.repo_root)
    assert res.code == 2
    # a model without a tokenizer or not built is skipped, with why
    _write(built.root, "models/unbuilt/spec.yaml", _model("tokenizers/docs", "docs"))
    try:
        doc = explore(Registry.open(built.repo_root), "docs").to_dict(timings=False)
        assert {"model": "unbuilt", "reason": "not built"} in doc["skipped"]
    finally:
        shutil.rmtree(built.root / "models" / "unbuilt")


def test_cli_renders_the_unit(built: Registry, cli: Any) -> None:
    res = cli(["explore", "docs", "--candidates", "lm-*"], built.repo_root)
    assert res.code == 0, res.stderr
    assert "bits per UTF-8 byte" in res.stdout and "recommended source" in res.stdout
    assert "lowest bits_per_byte" in res.stdout
    res = cli(["explore", "docs", "--json"], built.repo_root)
    assert json.loads(res.stdout)["selected"] == "lm-docs"
