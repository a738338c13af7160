"""Verify a built model against the files as they are now, and optionally rebuild it.

`verify_model` re-runs, against the current files: the schema of spec and manifest, the
manifest's content id, the weights' hashes, the spec digest and the source's id (staleness),
the gates (recomputed from the recorded metrics), the recorded checks, and the frozen
tensors (every frozen, transferred parameter must still equal its source tensor bit for bit).
With `rebuild=True` the model is rebuilt in a temporary copy of what its build reads, by
`stemma build` in a fresh process (so the numeric mode is pinned as `dvc repro` pins it), and
the result is one of three verdicts:

- identical: the same weights bytes and the same manifest id;
- numerically equivalent: the same tensors (names, shapes, dtypes) whose values differ by at
  most the weights tolerance (max absolute difference per tensor), and metrics that agree
  within the metric tolerance; reported with both runs' `run.numerics` side by side (another
  processor in native mode, another torch, CUDA's kernels);
- different: anything else. Only this one fails verification.

The tolerances are stricter on CPU (both builds on CPU) than where either ran on CUDA (bf16
autocast, non-deterministic kernels).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError, ModelNotFound, StemmaError
from stemma.registry.pipeline.locks import folder_locked_md5
from stemma.registry.query.listing import current_dataset_id
from stemma.registry.records.core import ModelSpec
from stemma.registry.records.manifest import (
    FileRef,
    ModelManifest,
    Run,
    Tokenizer,
    Weights,
    model_record,
)
from stemma.registry.rules import status
from stemma.registry.rules.commits import settle
from stemma.registry.rules.layout import (
    DATA_FILE,
    EXPLORATION_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PIPELINE_FILE,
    SETTINGS_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
)
from stemma.registry.store.files import file_hashes, read_json
from stemma.registry.store.tree import WorkTree
from stemma.registry.store.yamlio import conflict_line

from .adapters import ADAPTER_CONFIG, ADAPTER_DIR, read_adapter_config
from .architectures import build_module
from .doctor import REPRODUCIBLE, machine_numerics, predict
from .gating import gate_records
from .merge import recheck
from .quantize import recorded_gates
from .shards import weights_files
from .tokenizer import TOKENIZER_DIR, checked_files
from .weights import load_weights

GPU_ABS_TOLERANCE = 0.02
"""Absolute part of the metric tolerance when either build ran on CUDA."""
GPU_REL_TOLERANCE = 0.05
"""Relative part of the metric tolerance when either build ran on CUDA."""
CPU_WEIGHTS_TOLERANCE = 1e-3
"""Max absolute difference per tensor for CPU builds to count as numerically equivalent."""
GPU_WEIGHTS_TOLERANCE = 5e-2
"""Max absolute difference per tensor when either build ran on CUDA."""
CPU_METRIC_TOLERANCE = 0.005
"""Absolute metric tolerance for CPU builds to count as numerically equivalent."""
IDENTICAL, EQUIVALENT, DIFFERENT = "identical", "numerically equivalent", "different"
PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class Finding:
    """The outcome of one verification item."""

    item: str
    status: str  # pass, fail or skip
    message: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"item": self.item, "status": self.status, "message": self.message}


@dataclass(frozen=True)
class Verification:
    """Every finding for one model; `ok` when none failed."""

    model: str
    findings: list[Finding] = field(default_factory=list)
    rebuild: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when no item failed."""
        return all(f.status != FAIL for f in self.findings)

    @property
    def failures(self) -> list[Finding]:
        """The failed items."""
        return [f for f in self.findings if f.status == FAIL]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        doc: dict[str, Any] = {
            "model": self.model,
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
        }
        if self.rebuild is not None:
            doc["rebuild"] = self.rebuild
        return doc


