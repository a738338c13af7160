"""Text datasets for causal language models: plain text and prompt/completion records.

Sources (dataset spec `source:`):

- `text:PATH`: a UTF-8 file in the repository; documents are separated by blank lines;
- `jsonl:PATH`: one JSON object a line, `{"prompt": ..., "completion": ...}` (the loss is on
  the completion only) or `{"text": ...}`; `fields:` renames the keys;
- `hf-disk:PATH` with `task: causal-lm`: a `datasets` folder, its `text` column (or prompt and
  completion columns, as `fields:` names them).

A dataset holds text, not token ids: each model tokenizes it with its own tokenizer when it
is built (`causal_lm.blocks`), always into int64 ids. The records are split into train and
eval by a seeded permutation (`split: {eval, seed}`). `data.npz` stores each split as the
UTF-8 bytes of its records (`<split>_text`, uint8) and one row per record (`<split>_bounds`,
int64: start, end of the prompt, end), so it loads without pickles.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.core import DatasetSpec, TextFields
from stemma.registry.records.manifest import TextData, dataset_record
from stemma.registry.rules.layout import DATA_FILE
from stemma.registry.rules.taskspec import CAUSAL_LM
from stemma.registry.store.files import decode_text, read_bytes_file

from .data import dataset_spec, open_saved_dataset

MAX_TEXT_BYTES = 256 << 20
"""A text source's size bound: a causal-LM corpus built on the CPU here is megabytes."""
TEXT = "text"
PROMPT_COMPLETION = "prompt-completion"
SPLITS = ("train", "eval")
_DOCUMENT_BREAK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Record:
    """One text record: a prompt (empty for plain text) and the text the loss is on."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class TextSplits:
    """The train and eval records of a text dataset and their format."""

    train: tuple[Record, ...]
    eval: tuple[Record, ...]
    format: str

    def split(self, name: str) -> tuple[Record, ...]:
        """The records of split `name` (train or eval)."""
        return self.train if name == "train" else self.eval


def is_text_source(spec: DatasetSpec) -> bool:
    """True when a dataset spec describes text for a causal language model."""
    return spec.source.startswith(("text:", "jsonl:")) or (
        spec.source.startswith("hf-disk:") and spec.task == CAUSAL_LM
    )


def _read(rel: str, resolve: Callable[[str], Path], where: str) -> str:
    data = read_bytes_file(resolve(rel), rel, limit=MAX_TEXT_BYTES)
    if data is None:
        raise BuildError(f"{where}: {rel} does not exist")
    return decode_text(data, rel)


def _documents(text: str) -> list[Record]:
    parts = (p.strip() for p in _DOCUMENT_BREAK.split(text.replace("\r\n", "\n")))
    return [Record("", p) for p in parts if p]


def _record(doc: Any, fields: TextFields, shown: str) -> tuple[Record, str]:
    """One JSON object as a record and its format; BuildError naming the line's problem."""
    if not isinstance(doc, dict):
        raise BuildError(f"{shown}: a record is a JSON object, not {type(doc).__name__}")
    p, c, t = fields.prompt, fields.completion, fields.text
    if p in doc or c in doc:
        for key in (p, c):
            if not isinstance(doc.get(key), str):
                raise BuildError(f"{shown}: {key!r} must be a string")
        return Record(doc[p], doc[c]), PROMPT_COMPLETION
    if isinstance(doc.get(t), str):
        return Record("", doc[t]), TEXT
    raise BuildError(f"{shown}: a record needs {p!r} and {c!r}, or {t!r} (strings)")


