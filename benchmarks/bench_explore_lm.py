"""Benchmark exploration for language models: does bits per byte predict real fine-tuning?

Four tiny GPT-2 source models (2 layers, 32 wide), each trained from scratch on a different
text, are ranked on three target text datasets by `stemma explore` (zero-shot bits per byte
of the target's train text, each with its own tokenizer), and every source is also really
fine-tuned on every target (a small learning-rate grid; the best eval loss is the ground
truth, in bits per byte of the eval text). Reported per target and on average: weighted
Kendall tau between -bits per byte and -bits per byte after fine-tuning
(scipy.stats.weightedtau), the top-1 regret (the top-scored source's fine-tuned bits per
byte minus the best one's), and the seconds of scoring against those of fine-tuning.

Sources: docs-a, docs-b (two disjoint halves of Python's pydoc topics), numbers (generated
numbers and letters, with its own BPE tokenizer), words (generated keyword sequences).
Targets: docs-held (pydoc topics neither source saw), code-like (generated `name = value`
lines), keywords (generated keyword sentences). Everything is built in a temporary registry
with the build path a user runs (`build_model`), on the CPU.

    python benchmarks/bench_explore_lm.py [--epochs 3] [--out FILE]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stemma.migration.build import build_dataset, build_model
from stemma.migration.explore import explore
from stemma.migration.transferability import weighted_tau
from stemma.registry import Registry

TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny-bpe"
ARCH = "{model_type: gpt2, n_layer: 2, n_head: 2, n_embd: 32, n_positions: 32, vocab_size: 384}"
LRS = (0.001, 0.003)
KEYWORDS = ["def", "class", "return", "import", "for", "while", "if", "else", "try", "with"]


def _topics() -> list[str]:
    from pydoc_data.topics import topics

    return [" ".join(topics[k].split())[:300] for k in sorted(topics)]


def texts() -> dict[str, str]:
    """name -> the text of every source and target dataset (deterministic)."""
    docs = _topics()
    rng = random.Random(0)
    numbers = [
        " ".join(f"{rng.randrange(1000)} {rng.choice('xyzq')}" for _ in range(14))
        for _ in range(60)
    ]
    words = [" ".join(rng.choice(KEYWORDS) for _ in range(20)) for _ in range(60)]
    code = [
        "\n".join(
            f"{rng.choice('abcdefgh')}{rng.randrange(9)} = {rng.randrange(100)}" for _ in range(6)
        )
        for _ in range(60)
    ]
    sentences = [
        " ".join(f"the {rng.choice(KEYWORDS)} statement runs" for _ in range(5)) for _ in range(60)
    ]
    return {
        "docs-a": "\n\n".join(docs[: len(docs) * 3 // 8]),
        "docs-b": "\n\n".join(docs[len(docs) * 3 // 8 : len(docs) * 6 // 8]),
        "numbers": "\n\n".join(numbers),
        "words": "\n\n".join(words),
        "docs-held": "\n\n".join(docs[len(docs) * 6 // 8 :]),
        "code-like": "\n\n".join(code),
        "keywords": "\n\n".join(sentences),
    }


SOURCES = ("docs-a", "docs-b", "numbers", "words")
TARGETS = ("docs-held", "code-like", "keywords")


def _own_tokenizer(folder: Path, text: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([text], trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(
        str(folder)
    )


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip())


def _spec(training: str, data: str, source: str | None = None, tokenizer: str = "") -> str:
    head = (
        f"source: {{model: {source}, relation: finetune}}\n"
        if source
        else f"architecture: {{family: transformers, config: {ARCH}}}\ntokenizer: {tokenizer}\n"
    )
    return head + (
        f"data: {{train: {data}, eval: {data}}}\n"
        "lm: {block_size: 32, max_new_tokens: 1, prompts: [the]}\n"
        f"training: {training}\n"
    )


def _eval_bits_per_byte(reg: Registry, dataset: str, manifest: dict[str, Any]) -> float:
    """A fine-tune's eval loss per UTF-8 byte, in bits: per-token perplexity would favour a
    tokenizer that cuts the text into more, easier tokens (the numbers source's)."""
    data = reg.dataset_manifest(dataset)
    assert data is not None
    nats = float(manifest["metrics"]["loss"]) * int(manifest["lm"]["eval_tokens"])
    return nats / math.log(2.0) / int(data.raw["text"]["bytes"]["eval"])


def run(epochs: int) -> dict[str, Any]:
    """Build the sources, rank them on each target, fine-tune every pair; the report."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-explore-lm-"))
    try:
        reg = Registry.init(tmp / "repo")
        root = reg.repo_root
        all_text = texts()
        for name, text in all_text.items():
            _write(root / "data" / f"{name}.txt", text + "\n")
            _write(reg.root / "datasets" / name / "spec.yaml", f"source: text:data/{name}.txt\n")
        shutil.copytree(TOKENIZER, root / "tokenizers" / "shared")
        _own_tokenizer(root / "tokenizers" / "numbers", all_text["numbers"])
        train = f"{{epochs: {epochs}, batch_size: 8, optimizer: adamw, lr: 0.005, seed: 0}}"
        for src in SOURCES:
            tokenizer = "tokenizers/numbers" if src == "numbers" else "tokenizers/shared"
            _write(
                reg.root / "models" / f"src-{src}" / "spec.yaml", _spec(train, src, None, tokenizer)
            )
        for tgt in TARGETS:
            for src in SOURCES:
                for lr in LRS:
                    ft = f"{{epochs: {epochs}, batch_size: 8, optimizer: adamw, lr: {lr}, seed: 0}}"
                    name = f"ft-{src}-{tgt}-{LRS.index(lr)}"
                    _write(reg.root / "models" / name / "spec.yaml", _spec(ft, tgt, f"src-{src}"))
        reg = Registry.open(root)
        for name in all_text:
            build_dataset(reg, name)
        begin = time.perf_counter()
        for src in SOURCES:
            build_model(reg, f"src-{src}")
        source_seconds = time.perf_counter() - begin
        per_target: dict[str, Any] = {}
        for tgt in TARGETS:
            begin = time.perf_counter()
            ranking = explore(reg, tgt, "src-*").to_dict()
            scoring = time.perf_counter() - begin
            bpb = {row["model"][4:]: row["scores"]["bits_per_byte"] for row in ranking["ranking"]}
            best: dict[str, float] = {}
            begin = time.perf_counter()
            for src in SOURCES:
                losses = []
                for lr in LRS:
                    manifest = build_model(reg, f"ft-{src}-{tgt}-{LRS.index(lr)}")
                    losses.append(_eval_bits_per_byte(reg, tgt, manifest))
                best[src] = min(losses)
            finetune = time.perf_counter() - begin
            order = list(SOURCES)
            tau = weighted_tau([-bpb[s] for s in order], [-best[s] for s in order])
            top = min(order, key=lambda s: (bpb[s], s))
            per_target[tgt] = {
                "bits_per_byte": bpb,
                "finetuned_bits_per_byte": {s: round(v, 4) for s, v in best.items()},
                "selected": top,
                "best": min(order, key=lambda s: best[s]),
                "tau_w": round(tau, 4),
                "regret_bits_per_byte": round(best[top] - min(best.values()), 4),
                "scoring_seconds": round(scoring, 3),
                "finetune_seconds": round(finetune, 3),
                "scoring_share": round(scoring / finetune, 4),
                "budget": ranking["budget"],
            }
        taus = [t["tau_w"] for t in per_target.values()]
        regrets = [t["regret_bits_per_byte"] for t in per_target.values()]
        return {
            "setting": {
                "sources": list(SOURCES),
                "targets": list(TARGETS),
                "epochs": epochs,
                "learning_rates": list(LRS),
                "model": ARCH,
                "ground_truth": "min over the lr grid of eval bits per byte after fine-tuning"
                " (loss x eval tokens / eval bytes)",
                "score": "bits per UTF-8 byte, zero-shot, each source with its own tokenizer",
            },
            "source_build_seconds": round(source_seconds, 3),
            "targets": per_target,
            "mean": {
                "tau_w": round(sum(taus) / len(taus), 4),
                "regret_bits_per_byte": round(sum(regrets) / len(regrets), 4),
                "top1_hits": sum(t["selected"] == t["best"] for t in per_target.values()),
            },
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    doc = run(args.epochs)
    text = json.dumps(doc, indent=2, sort_keys=True)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
