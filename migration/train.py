"""The training loop: seeded, deterministic on CPU, bf16 autocast on CUDA, frozen-prefix cache.

When the leading stages of a network hold only frozen parameters, their output is computed
once (eval mode, no grad) and each epoch trains only the rest on those cached features: a
linear probe never re-runs its backbone. Frozen prefix stages always run in eval mode, so the
cached and the recomputed paths compute the same function.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from stemma.registry.errors import BuildError
from stemma.registry.taskspec import LOSSES as TASK_LOSSES
from torch import nn

from . import optim
from .architectures import FeatureStage, head_of, stages
from .evaluate import autocast, predict
from .families import input_dtype
from .strategy import hold_in_eval
from .tasks import for_labels

OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = tuple(dict.fromkeys(loss for names in TASK_LOSSES.values() for loss in names))
Progress = Callable[[int, int, Mapping[str, Any]], None]
# CPU builds use a fixed intra-op thread count: float reductions split across a varying number
# of threads can differ in the last bit, and small models train no slower on one thread (and
# far faster when other processes compete for the cores).
CPU_THREADS = 1


@dataclass(frozen=True)
class TrainConfig:
    """The resolved `training:` block."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float | None = None  # None: the optimizer's customary default
    momentum: float = 0.0
    loss: str | None = None  # None: the task's default (`taskspec.LOSSES`)
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True

    @classmethod
    def from_spec(
        cls,
        block: Mapping[str, Any],
        display: str = "spec.yaml",
        defaults: Mapping[str, Any] | None = None,
    ) -> TrainConfig:
        """Read a training block over registry defaults; unknown choices raise BuildError."""
        merged = {**dict(defaults or {}), **dict(block)}
        merged.pop("search", None)  # hyper-parameter search is resolved before training
        known = set(cls.__dataclass_fields__)
        unknown = sorted(k for k in merged if k not in known)
        if unknown:
            key = unknown[0]
            where = (
                f"{display} at /training" if key in block else "stemma.yaml at /defaults/training"
            )
            raise BuildError(f"{where}/{key}: unknown training setting")
        cfg = cls(**merged)
        if cfg.optimizer not in OPTIMIZERS:
            raise BuildError(
                f"{display} at /training/optimizer: unknown optimizer"
                f" {cfg.optimizer!r}; use one of {', '.join(OPTIMIZERS)}"
            )
        if cfg.loss is not None and cfg.loss not in LOSSES:
            raise BuildError(
                f"{display} at /training/loss: unknown loss {cfg.loss!r};"
                f" use one of {', '.join(LOSSES)}"
            )
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise BuildError(f"{display} at /training/device: unknown device {cfg.device!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The resolved block."""
        return asdict(self)


@dataclass
class TrainResult:
    """What training produced besides the updated module."""

    curve: list[dict[str, Any]] = field(default_factory=list)
    features_cached: bool = False
    device: str = "cpu"
    deterministic: bool = True
    train_seconds: float = 0.0
    samples_per_s: float = 0.0
    threads: int = 1


def resolve_device(name: str) -> torch.device:
    """'auto' is cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BuildError("training.device is cuda but no CUDA device is available")
    return torch.device(name)


def make_optimizer(
    params: Sequence[nn.Parameter], cfg: TrainConfig, display: str = "spec.yaml"
) -> optim.Optimizer:
    """The optimizer the config names (torch.optim's update rules, see migration/optim.py)."""
    if cfg.optimizer == "sgd":
        return optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay or 0.0
        )
    if cfg.optimizer == "adam":
        return optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay or 0.0)
    if cfg.optimizer == "adamw":
        wd = 0.01 if cfg.weight_decay is None else cfg.weight_decay  # torch.optim.AdamW's
        return optim.Adam(params, lr=cfg.lr, weight_decay=wd, decoupled=True)
    raise BuildError(
        f"{display} at /training/optimizer: unknown optimizer {cfg.optimizer!r};"
        f" use one of {', '.join(OPTIMIZERS)}"
    )


@contextmanager
def cpu_threads(device: torch.device) -> Iterator[None]:
    """On the CPU, torch runs `CPU_THREADS` intra-op threads inside the block (see there)."""
    prior = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(prior)


def set_deterministic(mode: bool) -> None:
    """`torch.use_deterministic_algorithms(mode)` without loading the compiler stack.

    torch's public function does two things: it sets ATen's flag (`torch._C.
    _set_deterministic_algorithms`, what makes eager kernels pick deterministic algorithms
    or refuse to run) and `torch._inductor.config.deterministic`, which only compiled graphs
    read. Importing that config imports torch._inductor and torch._dynamo: 1.0 s on its own,
    against 1.1 s for `import torch` (`benchmarks/bench_build.py --startup`,
    `import_torch_deterministic_s`), and a build never compiles. So the flag is set through
    the private binding (the one torch's function calls, unchanged since torch 1.11), and
    inductor's setting only where something else has loaded it. tests/test_optim.py checks
    that torch reads the flag back and that eager kernels obey it.
    """
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = mode
    torch._C._set_deterministic_algorithms(mode)


