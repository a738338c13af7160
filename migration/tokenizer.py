"""A language model's tokenizer: the library's own files, stored beside the weights.

A causal-LM model keeps its tokenizer in `models/NAME/tokenizer/`: exactly the files that
`tokenizer.save_pretrained(folder)` writes (tokenizer.json, tokenizer_config.json, ...), so
`AutoTokenizer.from_pretrained("models/NAME/tokenizer")` loads it. The files come from the
folder the spec names (`tokenizer: PATH`, recorded as from `spec`) or are copied byte for byte
from the source model (recorded as from that model's name). The manifest key `tokenizer`
holds each file's sha256, so the files are part of the model's id: a changed tokenizer is a
new version and makes every descendant stale.

Only plain files of known names and bounded size are read, and a tokenizer config that asks
for remote code (`auto_map`) is refused: loading never runs code from the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stemma.registry.errors import BuildError
from stemma.registry.records.manifest import Tokenizer
from stemma.registry.store.files import read_bytes_file, write_atomic

from .families import require

TOKENIZER_DIR = "tokenizer"
FROM_SPEC = "spec"
KNOWN_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
    }
)
"""The file names transformers' tokenizers write with save_pretrained."""
MAX_FILE_BYTES = 64 << 20
MAX_FILES = len(KNOWN_FILES)
REQUIRED = ("tokenizer_config.json",)


def read_files(folder: Path, display: str, root: Path | None = None) -> dict[str, bytes]:
    """The tokenizer files of `folder` (name -> bytes): regular files of known names, each at
    most `MAX_FILE_BYTES`; anything else in the folder is refused with its name."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        raise BuildError(f"{display}: tokenizer folder does not exist") from None
    if not stat.S_ISDIR(info.st_mode):
        raise BuildError(f"{display}: is not a folder of tokenizer files")
    names = sorted(os.listdir(folder))
    files: dict[str, bytes] = {}
    for name in names:
        shown = f"{display}/{name}"
        if name not in KNOWN_FILES:
            raise BuildError(
                f"{shown}: not a tokenizer file (save_pretrained writes"
                f" {', '.join(sorted(KNOWN_FILES)[:6])}, ...); remove it"
            )
        data = read_bytes_file(folder / name, shown, root=root, limit=MAX_FILE_BYTES)
        if data is None:
            raise BuildError(f"{shown}: cannot read the file")
        files[name] = data
    for name in REQUIRED:
        if name not in files:
            raise BuildError(f"{display}: {name} is missing; write the folder with save_pretrained")
    vocabularies = ("tokenizer.json", "vocab.json", "vocab.txt")
    if not any(n in files for n in vocabularies) and not any(n.endswith(".model") for n in files):
        raise BuildError(f"{display}: no vocabulary (tokenizer.json, vocab.*, *.model)")
    _refuse_remote_code(files["tokenizer_config.json"], f"{display}/tokenizer_config.json")
    return files


def _refuse_remote_code(raw: bytes, display: str) -> None:
    """A tokenizer config that names code to import (`auto_map`) is refused."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise BuildError(f"{display}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BuildError(f"{display}: a tokenizer config is a JSON object")
    if "auto_map" in doc:
        raise BuildError(
            f"{display} at /auto_map: the tokenizer names code to import; stemma loads"
            " tokenizers without remote code (remove auto_map)"
        )


def record(files: Mapping[str, bytes], origin: str) -> Tokenizer:
    """The manifest's `tokenizer` block: each file's sha256 and where the files came from."""
    return Tokenizer(
        keys=("files", "from"),
        files={n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())},
        from_=origin,
    )


def outputs(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The files as a model folder's outputs (`tokenizer/NAME`)."""
    return {f"{TOKENIZER_DIR}/{n}": b for n, b in files.items()}


def checked_files(
    model_folder: Path, block: Tokenizer, display: str, root: Path | None = None
) -> dict[str, bytes]:
    """A built model's tokenizer files, refused unless they are exactly the ones its manifest's
    `tokenizer` block records (a hand-edited or missing file: rebuild the model first)."""
    folder = model_folder / TOKENIZER_DIR
    files = read_files(folder, display, root)
    recorded = dict(block.files)
    found = record(files, block.from_).files
    if found != recorded:
        changed = sorted(set(found.items()) ^ set(recorded.items()))
        name = changed[0][0] if changed else "?"
        raise BuildError(
            f"{display}/{name} does not match its manifest; rebuild that model (dvc repro)"
        )
    return files


def save_tokenizer(src_folder: Path, model_folder: Path, origin: str = FROM_SPEC) -> Tokenizer:
    """Copy the tokenizer files of `src_folder` into `model_folder/tokenizer/`; the record."""
    files = read_files(src_folder, str(src_folder))
    for name, data in files.items():
        write_atomic(model_folder / TOKENIZER_DIR / name, data)
    return record(files, origin)


def tokenizer_record(model_folder: Path, origin: str = FROM_SPEC) -> Tokenizer:
    """The `tokenizer` block for the files already in `model_folder/tokenizer/`."""
    folder = model_folder / TOKENIZER_DIR
    return record(read_files(folder, str(folder)), origin)


def load(files: Mapping[str, bytes], display: str) -> Any:
    """The transformers tokenizer the files describe (local files only, no remote code)."""
    transformers = require("transformers")
    with tempfile.TemporaryDirectory(prefix="stemma-tokenizer-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        try:
            return transformers.AutoTokenizer.from_pretrained(
                tmp, local_files_only=True, trust_remote_code=False
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BuildError(
                f"{display}: transformers cannot load the tokenizer: {first}"
            ) from None
