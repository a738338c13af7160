"""What every build writes, and how: the run block, the manifest's file blocks, the weights
(streamed, sharded above a limit) and the switch of all outputs as one unit.

Shared by the builds of every family (migration/build.py, detection.py, causal_lm.py,
merge.py, quantize.py, register.py), which import it; it imports none of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch
from stemma.registry import Registry
from stemma.registry import __version__ as STEMMA_VERSION
from stemma.registry.errors import BuildError, StemmaError
from stemma.registry.records.core import MODEL_MANIFEST, DatasetSpec
from stemma.registry.records.manifest import (
    DatasetManifest,
    FileRef,
    ModelManifest,
    Numerics,
    Run,
    Weights,
)
from stemma.registry.rules.layout import CURVE_FILE as CURVE_FILE
from stemma.registry.rules.layout import (
    DATA_FILE,
    LAST_RUN_FILE,
    MANIFEST_FILE,
    STATE_DIR,
    WEIGHTS_FILE,
)
from stemma.registry.rules.layout import METRICS_FILE as METRICS_FILE
from stemma.registry.store.documents import validate_document
from stemma.registry.store.files import canonical_json, content_id, write_atomic

from . import fingerprint
from . import weights as _weights
from .commit import Stage, commit
from .numerics import mode_of
from .numerics import record as numerics_record
from .shards import write as write_shards

"""The latest build's run block, git-ignored: an identical rebuild leaves the manifest as is."""


def now() -> str:
    """The current UTC time as the run block records it (seconds, `Z`)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def blob_ref(path: str, blob: bytes, fmt: str) -> FileRef:
    """The manifest's file block for bytes about to be written."""
    return _weights.hashes_of(blob).ref(path, fmt)


def blob_file(path: str, blob: bytes, fmt: str) -> dict[str, Any]:
    """`blob_ref` as the manifest's JSON."""
    return blob_ref(path, blob, fmt).to_dict()


def blob_weights(path: str, blob: bytes, fmt: str) -> Weights:
    """The manifest's weights block for one file's bytes about to be written."""
    return _weights.hashes_of(blob).weights(path, fmt)


def run_record(
    reg: Registry,
    started: str,
    begin: float,
    *,
    device: str | None = None,
    seed: int | None = None,
    deterministic: bool | None = None,
    **notes: Any,
) -> Run:
    """How the build ran: its own work's duration (from `begin`), versions, numerics, and
    where given the device, seed and determinism; `notes` (threads, train_s ...) are kept as
    the open block's further keys."""
    numerics = Numerics.from_dict(
        {
            **numerics_record(mode_of(reg.settings.defaults)),
            "fingerprint": fingerprint.of_this_machine(reg.repo_root / STATE_DIR),
        },
        pointer="/run/numerics",
    )
    named = {"device": device, "seed": seed, "deterministic": deterministic}
    return Run(
        keys=(
            "started",
            "duration_s",
            "stemma",
            "torch",
            "numerics",
            *(k for k, v in named.items() if v is not None),
            *notes,
        ),
        extra=notes,
        started=started,
        duration_s=round(time.perf_counter() - begin, 3),
        stemma=STEMMA_VERSION,
        torch=torch.__version__,
        numerics=numerics,
        device=device,
        seed=seed,
        deterministic=deterministic,
    )


def dataset_manifest(spec: DatasetSpec, name: str, blob: bytes, **blocks: Any) -> DatasetManifest:
    """A dataset's manifest: kind, schema version, name, the spec and its digest, the
    `data.npz` file the build writes (`blob`), then `blocks` (the manifest's further fields,
    shape, splits and run among them) in the order given, a None one left out; the id, filled
    in at the commit, comes last."""
    given = {k: v for k, v in blocks.items() if v is not None}
    return DatasetManifest(
        keys=("kind", "schema_version", "name", "spec", "spec_digest", "data", *given, "id"),
        kind="dataset",
        schema_version=1,
        name=name,
        id="",  # the content id, which commit_outputs computes from the rest
        spec=spec.to_dict(),
        spec_digest=spec.digest,
        data=blob_ref(DATA_FILE, blob, "npz"),
        **given,
    )


