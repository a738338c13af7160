"""Source exploration for text datasets: rank language models without fine-tuning them.

A text (causal-lm) dataset is scored with each candidate's own tokenizer, so candidates whose
tokenizers differ are compared on the same text:

- `bits_per_byte`, for every text dataset: the candidate's zero-shot cross-entropy on the
  scored text of the train split, in bits per UTF-8 byte (the total next-token NLL of the
  text, each record conditioned on the tokenizer's end-of-text token, over ln 2 and the
  text's bytes). Per-token perplexity is not comparable across tokenizers (a tokenizer with
  longer tokens makes fewer, harder predictions); per byte it is. Lower is better. Only
  causal language models (task causal-lm) have it.
- `logme`, `hscore`, `knn`, for a text classification dataset (prompt/completion records
  whose completions are class labels): the transferability scores on each candidate's
  mean-pooled last hidden states of the prompts, the completions as labels. Any transformers
  model with a tokenizer has them.

`leep` and `nce` read a source classifier head's class probabilities; a language model has
none, so they are listed under `not_applicable`. The text scored is bounded (`MAX_BYTES` of
the train split, in its order; `MAX_TOKENS` per candidate), and the bound is recorded.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.manifest import DatasetRef, ModelManifest, model_record
from stemma.registry.rules.layout import WEIGHTS_FILE
from stemma.registry.rules.taskspec import CAUSAL_LM
from torch import nn

from . import lm_train
from . import tokenizer as tok
from .build_inputs import load_model
from .ranking import CandidateRow, Sample, Skipped, TextBudget, ranked
from .tasks import DECIMALS
from .textdata import PROMPT_COMPLETION, Record, TextSplits, load_text
from .train import cpu_threads
from .transferability import SCORE_INPUTS, SCORES

BITS_PER_BYTE = "bits_per_byte"
TEXT_SCORES = (BITS_PER_BYTE, *SCORES)
"""Every score a text dataset may be ranked by."""
LOWER_IS_BETTER = frozenset({BITS_PER_BYTE})
MAX_BYTES = 32 << 10
"""UTF-8 bytes of the train split scored: the same text for every candidate."""
MAX_TOKENS = 64 << 10
"""Tokens one candidate may make of that text; a tokenizer that makes more is skipped."""
MAX_SAMPLES = 2000
"""Labelled records pooled for LogME and the other feature scores."""
POOL_TOKENS = 128
"""Prompt tokens pooled per record (the first ones)."""
DEFAULT_WINDOW = 64
NOTE = (
    "bits_per_byte: zero-shot cross-entropy in bits per UTF-8 byte of the scored train text,"
    " each candidate tokenizing it with its own tokenizer (per-token perplexity is not"
    " comparable across tokenizers); lower is better. Feature scores read mean-pooled last"
    " hidden states; higher is better."
)
_NEEDS_LABELS = (
    "needs class labels: the records are plain text or free-form completions (a text"
    " classification dataset is prompt/completion records whose completions are labels)"
)
_NO_HEAD = (
    "reads a source classifier head's class probabilities; a language model has none"
    " (rank by logme on its pooled hidden states instead)"
)


@dataclass(frozen=True)
class TextTarget:
    """The train records scored (bounded) and their class labels, when they are labelled."""

    records: tuple[Record, ...]
    labels: tuple[str, ...] | None
    bytes: int
    format: str


@dataclass(frozen=True)
class TextRanking:
    """Candidates ordered by the deciding score (rank 1 first), those left out, and the bound."""

    dataset: DatasetRef
    decided_by: str
    rows: tuple[CandidateRow, ...]
    skipped: tuple[Skipped, ...]
    selected: str | None
    scores: tuple[str, ...]
    not_applicable: tuple[tuple[str, str], ...]
    budget: TextBudget
    sample: ClassVar[Sample | None] = None  # text is bounded by `budget`, never sampled
    note: ClassVar[str] = NOTE

    @property
    def lower_is_better(self) -> tuple[str, ...]:
        """The scores of this ranking where lower is better, sorted."""
        return tuple(sorted(LOWER_IS_BETTER & set(self.scores)))

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        """The ranking as JSON-ready data; without `timings`, deterministic (no wall times)."""
        return {
            "dataset": self.dataset.to_dict(),
            "decided_by": self.decided_by,
            "scores": list(self.scores),
            "selected": self.selected,
            "ranking": [row.to_dict(timings) for row in self.rows],
            "skipped": [s.to_dict() for s in self.skipped],
            "not_applicable": dict(self.not_applicable),
            "lower_is_better": list(self.lower_is_better),
            "budget": self.budget.to_dict(),
            "note": self.note,
        }

    @property
    def unscorable(self) -> bool:
        """Never: bits per byte applies to every text dataset."""
        return False


def class_labels(records: Sequence[Record], fmt: str) -> tuple[str, ...] | None:
    """The completions as class labels, or None when they are not labels: plain text, or
    completions with fewer than 2 values, a value seen once, or more values than half the
    records (free-form answers)."""
    if fmt != PROMPT_COMPLETION or not records:
        return None
    labels = tuple(r.completion.strip() for r in records)
    counts = Counter(labels)
    if len(counts) < 2 or min(counts.values()) < 2 or len(counts) > len(labels) // 2:
        return None
    return labels


def text_target(reg: Registry, dataset: str, max_bytes: int = MAX_BYTES) -> TextTarget:
    """The first `max_bytes` of the train split's scored text (completions; the last record
    cut at a character boundary) and the labels of a labelled dataset."""
    splits: TextSplits = load_text(reg, dataset, f"explore {dataset}")
    labels = class_labels(splits.train, splits.format)
    kept: list[Record] = []
    total = 0
    for rec in splits.train:
        data = rec.completion.encode()
        if total + len(data) > max_bytes:
            if labels is not None:
                break  # a label is not cut
            data = data[: max_bytes - total]
            rec = Record(rec.prompt, data.decode("utf-8", errors="ignore"))
            data = rec.completion.encode()
        kept.append(rec)
        total += len(data)
        if total >= max_bytes:
            break
    if total == 0:
        raise BuildError(f"datasets/{dataset}: the train split has no text to score")
    if labels is not None:
        labels = labels[: len(kept)][:MAX_SAMPLES]
        kept = kept[:MAX_SAMPLES]
    return TextTarget(tuple(kept), labels, total, splits.format)


def _start_id(tokenizer: Any) -> int | None:
    for tid in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    return None


def _windows(records: Sequence[Record], tokenizer: Any, start: int, window: int) -> Any:
    """Blocks in which every completion token is predicted once: each record is its start
    token, prompt and completion; a long one is cut into windows overlapping by one token
    (a window's first token is context, predicted at the end of the one before)."""
    rows: list[tuple[list[int], list[int]]] = []
    for rec in records:
        prompt = lm_train._encode(tokenizer, rec.prompt) if rec.prompt else []
        text = lm_train._encode(tokenizer, rec.completion)
        ids = [start, *prompt, *text]
        labels = [lm_train.IGNORE] * (1 + len(prompt)) + text
        at = 0
        while at + 1 < len(ids):
            rows.append((ids[at : at + window], labels[at : at + window]))
            at += window - 1
    n = len(rows)
    ids_t = torch.full((n, window), start, dtype=torch.int64)
    mask = torch.zeros((n, window), dtype=torch.int64)
    labels_t = torch.full((n, window), lm_train.IGNORE, dtype=torch.int64)
    for i, (row, lab) in enumerate(rows):
        ids_t[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
        labels_t[i, : len(lab)] = torch.tensor(lab, dtype=torch.int64)
    return lm_train.Blocks(ids_t, mask, labels_t)


@torch.no_grad()
def bits_per_byte(
    module: nn.Module, tokenizer: Any, target: TextTarget, window: int, max_tokens: int
) -> tuple[float, int]:
    """(bits per byte, tokens scored) of `module` on the target's text; ValueError when the
    tokenizer has no start token or makes more than `max_tokens` tokens of the text."""
    start = _start_id(tokenizer)
    if start is None:
        raise ValueError("its tokenizer has no end-of-text or begin token to condition on")
    blocks = _windows(target.records, tokenizer, start, max(window, 2))
    tokens = blocks.labelled
    if tokens > max_tokens:
        raise ValueError(f"its tokenizer makes {tokens} tokens of the text, over {max_tokens}")
    module.eval()
    total = 0.0
    for at in range(0, len(blocks), lm_train.EVAL_BATCH):
        part = slice(at, at + lm_train.EVAL_BATCH)
        nll, _ = lm_train._nll(module, blocks.ids[part], blocks.mask[part], blocks.labels[part])
        total += float(nll)
    return total / math.log(2.0) / target.bytes, tokens


@torch.no_grad()
def pooled_features(
    module: nn.Module, tokenizer: Any, texts: Sequence[str], limit: int = POOL_TOKENS
) -> np.ndarray:
    """(N, hidden) float64: each text's last hidden states averaged over its first `limit`
    tokens."""
    module.eval()
    out = []
    for text in texts:
        ids = lm_train._encode(tokenizer, text)[:limit] or [_start_id(tokenizer) or 0]
        tensor = torch.tensor([ids], dtype=torch.int64)
        found = module(
            input_ids=tensor, attention_mask=torch.ones_like(tensor), output_hidden_states=True
        )
        out.append(found.hidden_states[-1][0].double().mean(dim=0).numpy())
    return np.stack(out)


def _unbuilt(reg: Registry, candidate: str, manifest: ModelManifest | None) -> str | None:
    """Why the candidate (its manifest, None when it has none) cannot be scored, or None."""
    own = manifest.weights.path if manifest else WEIGHTS_FILE
    if manifest is None or not (reg.model_dir(candidate) / own).is_file():
        return "not built"
    if manifest.quantize is not None:
        return "quantized: no source to derive from (its parent is)"
    if manifest.tokenizer is None:
        return "no tokenizer: not a text model"
    return None


def _window(manifest: ModelManifest) -> int:
    """The tokens the model reads at once: its causal-LM block, else its config's positions."""
    if manifest.lm is not None:
        return manifest.lm.block_size
    hf = manifest.architecture.block.library or {}
    for key in ("n_positions", "max_position_embeddings"):
        if isinstance(hf.get(key), int):
            return min(int(hf[key]), POOL_TOKENS)
    return DEFAULT_WINDOW


def _names(scores: Iterable[str], decide: str | None, labelled: bool) -> tuple[list[str], str]:
    names = list(dict.fromkeys([BITS_PER_BYTE, *scores]))  # bits per byte is always scored
    unknown = [s for s in [*names, *([decide] if decide else [])] if s not in TEXT_SCORES]
    if unknown:
        raise BuildError(f"unknown score {unknown[0]!r}; use one of {', '.join(TEXT_SCORES)}")
    decided_by = decide or ("logme" if labelled else BITS_PER_BYTE)
    if decided_by not in names:
        names.append(decided_by)
    return names, decided_by


def _why_not(name: str, labelled: bool) -> str | None:
    if name == BITS_PER_BYTE:
        return None
    if SCORE_INPUTS[name] == "probs":
        return _NO_HEAD
    return None if labelled else _NEEDS_LABELS


def _order_key(row: CandidateRow, score: str) -> tuple[bool, float, str]:
    value = row.scores.get(score)
    sign = 1.0 if score in LOWER_IS_BETTER else -1.0
    if isinstance(value, float) and math.isfinite(value):
        return (False, sign * value, row.model)
    return (True, 0.0, row.model)


def explore_text(
    reg: Registry,
    dataset: str,
    candidates: str | Sequence[str] = "*",
    scores: Iterable[str] = (),
    exclude: Iterable[str] = (),
    decide: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> TextRanking:
    """Score every built text model on the text dataset's train split and rank them.

    `decide` defaults to logme for a labelled dataset and bits_per_byte otherwise; a score
    that does not apply is listed in `not_applicable`, and deciding by one is an error.
    """
    target = text_target(reg, dataset)
    labelled = target.labels is not None
    names, decided_by = _names(scores, decide, labelled)
    why = {n: w for n in names if (w := _why_not(n, labelled)) is not None}
    if decided_by in why:
        raise BuildError(
            f"score {decided_by!r} does not apply to the text dataset {dataset!r}"
            f" ({why[decided_by]}); decide by {'logme' if labelled else BITS_PER_BYTE}"
        )
    applied = tuple(n for n in names if n not in why)
    pool = (
        [m for m in reg.model_names() if fnmatch.fnmatch(m, candidates)]
        if isinstance(candidates, str)
        else sorted(dict.fromkeys(candidates))
    )
    todo = [m for m in pool if m not in set(exclude)]
    rows: list[CandidateRow] = []
    skipped: list[Skipped] = []
    for done, model in enumerate(todo):
        if progress is not None:
            progress(done, len(todo), model)
        found = reg.model_manifest(model)
        manifest = None if found is None else model_record(found)
        reason = _unbuilt(reg, model, manifest)
        is_lm = manifest is not None and manifest.task == CAUSAL_LM
        if reason is None and decided_by == BITS_PER_BYTE and not is_lm:
            reason = "not a causal language model: no next-token predictions for bits per byte"
        if reason is not None or manifest is None:
            skipped.append(Skipped(model=model, reason=reason or "not built"))
            continue
        try:
            row = _score_one(reg, model, manifest, target, applied, is_lm, load_model)
        except ValueError as exc:
            skipped.append(Skipped(model=model, reason=str(exc)))
            continue
        rows.append(row)
    if progress is not None:
        progress(len(todo), len(todo), "")
    rows.sort(key=lambda row: _order_key(row, decided_by))
    ordered = ranked(rows)
    best = ordered[0] if ordered else None
    dataset_manifest = reg.dataset_manifest(dataset)
    assert dataset_manifest is not None  # text_target read it
    return TextRanking(
        dataset=DatasetRef(name=dataset, id=dataset_manifest.id),
        decided_by=decided_by,
        rows=ordered,
        skipped=tuple(skipped),
        selected=best.model if best and best.scores.get(decided_by) is not None else None,
        scores=applied,
        not_applicable=tuple(why.items()),
        budget=TextBudget(
            max_bytes=MAX_BYTES,
            max_tokens=MAX_TOKENS,
            bytes=target.bytes,
            records=len(target.records),
        ),
    )


def _score_one(
    reg: Registry,
    model: str,
    manifest: ModelManifest,
    target: TextTarget,
    names: Sequence[str],
    is_lm: bool,
    load_model: Callable[[Registry, str], nn.Module],
) -> CandidateRow:
    """One candidate's row (unranked): its scores, tokens scored and wall times; ValueError to
    skip it."""
    import time

    shown = reg.rel("models", model, tok.TOKENIZER_DIR)
    begin = time.perf_counter()
    assert manifest.tokenizer is not None  # _unbuilt skipped the candidates without one
    files = tok.checked_files(reg.model_dir(model), manifest.tokenizer, shown, reg.repo_root)
    tokenizer = tok.load(files, shown)
    module = load_model(reg, model)
    values: dict[str, float | None] = {}
    seconds: dict[str, float] = {}
    tokens = 0
    features = None
    with cpu_threads(torch.device("cpu")):
        if is_lm and BITS_PER_BYTE in names:
            value, tokens = bits_per_byte(module, tokenizer, target, _window(manifest), MAX_TOKENS)
            values[BITS_PER_BYTE] = round(value, DECIMALS)
            seconds[BITS_PER_BYTE] = round(time.perf_counter() - begin, 6)
        elif BITS_PER_BYTE in names:
            values[BITS_PER_BYTE] = None
            seconds[BITS_PER_BYTE] = 0.0
        extract_begin = time.perf_counter()
        if target.labels is not None and any(n != BITS_PER_BYTE for n in names):
            try:
                prompts = [r.prompt for r in target.records]
                limit = min(POOL_TOKENS, _window(manifest))
                features = pooled_features(module, tokenizer, prompts, limit)
            except (TypeError, AttributeError) as exc:
                raise ValueError(f"gives no hidden states ({type(exc).__name__})") from None
    extract_seconds = time.perf_counter() - extract_begin
    for name in names:
        if name == BITS_PER_BYTE or features is None:
            continue
        begin = time.perf_counter()
        value = float(SCORES[name](features, np.asarray(target.labels)))
        seconds[name] = round(time.perf_counter() - begin, 6)
        values[name] = round(value, DECIMALS) if math.isfinite(value) else None
    return CandidateRow(
        model=model,
        id=manifest.id,
        scores=values,
        seconds=seconds,
        extract_seconds=round(extract_seconds, 6),
        tokens=tokens,
    )