def _recorded_file(reg: Registry, name: str, item: str, block: FileRef | Weights) -> Finding:
    """Compare one file a manifest records (its `path`, md5, sha256, bytes) with the file."""
    own = block.path
    rel = reg.rel("models", name, own)
    path = reg.model_dir(name) / own
    if not path.is_file() and not path.is_symlink():
        return Finding(item, FAIL, f"{rel} is missing; check it out (dvc checkout)")
    try:
        found = file_hashes(path, reg.repo_root, rel)
    except (StemmaError, OSError) as exc:  # a link out, a device, a folder in its place
        why = exc.message if isinstance(exc, StemmaError) else f"{rel}: {exc.strerror}"
        return Finding(item, FAIL, why)
    recorded = {"md5": block.md5, "sha256": block.sha256, "bytes": block.bytes}
    bad = [k for k, v in recorded.items() if found[k] != v]
    if bad:
        return Finding(item, FAIL, f"{rel} does not match the manifest ({', '.join(bad)} differ)")
    return Finding(item, PASS, f"{rel}: md5, sha256 and size match the manifest")


def _weights(reg: Registry, manifest: ModelManifest, name: str) -> Finding:
    """The weights file, or a sharded model's index and every shard it records."""
    index = _recorded_file(reg, name, "weights", manifest.weights)
    shards = manifest.weights.shards
    if not shards or index.status != PASS:
        return index
    for shard in shards:
        found = _recorded_file(reg, name, "weights", shard)
        if found.status != PASS:
            return found
    return Finding(
        "weights",
        PASS,
        f"{index.message.split(':')[0]} and its {len(shards)} shards match"
        " the manifest (md5, sha256, size)",
    )


def _adapter(reg: Registry, manifest: ModelManifest, name: str) -> Finding | None:
    """A LoRA model's adapter config: hashed as the manifest recorded it, and its content
    checked as peft would need it (None for a model without an adapter)."""
    if manifest.adapter is None:
        return None
    block = manifest.adapter.config  # the schema requires it, hashed
    rel = reg.rel("models", name, ADAPTER_DIR, ADAPTER_CONFIG)
    if block.path != f"{ADAPTER_DIR}/{ADAPTER_CONFIG}":
        return Finding(
            "adapter", FAIL, f"{found_path(reg, name)} at /adapter/config/path: not {rel}"
        )
    hashed = _recorded_file(reg, name, "adapter", block)
    if hashed.status == FAIL:
        return hashed
    try:  # the bytes the build recorded: a check of what peft will be handed
        read_adapter_config(reg.model_dir(name) / ADAPTER_DIR / ADAPTER_CONFIG, rel, reg.repo_root)
    except StemmaError as exc:
        return Finding("adapter", FAIL, exc.message)
    return Finding("adapter", PASS, f"{rel}: hashes match the manifest, a valid LoRA config")


def _tokenizer(reg: Registry, tokenizer: Tokenizer, name: str) -> Finding:
    """A causal LM's tokenizer files: exactly those whose sha256 the manifest records."""
    shown = reg.rel("models", name, TOKENIZER_DIR)
    try:
        files = checked_files(reg.model_dir(name), tokenizer, shown, reg.repo_root)
    except StemmaError as exc:
        return Finding("tokenizer", FAIL, exc.message)
    return Finding("tokenizer", PASS, f"{shown}: {len(files)} files match the manifest's sha256")


def found_path(reg: Registry, name: str) -> str:
    """The manifest's repo-relative path (for messages)."""
    return reg.rel("models", name, MANIFEST_FILE)


def _metrics_file(reg: Registry, manifest: ModelManifest, name: str) -> Finding:
    path = reg.model_dir(name) / METRICS_FILE
    rel = reg.rel("models", name, METRICS_FILE)
    if not path.is_file():
        return Finding("metrics", SKIP, f"{rel} does not exist")
    if read_json(path) != dict(manifest.metrics):
        return Finding("metrics", FAIL, f"{rel} differs from the manifest's metrics")
    return Finding("metrics", PASS, f"{rel} matches the manifest's metrics")


