"""`stemma register`: import weights trained elsewhere as a model, optionally with its source.

The weights may be a safetensors file, a `.pt` state dict (loaded with `weights_only=True`), or
a Hugging Face folder (config.json + model.safetensors). They are loaded strictly into the
module the architecture describes, so the tensor names must be the family's own (timm's
`fc.*`, transformers' `classifier.*`). The written weights become a DVC output: tracked by a
`.dvc` file (`dvc add`) unless a stage of dvc.yaml already outputs them (your own training
stage that runs `stemma register`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.pipeline.render import current
from stemma.registry.publish.hubfiles import snapshot_hub_id
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.records.core import MODEL_MANIFEST
from stemma.registry.records.manifest import (
    Architecture,
    DatasetRef,
    Parameters,
    Source,
    Transfer,
)
from stemma.registry.rules.layout import PIPELINE_FILE, SPEC_FILE, WEIGHTS_FILE
from stemma.registry.rules.naming import check_name
from stemma.registry.store.files import digest
from stemma.registry.store.yamlio import load_yaml_text

from . import tokenizer as tok
from .architectures import build_module, head_prefix, infer_architecture, make_config
from .build_outputs import blob_weights, commit_outputs, now, run_record
from .data import load_dataset
from .entrypoints import importable
from .evaluate import evaluate
from .families import HEADLESS, LIBRARY_FAMILIES
from .hubsnapshot import (
    EXTERNAL_KEY,
    Snapshot,
    card_parents,
    ignored_by_library,
    load_state,
    read_snapshot,
    tokenizer_files,
)
from .mapping import plan, report, transfer
from .model_manifest import Head
from .tasks import get as get_task
from .weights import read_any, to_bytes

RELATIONS = ("finetune", "adapter", "distill", "quantized", "merge")
FROM_SNAPSHOT = "snapshot"
"""The manifest's `tokenizer.from` of a tokenizer registered with a Hub snapshot."""


def _read(
    path: Path, architecture: dict[str, Any] | None
) -> tuple[dict[str, Any], Any, Snapshot | None]:
    """The state dict and the architecture block; an HF folder (a Hub snapshot, checked by
    `hubsnapshot`) brings its own config, shards, tokenizer and card."""
    if path.is_dir():
        snap = read_snapshot(path, str(path))
        arch = {**(architecture or {}), "family": "transformers", "config": snap.config}
        return load_state(snap)[0], arch, snap
    return read_any(path, str(path)), architecture, None


def _library_shape(
    reg: Registry,
    arch: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    in_shape: list[int] | None,
) -> tuple[list[int], int]:
    """(input shape, classes) of library weights: from a probe module and the tensor shapes
    (built under the registry's trusted entrypoints and size limits, like the model)."""
    family = str(arch["family"])
    guess = [3, 32, 32] if family != "transformers" else [8]
    settings = reg.settings
    with torch.random.fork_rng(devices=[]):
        probe = build_module(
            make_config(arch, in_shape or guess, 2),
            settings.entrypoints,
            "--family",
            settings.limits,
        )
    prefix = head_prefix(probe) + "."
    heads = [n for n, t in probe.state_dict().items() if n.startswith(prefix) and t.ndim == 2]
    if family == "transformers" and not any(n.startswith(prefix) for n in state):
        # a headless base (the library's AutoModel: BertModel, ...): a child adds the head
        positions = int(arch.get("config", {}).get("max_position_embeddings", 512))
        return in_shape or [positions], HEADLESS
    if not heads or heads[-1] not in state:
        raise BuildError(
            f"the weights have no {heads[-1] if heads else prefix + 'weight'} tensor: tensor"
            f" names must be the {family} model's own"
        )
    num_classes = int(state[heads[-1]].shape[0])
    if in_shape:
        return in_shape, num_classes
    if family == "transformers":
        positions = int(arch.get("config", {}).get("max_position_embeddings", 512))
        return [positions], num_classes
    stem = next((n for n, t in probe.state_dict().items() if t.ndim == 4), None)
    if stem is None or stem not in state:
        raise BuildError("pass --in-shape C,H,W; the weights do not show the input channels")
    return [int(state[stem].shape[1]), 224, 224], num_classes


def _config(
    reg: Registry,
    architecture: dict[str, Any] | None,
    state: Mapping[str, torch.Tensor],
    in_shape: list[int] | None,
    where: str,
) -> dict[str, Any]:
    if architecture and architecture.get("family") in LIBRARY_FAMILIES:
        shape, num_classes = _library_shape(reg, architecture, state, in_shape)
        return make_config(architecture, shape, num_classes)
    if architecture:
        num_classes = int(state["head.weight"].shape[0]) if "head.weight" in state else 0
        seen = in_shape or (
            [int(state["body.0.weight"].shape[1])] if "body.0.weight" in state else None
        )
        if not seen or not num_classes:
            raise BuildError(f"{where}: pass --in-shape; the weights do not show it")
        return make_config(architecture, seen, num_classes)
    return infer_architecture(state, in_shape)


_REGISTERED = Transfer(
    keys=("mapping", "mode", "unused_source", "features_cached"),
    mapping=None,
    mode="registered",
    unused_source=(),
    features_cached=False,
)
"""The `transfer` block of registered weights: nothing was mapped from a source."""