def frozen_prefix(module: nn.Module) -> int:
    """How many leading stages can be cached: no trainable parameter, no dropout.

    Returns 0 unless the prefix holds at least one (frozen) parameter.
    """
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    count, params = 0, 0
    for name, stage, names in stages(module):
        if name == "head" or isinstance(stage, nn.Dropout) or trainable.intersection(names):
            break
        count += 1
        params += len(names)
    return count if params else 0


def _hold_eval(prefix: Sequence[nn.Module]) -> None:
    """Frozen prefix stages run in eval mode (batch-norm statistics and dropout stay fixed)."""
    for stage in prefix:
        if isinstance(stage, FeatureStage):
            stage.inner[0].eval()
            head_of(stage.inner[0]).train()  # the head is never part of a prefix
        else:
            stage.eval()


def train(
    module: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    cfg: TrainConfig,
    *,
    features: str = "cached",
    progress: Progress | None = None,
    display: str = "spec.yaml",
) -> TrainResult:
    """Train `module` in place; returns the per-epoch curve and how training ran."""
    device = resolve_device(cfg.device)
    deterministic = device.type == "cpu"
    amp = cfg.amp and device.type == "cuda"
    prior = torch.are_deterministic_algorithms_enabled()
    set_deterministic(deterministic)
    try:
        with cpu_threads(device):
            return _train(
                module,
                x_train,
                y_train,
                x_eval,
                y_eval,
                cfg,
                device,
                amp,
                features,
                progress,
                display,
                deterministic,
            )
    finally:
        set_deterministic(prior)


def _train(
    module: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    amp: bool,
    features: str,
    progress: Progress | None,
    display: str,
    deterministic: bool,
) -> TrainResult:
    torch.manual_seed(cfg.seed)  # dropout draws from the global generator
    module.to(device)
    parts = stages(module)
    k = frozen_prefix(module) if features == "cached" else 0
    prefix = [m for _, m, _ in parts[:k]]
    suffix = nn.Sequential(*(m for _, m, _ in parts[k:]))
    dtype = input_dtype(module)  # token ids stay int64; everything else is float32
    xt = torch.as_tensor(x_train, dtype=dtype).to(device)
    xe = torch.as_tensor(x_eval, dtype=dtype).to(device)
    task = for_labels(y_train)  # the stored labels' dtype and shape say the task
    loss_name = task.resolve_loss(cfg.loss, display)
    yt = task.target(y_train).to(device)
    ye = task.target(y_eval).to(device)
    if k:
        stem = nn.Sequential(*prefix)
        stem.eval()
        # computed once; every epoch below starts from these features
        xt, xe = predict(stem, xt, amp=amp), predict(stem, xe, amp=amp)
        step_fn: Callable[[torch.Tensor], torch.Tensor] = suffix
    else:
        step_fn = module
    eval_fn = suffix if k else module
    frozen_all = frozen_prefix(module)
    frozen_stages = [m for _, m, _ in parts[:frozen_all]]
    params = [p for p in module.parameters() if p.requires_grad]
    if not params and cfg.epochs > 0:
        raise BuildError(f"{display} at /strategy: every parameter is frozen; nothing to train")
    opt = make_optimizer(params, cfg, display) if params else None
    gen = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult(
        features_cached=bool(k),
        device=str(device),
        deterministic=deterministic,
        threads=torch.get_num_threads(),
    )
    n = len(yt)
    spent = 0.0
    for epoch in range(1, cfg.epochs + 1):
        begin = time.perf_counter()
        module.train()
        _hold_eval(frozen_stages)
        hold_in_eval(module)  # frozen batch-norm keeps the source's statistics
        order = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            xb, yb = xt[idx], yt[idx]
            with autocast(device, amp):
                out = step_fn(xb)
            loss = task.loss(out, yb, loss_name, cfg.label_smoothing)
            assert opt is not None
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            loss_sum += loss.detach() * len(idx)
            hits = task.hits(out, yb)
            if hits is not None:
                correct += hits
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent += time.perf_counter() - begin
        module.eval()
        ev = task.scores(predict(eval_fn, xe, amp=amp), ye, loss_name)
        hit_count = int(correct.item()) if task.counts_hits else None
        row = task.curve_row(epoch, float(loss_sum.item()) / n, hit_count, n, ev)
        result.curve.append(row)
        if progress is not None:
            progress(epoch, cfg.epochs, row)
    module.eval()
    result.train_seconds = spent
    result.samples_per_s = n * cfg.epochs / spent if spent > 0 else 0.0
    return result