def _staleness(reg: Registry, manifest: ModelManifest, name: str) -> list[Finding]:
    out = []
    try:
        spec = reg.model_spec(name)
    except ModelNotFound:
        spec = None
    # the status rule's inputs, gathered as `ls` gathers them (`status.gather`)
    inputs = status.gather(
        spec.digest if spec is not None else None,
        status.Built.of(manifest.to_dict()),
        dataset_id=lambda ds: current_dataset_id(reg, ds),
    )
    if spec is None:
        out.append(Finding("spec", SKIP, "no spec (registered weights)"))
    elif inputs.staleness() == status.SPEC_CHANGED:
        out.append(Finding("spec", FAIL, f"{spec.path} changed since the build; run `dvc repro`"))
    else:
        out.append(Finding("spec", PASS, f"{spec.path} is the spec the build used"))
    out += _data_findings(inputs)
    if manifest.source is None:
        out.append(Finding("source", SKIP, "no source model"))
        return out
    for model, recorded in manifest.recorded_parents():  # a merge: each of its parents
        out.append(_parent_finding(reg, model, recorded))
    return out


def _data_findings(inputs: status.StatusInputs) -> list[Finding]:
    """Whether each dataset the build recorded still has the manifest id it recorded."""
    out = []
    changed = dict(inputs.changed_datasets())
    for ds, recorded, now in inputs.datasets:
        if ds not in changed:
            out.append(Finding("data", PASS, f"dataset {ds!r} is the one the build used"))
        elif now is None:
            out.append(
                Finding(
                    "data",
                    FAIL,
                    f"dataset {ds!r} has no manifest now (recorded {recorded[7:19]});"
                    " run `dvc repro`",
                )
            )
        else:
            out.append(
                Finding(
                    "data",
                    FAIL,
                    f"dataset {ds!r} changed since the build (recorded {recorded[7:19]},"
                    f" now {now[7:19]}); run `dvc repro`",
                )
            )
    return out


def _parent_finding(reg: Registry, model: str, recorded: str) -> Finding:
    """Whether the parent `model` still has the manifest id the build recorded for it."""
    parent = reg.model_manifest(model) if reg.has_model(model) else None
    if parent is None:  # the status rule (`ls`) has nothing to compare: not stale for it either
        return Finding(
            "source",
            SKIP,
            f"source model {model!r} has no manifest; the recorded id"
            f" {recorded[7:19]} cannot be compared (build it: dvc repro)",
        )
    if status.staleness(None, None, parent.id, recorded) == status.SOURCE_CHANGED:
        return Finding(
            "source",
            FAIL,
            f"source model {model!r} changed since the build (recorded"
            f" {recorded[7:19]}, now {parent.id[7:19]}); run `dvc repro`",
        )
    return Finding("source", PASS, f"source {model} {recorded[7:19]}")


def _pipeline_files(reg: Registry, manifest: ModelManifest, name: str) -> Finding:
    """The model's dvc.yaml and dvc.lock are readable by DVC, and the lock records the weights
    the manifest names (the status rule's lock case: otherwise DVC has not cached them)."""
    folder = reg.rel("models", name)
    for filename in (PIPELINE_FILE, LOCK_FILE):
        rel = f"{folder}/{filename}"
        try:
            text = reg.tree.read_text(rel)
        except StemmaError as exc:
            return Finding("pipeline", FAIL, exc.message)
        line = conflict_line(text) if text is not None else None
        if line is not None:
            return Finding("pipeline", FAIL, f"{rel}:{line}: merge conflict markers")
    weights_md5 = status.Built.of(manifest.to_dict()).weights_md5
    if status.lock_changed(weights_md5, folder_locked_md5(reg, name)):
        return Finding(
            "pipeline",
            FAIL,
            f"{folder}/{LOCK_FILE} records other weights than the manifest (a build DVC did not"
            " record; DVC's cache lacks them): run `stemma repro`",
        )
    return Finding("pipeline", PASS, f"{folder}/{PIPELINE_FILE} and {LOCK_FILE} agree")


def _gates(manifest: ModelManifest, display: str) -> Finding:
    gates = ModelSpec.from_dict(manifest.name, manifest.spec).gates  # the spec as built
    rows = gate_records(gates, manifest.metrics, manifest.per_class, display)
    if manifest.quantize is not None:  # the drop against the parent: migration/quantize.py
        rows += recorded_gates(manifest)
    if [g.to_dict() for g in rows] != [g.to_dict() for g in manifest.gates]:  # as JSON
        return Finding("gates", FAIL, "recorded gate results differ from the recorded metrics")
    failed = [
        f"{g.metric} {g.op} {g.threshold} (value {g.value})" for g in manifest.gates if not g.passed
    ]
    if failed:
        return Finding("gates", FAIL, "failed gates: " + "; ".join(failed))
    return Finding("gates", PASS, f"{len(rows)} gates pass" if rows else "no gates declared")


