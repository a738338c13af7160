"""Merges: a model built from the weights of two or more parents, with mergekit's methods.

`source: {relation: merge, models: [A, B, ...], base: C?, merge: {method: ..., ...}}`.
The four methods follow mergekit 0.1.5's definitions (`mergekit.merge_methods`: `linear`,
the generalized task arithmetic behind `task_arithmetic` and `ties`, `slerp`) with its
parameter names and defaults; tests compare each with mergekit's own functions on the same
tensors. One adapter model alone (`models: [ADAPTER]`) is that adapter merged into its base,
through peft's `merge_and_unload` (`adapters.compose`).

A merge runs on the CPU in float32 and is deterministic: no randomness (TIES keeps the
largest differences by magnitude, ties broken by position). Tensors that are not floating
point (integer buffers) are taken from the base (or the first model). The manifest records
per tensor which parents contributed; the merged model is evaluated on the spec's eval data
and gated like any build.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.records.core import MergeSettings, ModelSpec
from stemma.registry.records.manifest import (
    Architecture,
    Merge,
    MergeTensor,
    ModelManifest,
    Parameters,
    Tokenizer,
)
from stemma.registry.rules.layout import MANIFEST_FILE
from stemma.registry.rules.parents import NEEDS_BASE, combined_id, parent_refs, parents_of, problems
from stemma.registry.rules.taskspec import CAUSAL_LM
from torch import nn

from .architectures import build_module
from .build_inputs import head_width, load_source, refuse_failed_source, training_data
from .build_outputs import run_record, write_model
from .evaluate import evaluate
from .gating import gate_records
from .hubsnapshot import inherited_tokenizer
from .mapping import plan as map_plan
from .mapping import report, transfer
from .model_manifest import Head, merge_source
from .quantize_eval import scoring
from .tasks import get as get_task
from .weights import load_weights

# -- the methods (mergekit's definitions) ---------------------------------------------------


def linear(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True
) -> torch.Tensor:
    """Weighted sum of the tensors, divided by the sum of the weights when `normalize`."""
    out = torch.zeros_like(tensors[0], dtype=torch.float32)
    for tensor, w in zip(tensors, weights, strict=True):
        out.add_(tensor.to(torch.float32), alpha=float(w))
    if normalize:
        out.div_(float(sum(weights)))
    return out


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """The `density` share of `delta`'s entries with the largest magnitude kept, the rest 0
    (mergekit's `sparsify.magnitude`: at least one entry kept while density > 0)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    order = torch.argsort(delta.abs().reshape(-1), descending=True, stable=True)[:k]
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[order] = 1
    return delta * mask.reshape_as(delta)


def task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: Sequence[float] | None = None,
    normalize: bool = False,
    lam: float = 1.0,
    consensus: bool = False,
) -> torch.Tensor:
    """base + lambda * the weighted sum of the models' differences from base; with
    `density`, each difference sparsified by magnitude first; with `consensus` (TIES), only
    the entries agreeing with the sign of the summed differences count. `normalize` divides
    by the sum of the weights that counted (mergekit's generalized task arithmetic)."""
    base32 = base.to(torch.float32)
    deltas = torch.stack(
        [
            magnitude_mask(t.to(torch.float32) - base32, d)
            for t, d in zip(tensors, density or [1.0] * len(tensors), strict=True)
        ]
    )
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    w = w.reshape(-1, *([1] * base.dim()))
    deltas = deltas * w
    if consensus:
        majority = (deltas.sum(dim=0) >= 0).to(torch.float32) * 2 - 1
        mask = (deltas.sign() == majority).to(torch.float32)
        mixed = (deltas * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * lam
    return base32 + mixed


def ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: Sequence[float],
    normalize: bool = True,
    lam: float = 1.0,
) -> torch.Tensor:
    """TIES: trim each difference to its largest `density` share, elect the sign by the sum,
    add the agreeing differences (Yadav et al. 2023; mergekit's `ties`)."""
    return task_arithmetic(base, tensors, weights, density, normalize, lam, consensus=True)


def slerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995
) -> torch.Tensor:
    """Spherical interpolation from `v0` (t = 0) to `v1` (t = 1) over the whole tensor;
    nearly parallel tensors are interpolated linearly (mergekit's `slerp`)."""
    a = v0.to(torch.float32).reshape(-1)
    b = v1.to(torch.float32).reshape(-1)
    if a.numel() == 0:
        return ((1 - t) * a + t * b).reshape(v0.shape)
    eps = 1e-8
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        return ((1 - t) * a + t * b).reshape(v0.shape)
    theta = torch.acos(dot)
    s = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) / s) * a + (torch.sin(t * theta) / s) * b
    return out.reshape(v0.shape)


