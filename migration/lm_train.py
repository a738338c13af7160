"""Tokenizing text into int64 blocks, training a causal LM on them and scoring perplexity.

Plain text is packed: each record's tokens plus the end-of-text token are concatenated and
cut into blocks of `block_size`; the last block is padded. A prompt/completion record is one
block: prompt tokens, then completion tokens and end-of-text, truncated or padded to the
block; its labels are -100 on the prompt (the loss is on the completion only, as TRL and
axolotl train). Padding has attention mask 0 and label -100 everywhere, so it is never in a
loss or a perplexity. Perplexity is exp(mean next-token NLL over every labelled eval token).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from stemma.registry.records.manifest import Generation
from torch import nn

from .textdata import Record
from .train import Progress, TrainConfig, cpu_threads, make_optimizer, set_deterministic

IGNORE = -100  # the label transformers' and torch's losses skip
DECIMALS = 6
EVAL_BATCH = 16
DEFAULT_BLOCK = 64
"""Tokens per block when a spec's `lm.block_size` is absent (its build and every scoring of it)."""
"""Blocks scored at once: fixed, so a figure never depends on the training batch size."""


@dataclass(frozen=True)
class Blocks:
    """Tokenized text: ids, attention mask and labels, each int64 (blocks, block_size)."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def labelled(self) -> int:
        """Tokens a next-token loss is taken on (every labelled position but the first)."""
        return int((self.labels[:, 1:] != IGNORE).sum())


def _encode(tokenizer: Any, text: str) -> list[int]:
    # blocks are cut here, so a text longer than the tokenizer's model_max_length is no error
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return [int(i) for i in ids]


def pad_id(tokenizer: Any) -> int:
    """The id written into padding (masked out): the pad token, else end-of-text, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def blocks(tokenizer: Any, records: Sequence[Record], block_size: int, packed: bool) -> Blocks:
    """Records as int64 blocks (`packed`: plain text, else one prompt/completion a block)."""
    eos = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
    pad = pad_id(tokenizer)
    rows: list[tuple[list[int], list[int]]] = []  # (ids, labels) before padding
    if packed:
        stream: list[int] = []
        for rec in records:
            stream += _encode(tokenizer, rec.completion) + eos
        for at in range(0, len(stream), block_size):
            piece = stream[at : at + block_size]
            rows.append((piece, list(piece)))
    else:
        for rec in records:
            prompt = _encode(tokenizer, rec.prompt)
            answer = _encode(tokenizer, rec.completion) + eos
            row = (prompt + answer)[:block_size]
            rows.append((row, ([IGNORE] * len(prompt) + answer)[:block_size]))
    n = len(rows)
    ids = torch.full((n, block_size), pad, dtype=torch.int64)
    mask = torch.zeros((n, block_size), dtype=torch.int64)
    labels = torch.full((n, block_size), IGNORE, dtype=torch.int64)
    for i, (row, lab) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.int64)
    return Blocks(ids, mask, labels)


def _nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Any:
    """Summed next-token NLL of a batch and the number of tokens it covers."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    shifted = labels[:, 1:].reshape(-1)
    flat = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    total = F.cross_entropy(flat, shifted, ignore_index=IGNORE, reduction="sum")
    return total, int((shifted != IGNORE).sum())


@torch.no_grad()
def score(model: nn.Module, data: Blocks, batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """{loss, perplexity} of a transformers causal LM on `data` (any such model: stemma's
    build or one loaded with AutoModelForCausalLM.from_pretrained)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for at in range(0, len(data), batch_size):
        part = slice(at, at + batch_size)
        nll, n = _nll(model, data.ids[part], data.mask[part], data.labels[part])
        total += float(nll)
        count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("no labelled tokens to score (is the eval split empty?)")
    loss = total / count
    return {
        "loss": round(loss, DECIMALS),
        "perplexity": round(math.exp(min(loss, 700.0)), DECIMALS),
    }


@dataclass(frozen=True)
class LMRun:
    """How training went: per-epoch curve, seconds, device."""

    curve: list[dict[str, Any]]
    train_seconds: float
    device: str


def train_lm(
    model: nn.Module,
    train: Blocks,
    evals: Blocks,
    cfg: TrainConfig,
    progress: Progress | None = None,
) -> LMRun:
    """Seeded, deterministic training on the CPU: shuffled blocks, mean token loss per batch."""
    prior = torch.are_deterministic_algorithms_enabled()
    set_deterministic(True)
    try:
        with cpu_threads(torch.device("cpu")):  # more threads only contend on a small model
            return _train(model, train, evals, cfg, progress)
    finally:
        set_deterministic(prior)  # the process's setting, as train.train leaves it


def _train(
    model: nn.Module,
    train: Blocks,
    evals: Blocks,
    cfg: TrainConfig,
    progress: Progress | None = None,
) -> LMRun:
    torch.manual_seed(cfg.seed)
    order = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    curve: list[dict[str, Any]] = []
    begin = time.perf_counter()
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(len(train), generator=order)
        total, batches = 0.0, 0
        for at in range(0, len(train), cfg.batch_size):
            idx = perm[at : at + cfg.batch_size]
            nll, n = _nll(model, train.ids[idx], train.mask[idx], train.labels[idx])
            if n == 0:
                continue
            loss = nll / n
            optimizer.zero_grad()
            loss.backward()
            if cfg.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
            optimizer.step()
            total += loss.item()
            batches += 1
        ev = score(model, evals)
        row = {
            "epoch": epoch,
            "train_loss": round(total / max(batches, 1), DECIMALS),
            "eval_loss": ev["loss"],
            "eval_perplexity": ev["perplexity"],
        }
        curve.append(row)
        if progress is not None:  # the CLI's bar shows the row (train.Progress)
            progress(epoch, cfg.epochs, row)
    model.eval()
    return LMRun(curve, time.perf_counter() - begin, "cpu")


@torch.no_grad()
def generate(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, seed: int
) -> list[Generation]:
    """Greedy continuations of each prompt (seeded, though greedy decoding draws nothing)."""
    torch.manual_seed(seed)
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and limit > 1:
        # prompt plus continuation must fit the position table: keep the prompt's last tokens
        max_new_tokens = min(max_new_tokens, limit - 1)
    out = []
    for prompt in prompts:
        ids = _encode(tokenizer, prompt) or [pad_id(tokenizer)]
        if isinstance(limit, int) and limit > 1:
            ids = ids[-(limit - max_new_tokens) :]
        tensor = torch.tensor([ids], dtype=torch.int64)
        made = model.generate(  # type: ignore[operator]
            input_ids=tensor,
            attention_mask=torch.ones_like(tensor),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id(tokenizer),
        )
        text = tokenizer.decode(made[0, len(ids) :].tolist(), skip_special_tokens=True)
        out.append(Generation(keys=("prompt", "output"), prompt=prompt, output=str(text)))
    return out