def _checks(manifest: ModelManifest) -> Finding:
    checks = dict(manifest.checks or {})
    failed = []
    for check in sorted(checks):
        if not checks[check].passed:
            why = "; ".join(checks[check].violations) or "failed"
            failed.append(f"{check} ({why})")
    if failed:
        return Finding("checks", FAIL, "failed checks: " + ", ".join(failed))
    if not checks:
        return Finding("checks", SKIP, "no checks recorded")
    return Finding("checks", PASS, f"recorded checks pass: {', '.join(sorted(checks))}")


def _frozen(reg: Registry, manifest: ModelManifest, name: str) -> Finding:
    rows = [r for r in manifest.architecture.tensors if r.frozen]
    source = manifest.source
    if manifest.adapter is not None:
        return Finding("frozen", SKIP, "an adapter stores no base tensors; its base is checked")
    if not rows or source is None:
        return Finding("frozen", SKIP, "no frozen tensors from a source")
    if manifest.merge is not None:  # every tensor is the merge of its parents': recomputed
        passed, message = recheck(reg, manifest, name)
        return Finding("frozen", PASS if passed else FAIL, message)
    with torch.random.fork_rng(devices=[]):
        module = build_module(manifest.architecture.config, reg.settings.entrypoints, name)
    # Buffers are never trainable, so rows mark them frozen; only parameters are held fixed.
    params = {n for n, _ in module.named_parameters()}
    rows = [r for r in rows if r.origin == "transferred" and r.name in params]
    if not rows:
        return Finding("frozen", SKIP, "no frozen tensors transferred from the source")
    src = source.model
    found = reg.model_manifest(src)
    src_manifest = model_record(found) if found else None
    src_file = src_manifest.weights.path if src_manifest else WEIGHTS_FILE
    src_path = reg.model_dir(src) / src_file
    if src_manifest is None or not src_path.is_file():
        return Finding("frozen", FAIL, f"source model {src!r} has no weights to compare with")
    if _weights(reg, src_manifest, src).status != PASS:
        return Finding(
            "frozen", FAIL, f"{reg.rel('models', src, src_file)} does not match its manifest"
        )
    own = manifest.weights.path
    path = reg.model_dir(name) / own
    if not path.is_file():
        return Finding("frozen", FAIL, f"{reg.rel('models', name, own)} is missing")
    try:
        target = load_weights(path, reg.rel("models", name, own))
        source_state = load_weights(src_path, reg.rel("models", src, src_file))
    except BuildError as exc:
        return Finding("frozen", FAIL, exc.message)
    changed = []
    for row in rows:
        mine = target.get(row.name)
        theirs = source_state.get(row.source_name) if row.source_name is not None else None
        if (
            mine is None
            or theirs is None
            or mine.dtype != theirs.dtype
            or mine.shape != theirs.shape
            or not torch.equal(mine, theirs)
        ):
            changed.append(row.name)
    if changed:
        return Finding(
            "frozen",
            FAIL,
            f"frozen tensors differ from source {src}: {', '.join(changed)}"
            f" ({reg.rel('models', name, WEIGHTS_FILE)} changed by hand?)",
        )
    return Finding("frozen", PASS, f"{len(rows)} frozen tensors equal source {src} bit for bit")