# -- the plan of a merge --------------------------------------------------------------------


@dataclass(frozen=True)
class MergePlan:
    """What a merge spec asks for: the models, the base, the method and its parameters."""

    models: tuple[str, ...]
    base: str | None
    method: str
    weights: tuple[float, ...]
    density: tuple[float, ...]
    t: float
    normalize: bool
    lam: float

    def parameters(self) -> dict[str, Any]:
        """The parameters as applied (defaults filled in), for the manifest."""
        out: dict[str, Any] = {"weight": list(self.weights)}
        if self.method == "ties":
            out["density"] = list(self.density)
        if self.method == "slerp":
            return {"t": self.t}
        if self.method != "linear":
            out["lambda"] = self.lam
        out["normalize"] = self.normalize
        return out


def _per_model(
    value: float | tuple[float, ...] | None, n: int, default: float, pointer: str, display: str
) -> tuple[float, ...]:
    if value is None:
        return (default,) * n
    if isinstance(value, tuple):
        if len(value) != n:
            raise BuildError(f"{display} at {pointer}: {len(value)} values for {n} models")
        return tuple(float(v) for v in value)
    return (float(value),) * n


def plan_of(spec: ModelSpec) -> MergePlan:
    """The merge a spec declares, with mergekit's defaults; located errors for what no
    method can take."""
    display = spec.path
    for pointer, message in problems(spec.raw):
        raise BuildError(f"{display} at {pointer}: {message}")
    src = spec.source
    assert src is not None  # `build` sends only a merge here (`is_merge`)
    models, base = src.models, src.base
    block = src.merge or MergeSettings()
    method = block.method or ("adapter" if len(models) == 1 else "")
    n = len(models)
    if method == "slerp" and base is None:  # two models: the first is where t = 0 starts
        base, models = models[0], models[1:]
        n = 1
    weights = _per_model(block.weight, n, 1.0, "/source/merge/weight", display)
    normalize = block.normalize
    if method in ("linear", "ties") and normalize is not False and sum(weights) == 0:
        raise BuildError(f"{display} at /source/merge/weight: the weights sum to 0")
    return MergePlan(
        models=models,
        base=base,
        method=method,
        weights=weights,
        density=_per_model(block.density, n, 1.0, "/source/merge/density", display),
        t=0.5 if block.t is None else float(block.t),
        normalize=method != "task_arithmetic" if normalize is None else bool(normalize),
        lam=1.0 if block.lam is None else float(block.lam),
    )


def merge_tensor(
    p: MergePlan, base: torch.Tensor | None, tensors: Sequence[torch.Tensor]
) -> torch.Tensor:
    """One tensor of the merged model by the plan's method."""
    if p.method == "linear":
        return linear(tensors, p.weights, p.normalize)
    if p.method == "slerp":
        assert base is not None
        return slerp(p.t, base, tensors[0])
    assert base is not None and p.method in NEEDS_BASE
    if p.method == "ties":
        return ties(base, tensors, p.weights, p.density, p.normalize, p.lam)
    return task_arithmetic(base, tensors, p.weights, None, p.normalize, p.lam)