def _jsonl(text: str, rel: str, fields: TextFields) -> tuple[list[Record], str]:
    records: list[Record] = []
    formats: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        shown = f"{rel} line {number}"
        try:
            doc = json.loads(line, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            reason = str(exc).split(": line")[0] if str(exc) else type(exc).__name__
            raise BuildError(f"{shown}: not valid JSON ({reason})") from None
        rec, fmt = _record(doc, fields, shown)
        if formats and fmt not in formats:
            raise BuildError(f"{shown}: mixes text records with prompt/completion records")
        formats.add(fmt)
        records.append(rec)
    return records, (formats.pop() if formats else TEXT)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _hf_disk(
    rel: str, resolve: Callable[[str], Path], fields: TextFields, where: str
) -> tuple[list[Record], str]:
    _, ds = open_saved_dataset(rel, resolve, where)
    columns = set(ds.column_names)
    if fields.prompt in columns and fields.completion in columns:
        pairs = zip(ds[fields.prompt], ds[fields.completion], strict=True)
        return [Record(str(p), str(c)) for p, c in pairs], PROMPT_COMPLETION
    if fields.text not in columns:
        raise BuildError(
            f"{where}: {rel!r} has no text column {fields.text!r}"
            f" (columns: {', '.join(sorted(columns))}); name it in fields.text"
        )
    return [Record("", str(t)) for t in ds[fields.text]], TEXT


def materialize_text(
    spec: DatasetSpec | Mapping[str, Any], display: str, resolve: Callable[[str], Path]
) -> TextSplits:
    """Read a text source and split its records (seeded)."""
    spec = dataset_spec(spec)
    where = f"{display} at /source"
    scheme, _, rel = spec.source.partition(":")
    fields = spec.text_fields
    if scheme == "text":
        records, fmt = _documents(_read(rel, resolve, where)), TEXT
    elif scheme == "jsonl":
        records, fmt = _jsonl(_read(rel, resolve, where), rel, fields)
    else:
        records, fmt = _hf_disk(rel, resolve, fields, where)
    if len(records) < 2:
        raise BuildError(
            f"{where}: {rel} holds {len(records)} record(s); a train and an eval split need 2"
            " (plain text: separate documents with a blank line)"
        )
    split = spec.split
    order = np.random.default_rng(split.seed).permutation(len(records))
    n_eval = min(max(1, round(split.eval * len(records))), len(records) - 1)
    evals = sorted(int(i) for i in order[:n_eval])
    trains = sorted(int(i) for i in order[n_eval:])
    return TextSplits(tuple(records[i] for i in trains), tuple(records[i] for i in evals), fmt)


def _pack(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    chunks, bounds, at = [], [], 0
    for rec in records:
        prompt, completion = rec.prompt.encode(), rec.completion.encode()
        bounds.append((at, at + len(prompt), at + len(prompt) + len(completion)))
        chunks += [prompt, completion]
        at += len(prompt) + len(completion)
    text = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    return text, np.asarray(bounds, dtype=np.int64).reshape(-1, 3)


def npz_bytes(splits: TextSplits) -> bytes:
    """The uncompressed .npz bytes of the splits (deterministic, no pickles)."""
    arrays: dict[str, np.ndarray] = {"format": np.asarray([splits.format])}
    for name in SPLITS:
        arrays[f"{name}_text"], arrays[f"{name}_bounds"] = _pack(splits.split(name))
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _unpack(text: np.ndarray, bounds: np.ndarray) -> tuple[Record, ...]:
    raw = text.tobytes()
    return tuple(Record(raw[a:b].decode(), raw[b:c].decode()) for a, b, c in bounds.tolist())


def load_text(reg: Registry, name: str, where: str) -> TextSplits:
    """The records of a built text dataset; BuildError when it is not one or not built."""
    manifest = reg.dataset_manifest(name)
    path = reg.dataset_dir(name) / DATA_FILE
    if manifest is None or not path.is_file():
        raise BuildError(
            f"{where}: dataset {name!r} has not been built; build it first (dvc repro)"
        )
    if dataset_record(manifest).task != CAUSAL_LM:
        raise BuildError(f"{where}: dataset {name!r} is no text (causal-lm) dataset")
    try:
        with np.load(path, allow_pickle=False) as npz:
            fmt = str(npz["format"][0])
            parts = {n: (npz[f"{n}_text"], npz[f"{n}_bounds"]) for n in SPLITS}
            return TextSplits(_unpack(*parts["train"]), _unpack(*parts["eval"]), fmt)
    except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise BuildError(
            f"{where}: {reg.rel('datasets', name, DATA_FILE)} is not a text dataset file"
            f" ({type(exc).__name__}); rebuild it with `dvc repro`"
        ) from None


def manifest_block(splits: TextSplits) -> TextData:
    """The dataset manifest's `text` block: format, encoding, the dtype models tokenize to."""
    return TextData(
        keys=("format", "encoding", "token_dtype", "bytes"),
        format=splits.format,
        encoding="utf-8",
        token_dtype="int64",
        bytes={
            n: sum(len(r.prompt.encode()) + len(r.completion.encode()) for r in splits.split(n))
            for n in SPLITS
        },
    )