def _non_finite(doc: Any, pointer: str = "") -> str | None:
    """The JSON pointer of the first NaN or infinity in `doc`, or None."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return pointer
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for key, value in items:
        found = _non_finite(value, f"{pointer}/{key}")
        if found is not None:
            return found
    return None


def commit_outputs(
    reg: Registry,
    folder: Path,
    kind: str,
    manifest: dict[str, Any],
    schema: str,
    outputs: Mapping[str, Any],
    stage: Stage | None = None,
) -> None:
    """Fill in the id, validate, then switch the outputs and the manifest in as one unit.

    `outputs` maps file names to bytes or to JSON documents (written as canonical JSON).

    When a valid manifest with the same id is in place, it stays as it is (the run block is
    not part of the id): only outputs whose bytes differ are written, usually none.
    """
    rel = reg.rel(kind, manifest["name"], MANIFEST_FILE)
    docs = {name: doc for name, doc in outputs.items() if not isinstance(doc, bytes)}
    for where, doc in (
        (rel, manifest),
        *((reg.rel(kind, manifest["name"], n), d) for n, d in docs.items()),
    ):
        pointer = _non_finite(doc)
        if pointer is not None:
            raise BuildError(
                f"{where} at {pointer or '/'}: the build produced a value that is not a finite"
                " number (training diverged?); nothing was written: lower training.lr or"
                " check the data"
            )
    manifest["id"] = content_id(manifest)
    validate_document(manifest, schema, rel)
    try:
        found = (reg.model_manifest if kind == "models" else reg.dataset_manifest)(manifest["name"])
    except StemmaError:
        found = None  # unreadable or invalid: replaced like any changed file
    same = found is not None and found.id == manifest["id"] == found.computed_id
    files = {
        n: b if isinstance(b, bytes) else canonical_json(b).encode() for n, b in outputs.items()
    }
    if not same:
        files[MANIFEST_FILE] = canonical_json(manifest).encode()
    commit(folder, files, stage)
    reg.forget(rel)
    write_atomic(folder / LAST_RUN_FILE, canonical_json(manifest["run"]))


def write_model(
    reg: Registry,
    name: str,
    manifest: Callable[[Weights], ModelManifest],
    weights: Mapping[str, torch.Tensor] | Weights,
    metrics: Mapping[str, float],
    curve: list[dict[str, Any]],
    files: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """Stream the weights (a state dict) into the staging folder, hashed as they are written
    and sharded above `limits.max_shard_bytes`, and make the manifest of the block written
    (`manifest`); then validate and switch weights, metrics, curve and the manifest in as one
    unit. `weights` is a `Weights` block where `files` hold them (an adapter's own files).
    Returns the manifest as written, id filled in."""
    outputs: dict[str, Any] = {METRICS_FILE: dict(metrics), CURVE_FILE: curve}
    outputs.update(files or {})
    folder = reg.model_dir(name)
    with Stage(folder) as stage:
        if isinstance(weights, Weights):
            written, streamed = weights, False
        else:
            limit = int(reg.settings.given_limits.get("max_shard_bytes", _weights.SHARD_BYTES))
            written, streamed = _write_weights(stage, weights, limit), True
        doc = manifest(written).to_dict()
        commit_outputs(reg, folder, "models", doc, MODEL_MANIFEST, outputs, stage)
    if streamed:  # a block the caller wrote is one file: no shards to drop
        _drop_unrecorded_shards(folder, written)
    return doc


def _write_weights(stage: Stage, state: Mapping[str, torch.Tensor], limit: int) -> Weights:
    """The weights as `weights.safetensors`: one file, or, above `limit`, a folder of that
    name holding the index and its shards (the hub's layout, files beside the index).

    Why a folder: the model stage's DVC output is `weights.safetensors` whatever the size
    (DVC takes a file or a folder at a declared path), so dvc.yaml follows from the specs
    alone and stays the same for every unsharded model; a sharded model is one DVC output
    that `dvc push`, `pull` and `status` handle whole."""

    def into_folder(file: str, writer: Callable[[IO[bytes]], _weights.Hashes]) -> _weights.Hashes:
        # the single-file case keeps its name; shards and index go inside the folder
        return stage.write(file if file == WEIGHTS_FILE else f"{WEIGHTS_FILE}/{file}", writer)

    block = write_shards(into_folder, state, WEIGHTS_FILE, limit)
    if block.shards is None:
        return block
    # paths in the manifest are relative to the model's folder
    inside = tuple(replace(s, path=f"{WEIGHTS_FILE}/{s.path}") for s in block.shards)
    return replace(block, path=f"{WEIGHTS_FILE}/{block.path}", shards=inside)


def _drop_unrecorded_shards(folder: Path, block: Weights) -> None:
    """After the switch: files of an earlier sharded build (other shard counts) that the
    manifest no longer names leave the weights folder, which DVC records whole."""
    shards = folder / WEIGHTS_FILE
    if block.shards is None or not shards.is_dir() or shards.is_symlink():
        return
    keep = {block.path, *(s.path for s in block.shards)}
    for path in shards.iterdir():
        if f"{WEIGHTS_FILE}/{path.name}" not in keep and path.is_file():
            path.unlink()