def verify_model(
    reg: Registry, name: str, rebuild: bool = False, machine: Mapping[str, Any] | None = None
) -> Verification:
    """Check a built model against its current files; with `rebuild`, rebuild and compare.

    `machine`: this machine's numerics (`doctor.machine_numerics`), when the caller has them.
    """
    findings: list[Finding] = []
    if isinstance(reg.tree, WorkTree):  # a build killed mid-switch: finish it, never read it torn
        settle(reg.root)
    try:
        found = reg.model_manifest(name)
    except StemmaError as exc:
        return Verification(name, [Finding("schema", FAIL, exc.message)])
    if found is None:
        if not reg.has_model(name):
            raise ModelNotFound(name, hint=Registry._hint(name, reg.model_names()))
        raise BuildError(
            f"{reg.rel('models', name)}: model {name!r} has not been built; run `dvc repro`"
        )
    manifest = model_record(found)
    try:
        reg.model_spec(name)
        findings.append(Finding("schema", PASS, "spec and manifest match their schemas"))
    except ModelNotFound:
        findings.append(Finding("schema", PASS, "manifest matches its schema"))
    except StemmaError as exc:
        findings.append(Finding("schema", FAIL, exc.message))
    if found.computed_id != found.id:
        findings.append(
            Finding("id", FAIL, f"{found.path}: content no longer matches its id (edited?)")
        )
    else:
        findings.append(Finding("id", PASS, f"manifest id {found.id[7:19]} matches its content"))
    findings.append(_weights(reg, manifest, name))
    adapter = _adapter(reg, manifest, name)
    if adapter is not None:
        findings.append(adapter)
    if manifest.tokenizer is not None:  # a causal LM's tokenizer is part of the model
        findings.append(_tokenizer(reg, manifest.tokenizer, name))
    findings.append(_metrics_file(reg, manifest, name))
    findings.append(_pipeline_files(reg, manifest, name))
    try:
        findings += _staleness(reg, manifest, name)
    except StemmaError as exc:
        findings.append(Finding("source", FAIL, exc.message))
    findings.append(_gates(manifest, found.path))
    findings.append(_checks(manifest))
    findings.append(_frozen(reg, manifest, name))
    if not rebuild:
        return Verification(name, findings)
    comparison = rebuild_and_compare(reg, name, machine=machine)
    findings.append(Finding("rebuild", PASS if comparison["ok"] else FAIL, comparison["message"]))
    return Verification(name, findings, comparison)


# -- rebuild ----------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _needed_datasets(reg: Registry, name: str) -> set[str]:
    """Datasets the build of `name` reads: its own, and its source's training data."""
    spec = reg.model_spec(name)
    names = set(spec.dataset_refs().values())
    manifest = reg.model_manifest(name)
    for model, _ in model_record(manifest).recorded_parents() if manifest else ():  # a merge
        parent = reg.model_manifest(model)
        train = model_record(parent).dataset("train") if parent else None
        if train:
            names.add(train)
    return names