def merge_states(
    p: MergePlan, states: Mapping[str, Mapping[str, torch.Tensor]], display: str
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The merged state dict (float32 for floating tensors) and, per tensor, the parents that
    contributed. Every parent must hold the same tensor names and shapes."""
    first = p.base if p.base is not None else p.models[0]
    names = list(states[first])
    for parent, state in states.items():
        if set(state) != set(names):
            odd = sorted(set(state) ^ set(names))[0]
            raise BuildError(
                f"{display} at /source/models: {parent!r} and {first!r} hold different tensors"
                f" ({odd!r} is in one only): a merge needs one architecture"
            )
    merged: dict[str, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    for name in names:
        ref = states[first][name]
        for parent, state in states.items():
            if state[name].shape != ref.shape:
                raise BuildError(
                    f"{display} at /source/models: tensor {name!r} of {parent!r} has shape"
                    f" {list(state[name].shape)}, of {first!r} {list(ref.shape)}"
                )
        if not ref.is_floating_point():
            merged[name] = ref.clone()
            rows.append({"name": name, "parents": [first]})
            continue
        base = states[p.base][name] if p.base is not None else None
        tensors = [states[m][name] for m in p.models]
        merged[name] = merge_tensor(p, base, tensors).contiguous()
        used = list(p.models) if p.method != "slerp" else [first, *p.models]
        if p.base is not None and p.method != "slerp":
            used = [p.base, *used]
        rows.append({"name": name, "parents": used})
    return merged, rows


# -- the build ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Merged:
    """A merge computed from its parents' stored tensors: what the build writes and what
    `stemma verify` compares the stored weights with."""

    plan: MergePlan
    manifests: Mapping[str, ModelManifest]
    state: dict[str, torch.Tensor]
    contributed: list[dict[str, Any]]
    base: str | None
    config: dict[str, Any]


def merged_from_parents(reg: Registry, spec: ModelSpec) -> Merged:
    """Load every parent (hash-checked against its manifest, as any source), check they
    share one architecture, and merge them on the CPU in float32."""
    display = spec.path
    p = plan_of(spec)
    manifests: dict[str, ModelManifest] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    for ref in parent_refs(spec):
        manifest, state = load_source(reg, spec, ref.name)
        refuse_failed_source(spec, ref.name, manifest)
        manifests[ref.name] = manifest
        states[ref.name] = {k: v.detach().to("cpu") for k, v in state.items()}
    first = p.base if p.base is not None else p.models[0]
    config = dict(manifests[first].architecture.config)
    if p.method == "adapter":
        adapter = manifests[first].adapter
        if adapter is None:
            raise BuildError(
                f"{display} at /source/models: a merge of one model merges an adapter into its"
                f" base, and {first!r} is no adapter; name two or more models and a method"
            )
        merged = {
            k: v.to(torch.float32) if v.is_floating_point() else v for k, v in states[first].items()
        }
        base_name: str | None = adapter.base.model
        contributed = [{"name": k, "parents": [first]} for k in merged]
    else:
        for name, manifest in manifests.items():
            if dict(manifest.architecture.config) != config:
                raise BuildError(
                    f"{display} at /source/models: {name!r} and {first!r} have different"
                    " architectures; a merge needs one"
                )
        with torch.no_grad():
            merged, contributed = merge_states(p, states, display)
        base_name = p.base
    return Merged(p, manifests, merged, contributed, base_name, config)


def recheck(reg: Registry, manifest: ModelManifest, name: str) -> tuple[bool, str]:
    """(passed, message): the merge recomputed from its parents' stored weights as they are
    now equals the stored merged weights bit for bit (`stemma verify`'s frozen check: every
    tensor of a merge comes from its parents). A parent whose weights no longer match its
    manifest, or that is gone, fails with the build's own message."""
    display = reg.rel("models", name, MANIFEST_FILE)
    spec = ModelSpec.from_dict(name, manifest.spec, display)
    own = manifest.weights.path
    try:
        done = merged_from_parents(reg, spec)
        stored = load_weights(reg.model_dir(name) / own, reg.rel("models", name, own))
    except BuildError as exc:
        return False, exc.message
    names = ", ".join(parents_of(spec))
    changed = [
        k
        for k in sorted(set(stored) | set(done.state))
        if k not in stored
        or k not in done.state
        or stored[k].dtype != done.state[k].dtype
        or stored[k].shape != done.state[k].shape
        or not torch.equal(stored[k], done.state[k])
    ]
    if changed:
        shown = ", ".join(changed[:8]) + (
            f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        )
        return False, (
            f"merged tensors differ from the {done.plan.method} merge of {names} as stored now:"
            f" {shown} ({reg.rel('models', name, own)} changed by hand, or a parent rebuilt:"
            " run `stemma repro`)"
        )
    return True, f"{len(stored)} tensors equal the {done.plan.method} merge of {names} bit for bit"


def build_merge(reg: Registry, spec: ModelSpec, started: str, begin: float) -> dict[str, Any]:
    """Build a merge spec: load and check every parent, merge on the CPU in float32,
    evaluate on the spec's eval data, gate, and write weights and manifest as one unit."""
    display = spec.path
    done = merged_from_parents(reg, spec)
    p, manifests, merged, config = done.plan, done.manifests, done.state, done.config
    contributed, base_name = done.contributed, done.base
    first = p.base if p.base is not None else p.models[0]
    keeper = _one_tokenizer(spec, done)
    recorded_task: str | None = None  # the manifest's `task`: None for classification
    if done.manifests[first].task == CAUSAL_LM:  # perplexity, as a quantized LM's
        found = scoring(reg, spec, first, done.manifests[first])
        datasets, recorded_task = found.datasets, found.recorded_task
        module = _module(reg, config, merged, display)
        scored = found.score(module)
        metrics = {m: scored[m] for m in found.metrics}
    else:
        train_data, eval_data, datasets = training_data(reg, spec)
        task = get_task(train_data.task)
        width = head_width(spec, task.name, train_data, eval_data)
        outputs = ArchitectureConfig.from_dict(config).num_classes
        if outputs not in (None, width):
            raise BuildError(
                f"{display} at /data/eval: the merged model has {outputs}"
                f" outputs, {spec.eval!r} needs {width}"
            )
        module = _module(reg, config, merged, display)
        scored = evaluate(module, eval_data.x_eval, eval_data.y_eval, "cpu")
        metrics = {m: scored[m] for m in task.metrics}
        if task.name != "classification":
            recorded_task = task.name
    reported, _ = report(module, None)  # every tensor comes from the parents: none is new
    rows = [replace(r, origin="transferred", frozen=True, source_name=r.name) for r in reported]
    total = sum(int(math.prod(r.shape)) for r in rows if r.kind == "parameter")
    parents = [(r.name, manifests[r.name].id) for r in parent_refs(spec)]
    combined = combined_id([i for _, i in parents])
    assert combined is not None  # every parent was loaded, so every one has its id
    source = merge_source(parents, combined)
    head = Head(
        spec.name,
        spec.to_dict(),
        spec.digest,
        source,
        datasets,
        Architecture.of(config, tuple(rows)),
        Parameters.of(total, 0, total),
    )
    merge = _merge_block(p, base_name, contributed)
    gates = gate_records(spec.gates, metrics, scored["per_class"], display)
    # the parents' one tokenizer, kept beside the merged weights as any child keeps its source's
    tokenizer, outputs = (
        inherited_tokenizer(reg, keeper, manifests[keeper]) if keeper else (None, {})
    )
    run = run_record(reg, started, begin, device="cpu", seed=0, deterministic=True)
    return write_model(
        reg,
        spec.name,
        lambda weights: head.manifest(
            weights,
            merge=merge,
            metrics=metrics,
            per_class=scored["per_class"],
            gates=gates,
            checks={},
            task=recorded_task,
            tokenizer=tokenizer,
            run=run,
        ),
        module.state_dict(),
        metrics,
        [],
        outputs,
    )


def _merge_block(p: MergePlan, base: str | None, contributed: Sequence[Mapping[str, Any]]) -> Merge:
    """The manifest's `merge` block: the method, its parameters as applied (none for an
    adapter merged into its base), the base (null without one), per tensor its parents."""
    return Merge(
        keys=("method", "parameters", "base", "tensors"),
        method=p.method,
        parameters={} if p.method == "adapter" else p.parameters(),
        base=base,
        tensors=tuple(
            MergeTensor(keys=("name", "parents"), name=str(c["name"]), parents=tuple(c["parents"]))
            for c in contributed
        ),
    )


def _module(
    reg: Registry, config: Mapping[str, Any], merged: Mapping[str, torch.Tensor], display: str
) -> nn.Module:
    """The parents' architecture holding the merged tensors, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        module = build_module(dict(config), reg.settings.entrypoints, display)
    transfer(module, merged, map_plan(merged, module.state_dict(), "exact", display))
    module.eval()
    return module


def _one_tokenizer(spec: ModelSpec, done: Merged) -> str | None:
    """The parent whose tokenizer the merge keeps (the first named), or None when no parent
    has one; a parent with another tokenizer, or with none beside one that has, is refused:
    the merged weights index one vocabulary."""
    refs = [r for r in parent_refs(spec) if r.name in done.manifests]
    blocks = {r.name: done.manifests[r.name].tokenizer for r in refs}
    if all(b is None for b in blocks.values()):
        return None
    first = refs[0].name
    want = _tokenizer_files(blocks[first])
    for ref in refs[1:]:
        have = _tokenizer_files(blocks[ref.name])
        if have != want:
            odd = sorted(set(have.items()) ^ set(want.items()))
            what = f"another tokenizer than {first!r} ({odd[0][0]} differs)"
            if not (have and want):
                what = f"a tokenizer and {first!r} none" if have else "no tokenizer"
            raise BuildError(
                f"{spec.path} at {ref.pointer}: {ref.name!r} has {what}; a merge needs the"
                " one tokenizer all its parents share"
            )
    return first


def _tokenizer_files(block: Tokenizer | None) -> dict[str, str]:
    """A tokenizer block's files (name -> sha256), none for a model without one."""
    return {} if block is None else dict(block.files)