def _source_block(reg: Registry, source: str | None, relation: str) -> Source | None:
    if source is None:
        return None
    if relation not in RELATIONS:
        raise BuildError(f"--relation: unknown relation {relation!r}; use one of {RELATIONS}")
    manifest = reg.model_manifest(source)
    if manifest is None:
        raise BuildError(f"--source: model {source!r} has not been built; build it first")
    return Source.of(source, relation, manifest.id)


def _tracked_by_stage(reg: Registry, rel: str) -> bool:
    """True when a dvc.yaml stage outputs `rel` (a team's own stage that registers)."""
    text = current(reg)
    doc = load_yaml_text(text, PIPELINE_FILE) if text else None
    stages = doc.get("stages") if isinstance(doc, dict) else None
    for stage in (stages or {}).values():
        outs = stage.get("outs") if isinstance(stage, dict) else None
        for out in outs or []:
            if str(next(iter(out)) if isinstance(out, dict) else out) == rel:
                return True
    return False


def dvc_track(reg: Registry, rel: str) -> None:
    """Make `rel` a cached DVC output (`dvc add`) unless a stage already outputs it."""
    if _tracked_by_stage(reg, rel) or not (reg.repo_root / ".dvc").is_dir():
        return
    from dvc.repo import Repo  # type: ignore[import-untyped]

    with Repo(str(reg.repo_root)) as repo:
        repo.add(str(reg.repo_root / rel))  # absolute: DVC reads a relative one from the cwd


def register(
    reg: Registry,
    name: str,
    weights_path: Path,
    *,
    architecture: Mapping[str, Any] | None = None,
    eval_dataset: str | None = None,
    in_shape: list[int] | None = None,
    description: str | None = None,
    source: str | None = None,
    relation: str = "finetune",
) -> dict[str, Any]:
    """Import weights as model `name`: weights.safetensors (a DVC output) and a manifest."""
    started, begin = now(), time.perf_counter()
    importable(reg.repo_root)
    check_name(name, "model name")
    if (reg.model_dir(name) / SPEC_FILE).exists():
        raise BuildError(
            f"{reg.rel('models', name, SPEC_FILE)}: model {name!r} is declared by a spec and"
            " built by `dvc repro`; register the weights under another name"
        )
    src = _source_block(reg, source, relation)
    state, arch, snap = _read(Path(weights_path), dict(architecture) if architecture else None)
    data = None
    if eval_dataset is not None:
        data = load_dataset(reg, eval_dataset, "--eval", "register")
        in_shape = in_shape or data.shape
    config = _config(reg, arch, state, in_shape, str(weights_path))
    if data is not None and ArchitectureConfig.from_dict(config).num_classes == HEADLESS:
        raise BuildError(
            f"--eval: {weights_path} is a base model without a head (no outputs to score);"
            " register it without --eval and evaluate a child that adds a head"
        )
    with torch.random.fork_rng(devices=[]):
        module = build_module(
            config, reg.settings.entrypoints, f"{weights_path}", reg.settings.limits
        )
    for ignored in ignored_by_library(module, state):  # as the library's own loader does
        del state[ignored]
    tmap = plan(state, module.state_dict(), "exact", f"{weights_path}", "the weights file")
    tokenizer = tokenizer_files(snap) if snap is not None else {}
    transfer(module, state, tmap)
    module.eval()
    rows, _ = report(module, None)
    blob = to_bytes(module.state_dict())
    metrics: dict[str, float] = {}
    per_class: dict[str, float] = {}
    datasets: dict[str, DatasetRef] = {}
    if data is not None and eval_dataset is not None:
        scored = evaluate(module, data.x_eval, data.y_eval)
        metrics = {m: scored[m] for m in get_task(data.task).metrics}
        per_class = scored["per_class"]
        manifest_ds = reg.dataset_manifest(eval_dataset)
        assert manifest_ds is not None
        datasets["eval"] = DatasetRef.of(eval_dataset, manifest_ds.id)
    spec_doc: dict[str, Any] = {
        "description": description or f"Registered from {Path(weights_path).name}."
    }
    if src is not None:
        spec_doc["source"] = {"model": src.model, "relation": src.relation}
    if snap is not None:  # a Hub snapshot: its id names it in cards of children
        hub = snapshot_hub_id(Path(weights_path))
        if hub:
            spec_doc["hub_id"] = hub
        if src is None:
            src, external = card_parents(reg, snap.card)
            if src is not None:
                spec_doc["source"] = {"model": src.model, "relation": src.relation}
            if external:
                spec_doc[EXTERNAL_KEY] = external
    total = sum(p.numel() for p in module.parameters())
    head = Head(
        name,
        spec_doc,
        digest(spec_doc),
        src,
        datasets,
        Architecture.of(config, tuple(rows)),
        Parameters.of(total, total, 0),
    )
    built = head.manifest(
        blob_weights(WEIGHTS_FILE, blob, "safetensors"),
        transfer=_REGISTERED,
        metrics=metrics,
        per_class=per_class,
        gates=(),
        checks={},
        run=run_record(reg, started, begin, device="cpu", imported_from=Path(weights_path).name),
        tokenizer=tok.record(tokenizer, FROM_SNAPSHOT) if tokenizer else None,
    )
    manifest = built.to_dict()
    outputs = {WEIGHTS_FILE: blob, **tok.outputs(tokenizer)}
    commit_outputs(reg, reg.model_dir(name), "models", manifest, MODEL_MANIFEST, outputs)
    dvc_track(reg, reg.rel("models", name, WEIGHTS_FILE))
    return manifest