def stage_copy(reg: Registry, name: str, folder: Path) -> Registry:
    """A registry in `folder` holding only what building `name` reads (never the working tree).

    stemma.yaml; the model's spec (and exploration.json); the source's spec, manifest and
    weights; each dataset's spec, manifest and data. The model's own outputs are not copied.
    """
    base = reg.repo_root
    _copy(base / SETTINGS_FILE, folder / SETTINGS_FILE)
    root = folder / Path(reg.rel())
    for sub in ("models", "datasets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    mine = Path("models", name)
    for file in (SPEC_FILE, EXPLORATION_FILE):
        _copy(reg.root / mine / file, root / mine / file)
    spec = reg.model_spec(name)
    if spec.tokenizer is not None:  # a causal LM's tokenizer folder
        source = reg.resolve(spec.tokenizer, "/tokenizer", spec.path)
        for path in sorted(source.iterdir()) if source.is_dir() else ():
            _copy(path, root / spec.tokenizer / path.name)
    manifest = reg.model_manifest(name)
    for model, _ in model_record(manifest).recorded_parents() if manifest else ():  # a merge
        _copy_parent(reg, root, model)
    for dataset in sorted(_needed_datasets(reg, name)):
        rel = Path("datasets", dataset)
        for file in (SPEC_FILE, MANIFEST_FILE, DATA_FILE):
            _copy(reg.root / rel / file, root / rel / file)
    return Registry.open(folder)


def _copy_parent(reg: Registry, root: Path, model: str) -> None:
    """A parent's spec, manifest and weights into the copy; an adapter's config and its
    base too, which loading the adapter composes with."""
    theirs = Path("models", model)
    found = reg.model_manifest(model)
    built = model_record(found) if found else None
    block = built.weights if built else None
    adapter = built.adapter if built else None
    extra = [adapter.config.path] if adapter else []
    tokenizer = built.tokenizer if built else None  # a causal LM's own files
    extra += [f"tokenizer/{n}" for n in sorted(tokenizer.files if tokenizer else ())]
    for file in (SPEC_FILE, MANIFEST_FILE, *weights_files(block, WEIGHTS_FILE), *extra):
        _copy(reg.root / theirs / file, root / theirs / file)
    if adapter and adapter.base.model != model:
        _copy_parent(reg, root, adapter.base.model)


def _tolerances(devices: set[str]) -> dict[str, float]:
    if all(d.startswith("cpu") for d in devices):
        return {"weights_abs": CPU_WEIGHTS_TOLERANCE, "metric_abs": CPU_METRIC_TOLERANCE}
    return {
        "weights_abs": GPU_WEIGHTS_TOLERANCE,
        "metric_abs": GPU_ABS_TOLERANCE,
        "metric_rel": GPU_REL_TOLERANCE,
    }


def _close(recorded: float, rebuilt: float, tol: Mapping[str, float]) -> bool:
    """|rebuilt - recorded| <= abs + rel * |recorded|."""
    limit = tol["metric_abs"] + tol.get("metric_rel", 0.0) * abs(recorded)
    return math.isfinite(rebuilt) and abs(rebuilt - recorded) <= limit


def tensor_diffs(recorded: Path, rebuilt: Path) -> dict[str, float] | str:
    """Max absolute difference per tensor of two weights files, or why they cannot be compared."""
    try:
        a, b = load_weights(recorded), load_weights(rebuilt)
    except BuildError as exc:
        return exc.message
    if sorted(a) != sorted(b):
        return f"tensor names differ ({len(a)} recorded, {len(b)} rebuilt)"
    diffs: dict[str, float] = {}
    for name in sorted(a):
        x, y = a[name], b[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"tensor {name} is {list(x.shape)} {x.dtype}, rebuilt {list(y.shape)} {y.dtype}"
        if x.numel() == 0:
            diffs[name] = 0.0
        elif x.is_floating_point():
            diffs[name] = float((x.double() - y.double()).abs().max())
        else:
            diffs[name] = 0.0 if torch.equal(x, y) else math.inf
    return diffs


def _numerics(run: Run) -> str:
    n = run.numerics
    if n is None:
        return "not recorded"
    pinned = "pinned" if n.pinned else "not pinned"
    return f"{n.mode} ({pinned}) on {n.cpu.get('model') or '?'} {n.cpu.get('capability', '')}"


def compare_builds(
    recorded: ModelManifest,
    rebuilt: ModelManifest,
    diffs: Mapping[str, float] | str | None = None,
) -> dict[str, Any]:
    """The verdict on a rebuild: identical, numerically equivalent or different.

    `diffs` is `tensor_diffs` of the two weights files (None when there were none to read:
    then only identical bytes count).
    """
    devices = {recorded.run.device or "cpu", rebuilt.run.device or "cpu"}
    tol = _tolerances(devices)
    same_weights = recorded.weights.sha256 == rebuilt.weights.sha256
    same_id = recorded.id == rebuilt.id
    metrics: dict[str, dict[str, float | None]] = {}
    bad_metrics = []
    for key in sorted(set(recorded.metrics) | set(rebuilt.metrics)):
        a, b = recorded.metrics.get(key), rebuilt.metrics.get(key)
        metrics[key] = {"recorded": a, "rebuilt": b}
        if a is None or b is None or not _close(a, b, tol):
            bad_metrics.append(f"{key} {a} -> {b}")
    worst = ("", 0.0)
    problems = []
    if isinstance(diffs, str):
        problems.append(diffs)
    elif diffs:
        worst = max(diffs.items(), key=lambda kv: kv[1])
        if worst[1] > tol["weights_abs"]:
            problems.append(f"tensor {worst[0]} differs by {worst[1]:.3g}")
    elif not same_weights:
        problems.append("weights differ and the recorded weights could not be read")
    if bad_metrics:
        problems.append("metrics differ: " + ", ".join(bad_metrics))
    if same_weights and not same_id:  # which blocks moved: compared as the documents hold them
        was, now = recorded.to_dict(), rebuilt.to_dict()
        keys = sorted(
            k for k in set(was) | set(now) if k not in ("id", "run") and was.get(k) != now.get(k)
        )
        problems.append(f"manifest id differs (in {', '.join(keys) or 'id'})")
    numerics = {
        "recorded": None if recorded.run.numerics is None else recorded.run.numerics.to_dict(),
        "rebuilt": None if rebuilt.run.numerics is None else rebuilt.run.numerics.to_dict(),
    }
    side = f"numerics: recorded {_numerics(recorded.run)}, rebuilt {_numerics(rebuilt.run)}"
    if same_weights and same_id:
        verdict = IDENTICAL
        message = f"rebuild identical: weights {rebuilt.weights.sha256[7:19]}"
    elif not problems:
        verdict = EQUIVALENT
        rel = f" + {tol['metric_rel']:g} x |value|" if "metric_rel" in tol else ""
        message = (
            f"rebuild numerically equivalent: max abs difference {worst[1]:.3g}"
            f"{' in ' + worst[0] if worst[0] else ''} (tolerance {tol['weights_abs']:g} per"
            f" tensor, metrics within {tol['metric_abs']:g}"
            f"{rel}); {side}"
        )
    else:
        verdict = DIFFERENT
        message = f"rebuild different: {'; '.join(problems)}; {side}"
    return {
        "ok": verdict != DIFFERENT,
        "verdict": verdict,
        "message": message,
        "devices": sorted(devices),
        "tolerance": tol,
        "weights": {
            "recorded": recorded.weights.sha256,
            "rebuilt": rebuilt.weights.sha256,
            "identical": same_weights,
            "max_abs_diff": None if not isinstance(diffs, Mapping) else dict(diffs),
        },
        "metrics": metrics,
        "id": {"recorded": recorded.id, "rebuilt": rebuilt.id, "identical": same_id},
        "numerics": numerics,
    }


def _build_in(folder: Path, name: str) -> None:
    """`stemma build model NAME` in a fresh process: the numeric mode is pinned as in DVC."""
    args = [sys.executable, "-m", "stemma.cli.app", "build", "model", name, "-q", "-C", str(folder)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise BuildError(f"rebuild of {name!r} failed: {lines[-1]}")


def rebuild_and_compare(
    reg: Registry, name: str, machine: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Rebuild `name` in a temporary copy and compare it with the recorded build.

    Before building, this machine's numerics fingerprint (`doctor`) says whether the recorded
    bits can come back here: when they can, only an identical rebuild passes; when they
    cannot (or nothing can be promised), a numerically equivalent one does.
    """
    found = reg.model_manifest(name)
    if found is None:
        raise BuildError(f"{reg.rel('models', name)}: model {name!r} has not been built")
    try:
        reg.model_spec(name)
    except ModelNotFound:
        raise BuildError(
            f"{reg.rel('models', name)}: model {name!r} was registered from weights, not built"
            " from a spec; there is nothing to rebuild"
        ) from None
    was = model_record(found)
    before = predict(name, was.run, machine if machine is not None else machine_numerics(reg))
    with tempfile.TemporaryDirectory(prefix="stemma-rebuild-") as tmp:
        copy = stage_copy(reg, name, Path(tmp))
        _build_in(Path(tmp), name)
        rebuilt = copy.model_manifest(name)
        if rebuilt is None:
            raise BuildError(f"rebuild of {name!r} wrote no manifest")
        now = model_record(rebuilt)
        mine = reg.model_dir(name) / was.weights.path
        theirs = copy.model_dir(name) / now.weights.path
        diffs = tensor_diffs(mine, theirs) if mine.is_file() else None
        out = compare_builds(was, now, diffs)
        out["machine"] = before.to_dict()
        if before.verdict == REPRODUCIBLE and out["verdict"] == EQUIVALENT:
            out.update(ok=False, verdict=DIFFERENT)
            out["message"] = (
                "rebuild different: this machine's numerics match the build's, so the bits"
                " should have come back, yet " + out["message"].removeprefix("rebuild ")
            )
        elif out["verdict"] != IDENTICAL:
            out["message"] += f" ({before.reason})"
        return out
