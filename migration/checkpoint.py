"""Resumable builds: the training loop's state between epochs, as safetensors plus JSON.

A checkpoint lives in `.stemma/checkpoints/NAME/` (the registry's git-ignored work folder,
which DVC tracks no output in): `epoch-NNNN.safetensors` holds every tensor (the module's
state, the optimizer's moments and step counters, the early-stopping best weights, and the
random generators' states, which torch exposes as uint8 tensors), `checkpoint.json` the rest
(the key, the epoch, the curve so far) and the sha256 of the tensor file. The tensor file is
written first and `checkpoint.json` last, each atomically: a build killed at any moment leaves
either the previous checkpoint or the new one, never half of one. Nothing is pickled.

A checkpoint is a cache of one build: `key` hashes the spec digest, the input ids and the
resolved settings, and a checkpoint with another key, or one that is damaged, is deleted and
the build starts over. A finished build deletes its checkpoint (`clear`).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from stemma.registry.errors import StemmaError
from stemma.registry.store.files import (
    canonical_json,
    confined,
    digest,
    parse_json_text,
    read_bytes_file,
    write_atomic,
)

from .weights import to_bytes

CHECKPOINTS = "checkpoints"  # under the registry's `.stemma/` work folder
META_FILE = "checkpoint.json"
AUTO_INTERVAL_S = 300.0
"""Without `checkpoint_every`, a build checkpoints once this long has passed since the last:
short builds (every example) write none, long ones lose at most this much work."""
MAX_BYTES = 1 << 40  # a checkpoint is a few times the weights; this only refuses non-files


def key_of(parts: Mapping[str, Any]) -> str:
    """The key a checkpoint must carry to resume this build (spec, inputs, settings)."""
    return digest(dict(parts))


@dataclass
class Loaded:
    """A checkpoint read back: its tensors and its JSON document."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


@dataclass
class Checkpointer:
    """Where and when one build checkpoints; `every` None: by time (`AUTO_INTERVAL_S`), 0: never."""

    folder: Path
    key: str
    every: int | None = None
    root: Path | None = None  # the registry root the folder must stay inside
    clock: Callable[[], float] = time.monotonic
    _last: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._last = self.clock()

    def _check_folder(self) -> None:
        if self.root is not None:
            confined(self.folder, self.root, str(self.folder))

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether to checkpoint after `epoch` (never after the last: the build ends there)."""
        if epoch >= epochs or self.every == 0:
            return False
        if self.every is None:
            return self.clock() - self._last >= AUTO_INTERVAL_S
        return epoch % self.every == 0

    def save(
        self, epoch: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
    ) -> None:
        """Write the state after `epoch`: the tensor file, then the JSON that names it."""
        self._check_folder()
        self.folder.mkdir(parents=True, exist_ok=True)
        blob = to_bytes(tensors)
        name = f"epoch-{epoch:06d}.safetensors"
        write_atomic(self.folder / name, blob)
        doc = {
            "key": self.key,
            "epoch": epoch,
            "tensors": name,
            "sha256": hashlib.sha256(blob).hexdigest(),
            **meta,
        }
        write_atomic(self.folder / META_FILE, canonical_json(doc))
        for old in self.folder.glob("epoch-*.safetensors"):  # the one named above replaces them
            if old.name != name:
                old.unlink(missing_ok=True)
        self._last = self.clock()

    def load(self) -> Loaded | None:
        """The checkpoint of this build, or None; another build's or a damaged one is deleted."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        if not self.folder.exists() and not self.folder.is_symlink():
            return None
        self._check_folder()
        try:
            raw = read_bytes_file(self.folder / META_FILE, META_FILE, self.root)
            doc = parse_json_text(raw.decode(), META_FILE) if raw is not None else None
            if not isinstance(doc, dict) or doc.get("key") != self.key:
                raise ValueError("another build's checkpoint")
            name = str(doc.get("tensors", ""))
            if not name.startswith("epoch-") or "/" in name:
                raise ValueError("no tensor file")
            blob = read_bytes_file(self.folder / name, name, self.root, MAX_BYTES)
            if blob is None or hashlib.sha256(blob).hexdigest() != doc.get("sha256"):
                raise ValueError("tensor file missing or changed")
            return Loaded(dict(load(blob)), doc)
        except (StemmaError, SafetensorError, ValueError, UnicodeDecodeError):
            self.clear()  # a cache miss: the build starts over
            return None

    def clear(self) -> None:
        """Delete the checkpoint (a finished build leaves none behind)."""
        if self.folder.is_symlink():
            self.folder.unlink()
        elif self.folder.exists():
            self._check_folder()
            shutil.rmtree(self.folder)
