"""The training loop: seeded, deterministic on CPU, bf16 autocast on CUDA, frozen-prefix cache.

When the leading stages of a network hold only frozen parameters, their output is computed
once (eval mode, no grad) and each epoch trains only the rest on those cached features: a
linear probe never re-runs its backbone. Frozen prefix stages always run in eval mode, so the
cached and the recomputed paths compute the same function.
"""

from __future__ import annotations

import fnmatch
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from stemma.registry.errors import BuildError
from stemma.registry.records.core import MODEL_SPEC
from stemma.registry.rules.layout import SPEC_FILE
from stemma.registry.rules.taskspec import LOSSES as TASK_LOSSES
from stemma.registry.store.documents import validate_document
from torch import nn

from . import distributed as dist
from . import optim
from .architectures import FeatureStage, StagedNet, head_of, stages
from .checkpoint import Checkpointer
from .evaluate import autocast, predict
from .families import input_dtype
from .loopstate import EarlyStopping, Tracker, restore, snapshot
from .numerics import pinned_mode
from .schedules import Schedule
from .strategy import hold_in_eval
from .tasks import for_labels

OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = tuple(dict.fromkeys(loss for names in TASK_LOSSES.values() for loss in names))
Progress = Callable[[int, int, Mapping[str, Any]], None]
# CPU builds use a fixed intra-op thread count: float reductions split across a varying number
# of threads can differ in the last bit, and small models train no slower on one thread (and
# far faster when other processes compete for the cores). `benchmarks/bench_threads.py`
# measured both on 2 cores: matmul, conv2d and a long sum give other bits at 2 threads than
# at 1 (a per-dimension mean, cross-entropy and a gradient norm did not), and a small MLP/CNN
# build took 0.41 s / 1.54 s at 1 thread against 2.90 s / 10.0 s at 2 on the shared machine.
CPU_THREADS = 1


def thread_count() -> int:
    """Intra-op threads of a CPU build: `CPU_THREADS`, or every core for a build pinned to
    `native` numerics (which promises speed, not bits; the run block records the count)."""
    if pinned_mode() == "native":
        return os.cpu_count() or CPU_THREADS
    return CPU_THREADS


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
    # fine-tuning options (README "Training options"); at their defaults the loop is as before
    schedule: Schedule | None = None
    accumulate: int = 1
    clip_grad_norm: float | None = None
    early_stopping: EarlyStopping | None = None
    class_weights: str | tuple[float, ...] | None = None  # "balanced" or one per class
    lr_multipliers: tuple[tuple[str, float], ...] = ()  # (glob, factor): first match wins
    checkpoint_every: int | None = None  # epochs; None: by time (checkpoint.AUTO_INTERVAL_S)
    distributed: dist.Distributed | None = None  # data-parallel (migration/distributed.py)

    @classmethod
    def from_spec(
        cls,
        block: Mapping[str, Any],
        display: str = SPEC_FILE,
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
        # the schema is the one home of the fields' types and ranges (None stands for absent:
        # `to_dict` gives it for unset optional fields, and search reads that back)
        given = {k: v for k, v in merged.items() if v is not None}
        sched = given.get("schedule")
        if isinstance(sched, Mapping) and {"warmup_steps", "warmup_epochs"} <= set(sched):
            raise BuildError(
                f"{display} at /training/schedule: give warmup_steps or warmup_epochs, not both"
            )
        validate_document({"data": {"train": "x"}, "training": given}, MODEL_SPEC, display)
        cfg = cls(**_parsed(merged, display))
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
        if cfg.distributed is not None and cfg.distributed.sharded and cfg.checkpoint_every:
            raise BuildError(
                f"{display} at /training/checkpoint_every: a build with training.distributed."
                "strategy fsdp does not checkpoint (each process holds a shard); drop one"
            )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The resolved block (the spec's shapes: `from_spec` reads it back)."""
        doc = asdict(self)
        doc["schedule"] = self.schedule.to_dict() if self.schedule else None
        doc["early_stopping"] = self.early_stopping.to_dict() if self.early_stopping else None
        doc["lr_multipliers"] = dict(self.lr_multipliers)
        if isinstance(self.class_weights, tuple):
            doc["class_weights"] = list(self.class_weights)
        if self.distributed is None:  # absent, as before the option existed (checkpoint keys)
            del doc["distributed"]
        else:
            doc["distributed"] = self.distributed.to_dict()
        return doc


def _parsed(merged: Mapping[str, Any], display: str) -> dict[str, Any]:
    """The nested blocks of a (schema-valid) training block as the config holds them."""
    out = dict(merged)
    if isinstance(out.get("schedule"), Mapping):
        out["schedule"] = Schedule.from_spec(out["schedule"], display)
    if isinstance(out.get("early_stopping"), Mapping):
        out["early_stopping"] = EarlyStopping.from_spec(out["early_stopping"], display)
    if isinstance(out.get("class_weights"), list):
        out["class_weights"] = tuple(float(w) for w in out["class_weights"])
    if isinstance(out.get("lr_multipliers"), Mapping):
        out["lr_multipliers"] = tuple((str(k), float(v)) for k, v in out["lr_multipliers"].items())
    elif out.get("lr_multipliers") is None:
        out.pop("lr_multipliers", None)
    if isinstance(out.get("distributed"), Mapping):
        found = dist.Distributed.from_spec(out["distributed"])
        out["distributed"] = found if found.world_size > 1 else None  # 1 process: plain
    return out


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
    best_epoch: int | None = None  # early stopping: the epoch whose weights were kept
    stopped_epoch: int | None = None  # early stopping: the last epoch trained
    resumed_epoch: int | None = None  # the checkpoint's epoch a resumed build started after
    world_size: int = 1  # processes of a distributed build (each with a slice of every batch)
    backend: str | None = None  # its torch.distributed backend
    strategy: str = "ddp"  # dist.STRATEGIES

    def run_notes(self) -> dict[str, Any]:
        """What the manifest's run block adds about this training (empty for a plain one)."""
        notes: dict[str, Any] = {}
        if self.best_epoch is not None:
            notes["early_stopping"] = {
                "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch,
            }
        if self.resumed_epoch is not None:
            notes["resumed_after_epoch"] = self.resumed_epoch
        if self.world_size > 1:
            notes["distributed"] = {"world_size": self.world_size, "backend": self.backend}
            if self.strategy != "ddp":  # absent for DDP, as in earlier manifests
                notes["distributed"]["strategy"] = self.strategy
        return notes


def resolve_device(name: str) -> torch.device:
    """'auto' is cuda when available, else cpu."""
    if name == "auto":
        return torch.device(dist.device_for("cuda") if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BuildError("training.device is cuda but no CUDA device is available")
    return torch.device(dist.device_for(name))


def lr_scales(
    named: Sequence[tuple[str, nn.Parameter]], cfg: TrainConfig, display: str = SPEC_FILE
) -> dict[nn.Parameter, float]:
    """Each trainable parameter's learning-rate factor: the first `lr_multipliers` glob that
    matches its name; a glob that matches no trainable parameter is an error (a typo would
    otherwise train everything at the base rate)."""
    scales: dict[nn.Parameter, float] = {}
    for pattern, factor in cfg.lr_multipliers:
        hits = [p for n, p in named if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise BuildError(
                f"{display} at /training/lr_multipliers/{pattern}: matches no trainable"
                f" parameter; names look like {named[0][0] if named else '(none)'!r}"
            )
        for p in hits:
            scales.setdefault(p, factor)
    return scales


def make_optimizer(
    params: Sequence[nn.Parameter],
    cfg: TrainConfig,
    display: str = SPEC_FILE,
    scales: Mapping[nn.Parameter, float] | None = None,
) -> optim.Optimizer:
    """The optimizer the config names (torch.optim's update rules, see migration/optim.py)."""
    if cfg.optimizer == "sgd":
        return optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay or 0.0,
            scales=scales,
        )
    if cfg.optimizer == "adam":
        return optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay or 0.0, scales=scales)
    if cfg.optimizer == "adamw":
        wd = 0.01 if cfg.weight_decay is None else cfg.weight_decay  # torch.optim.AdamW's
        return optim.Adam(params, lr=cfg.lr, weight_decay=wd, decoupled=True, scales=scales)
    raise BuildError(
        f"{display} at /training/optimizer: unknown optimizer {cfg.optimizer!r};"
        f" use one of {', '.join(OPTIMIZERS)}"
    )


@contextmanager
def cpu_threads(device: torch.device) -> Iterator[None]:
    """On the CPU, torch runs `thread_count()` intra-op threads inside the block."""
    prior = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(thread_count())
    try:
        yield
    finally:
        torch.set_num_threads(prior)


# torch's private binding of ATen's deterministic flag (what `use_deterministic_algorithms`
# calls); looked up by name, so a torch without it takes the public function.
PRIVATE_DETERMINISTIC = "_set_deterministic_algorithms"


def set_deterministic(mode: bool) -> None:
    """`torch.use_deterministic_algorithms(mode)` without loading the compiler stack.

    torch's public function does two things: it sets ATen's flag (`torch._C.
    _set_deterministic_algorithms`, what makes eager kernels pick deterministic algorithms
    or refuse to run) and `torch._inductor.config.deterministic`, which only compiled graphs
    read. Importing that config imports torch._inductor and torch._dynamo: 1.7 s of CPU on
    a build's start, which takes 1.9 s without it (torch 2.14,
    `benchmarks/bench_private_apis.py`, `deterministic`), and a build never compiles. So the
    flag is set through the private binding (the one torch's function calls, unchanged since
    torch 1.11), and inductor's setting only where something else has loaded it. A torch
    without that binding gets the public function (slower, same mode).
    tests/migration/test_optim.py checks both paths: torch reads the flag back and eager
    kernels obey it.
    """
    binding = getattr(torch._C, PRIVATE_DETERMINISTIC, None)
    if binding is None:
        torch.use_deterministic_algorithms(mode)
        return
    inductor: Any = sys.modules.get("torch._inductor.config")  # Any: mypy sees no settings
    if inductor is not None:
        inductor.deterministic = mode
    binding(mode)


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
    display: str = SPEC_FILE,
    checkpoint: Checkpointer | None = None,
) -> TrainResult:
    """Train `module` in place; returns the per-epoch curve and how training ran.

    With `checkpoint`, the loop's state is saved between epochs and a matching checkpoint
    found at the start is resumed from: the weights end bit for bit as without the stop.
    """
    device = resolve_device(cfg.device)
    deterministic = device.type == "cpu"
    amp = cfg.amp and device.type == "cuda"
    prior = torch.are_deterministic_algorithms_enabled()
    set_deterministic(deterministic)
    dist.check_launch(cfg.distributed, display)
    try:
        with cpu_threads(device), dist.process_group(cfg.distributed, device.type) as backend:
            data = (x_train, y_train, x_eval, y_eval)
            loop = _Loop(module, data, cfg, device, amp, features, display)
            if backend is not None:
                loop.join(backend)
            if loop.sharded is not None:
                checkpoint = None  # each rank holds a shard: no one file to resume from
            return loop.run(progress, checkpoint, deterministic)
    finally:
        set_deterministic(prior)


class _Loop:
    """One training run: the prepared tensors, step functions and optimizer."""

    def __init__(
        self,
        module: nn.Module,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        cfg: TrainConfig,
        device: torch.device,
        amp: bool,
        features: str,
        display: str,
    ) -> None:
        x_train, y_train, x_eval, y_eval = data
        self.module, self.cfg, self.device, self.amp, self.display = (
            module,
            cfg,
            device,
            amp,
            display,
        )
        torch.manual_seed(cfg.seed)  # dropout draws from the global generator
        module.to(device)
        parts = stages(module)
        k = frozen_prefix(module) if features == "cached" else 0
        prefix = [m for _, m, _ in parts[:k]]
        suffix = nn.Sequential(*(m for _, m, _ in parts[k:]))
        dtype = input_dtype(module)  # token ids stay int64; everything else is float32
        self.xt = torch.as_tensor(x_train, dtype=dtype).to(device)
        self.xe = torch.as_tensor(x_eval, dtype=dtype).to(device)
        self.task = for_labels(y_train)  # the stored labels' dtype and shape say the task
        self.loss_name = self.task.resolve_loss(cfg.loss, display)
        self.weight = class_weights(cfg, self.task.name, self.loss_name, y_train, display)
        if self.weight is not None:
            self.weight = self.weight.to(device)
        self.yt = self.task.target(y_train).to(device)
        self.ye = self.task.target(y_eval).to(device)
        self.cached = bool(k)
        if k:
            stem = nn.Sequential(*prefix)
            stem.eval()
            # computed once; every epoch below starts from these features
            self.xt, self.xe = predict(stem, self.xt, amp=amp), predict(stem, self.xe, amp=amp)
        self.trained: nn.Module = suffix if k else module  # what the optimizer updates
        self.step_fn: Callable[[torch.Tensor], torch.Tensor] = self.trained
        self.frozen_stages = [m for _, m, _ in parts[: frozen_prefix(module)]]
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        if not self.params and cfg.epochs > 0:
            raise BuildError(f"{display} at /strategy: every parameter is frozen; nothing to train")
        scales = lr_scales(named, cfg, display)
        self.opt = make_optimizer(self.params, cfg, display, scales) if self.params else None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.tracker = Tracker(cfg.early_stopping, self.task, display)
        n, group = len(self.yt), cfg.batch_size * cfg.accumulate
        self.steps_per_epoch = math.ceil(n / group) if n else 0
        self.step = 0  # optimizer steps taken: the schedule's clock
        self.rank, self.world = 0, 1
        self.backend: str | None = None
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.step_fn  # DDP's, once joined
        self.ddp: Any = None  # torch's DistributedDataParallel around the trained part
        self.sharded: Any = None  # FSDP: the trained part's sharded copy (it trains, not this)

    def join(self, backend: str) -> None:
        """Train as one rank of the launch: the trained part wrapped in DDP (gradients
        averaged over the ranks after each backward), or a copy of it sharded by FSDP
        (`strategy: fsdp`), each rank a slice of every batch."""
        from torch.nn.parallel import DistributedDataParallel

        self.rank, self.world, self.backend = dist.rank(), dist.world_size(), backend
        if self.params and self.cfg.distributed is not None and self.cfg.distributed.sharded:
            self.sharded = dist.shard(self.trained, self.device, _units)
            self.forward = self.sharded
            # the optimizer steps the shards (DTensors); learning-rate factors by name, as before
            named = [(n, p) for n, p in self.sharded.named_parameters() if p.requires_grad]
            self.params = [p for _, p in named]
            scales = lr_scales(named, self.cfg, self.display)
            self.opt = make_optimizer(self.params, self.cfg, self.display, scales)
        elif self.params:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.step_fn, device_ids=ids)
            self.forward = self.ddp

    def run(
        self, progress: Progress | None, checkpoint: Checkpointer | None, deterministic: bool
    ) -> TrainResult:
        """Every epoch (from a checkpoint's, when one matches), then the best weights."""
        cfg, module = self.cfg, self.module
        result = TrainResult(
            features_cached=self.cached,
            device=str(self.device),
            deterministic=deterministic,
            threads=torch.get_num_threads(),
            world_size=self.world,
            backend=self.backend,
            strategy="fsdp" if self.sharded is not None else "ddp",
        )
        n = len(self.yt)
        first, spent = 1, 0.0
        if self.rank == 0:  # rank 0 first: it deletes a damaged or foreign checkpoint
            first, spent = self._resume(checkpoint, result)
        if self.world > 1:
            self._barrier()
            if self.rank != 0:  # then the others read what rank 0 kept, writing nothing
                first, spent = self._resume(checkpoint, result, writer=False)
            self._same_start(first)
        if self.rank != 0:
            checkpoint, progress = None, None  # only rank 0 writes and reports
        last = first - 1
        for epoch in range(first, cfg.epochs + 1):
            begin = time.perf_counter()
            loss_sum, correct = self._epoch()
            if self.world > 1:
                loss_sum, correct = self._summed(loss_sum), self._summed(correct)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            spent += time.perf_counter() - begin
            module.eval()
            self._mirror_modes()
            eval_fn = self.forward if self.sharded is not None else self.step_fn
            ev = self.task.scores(predict(eval_fn, self.xe, amp=self.amp), self.ye, self.loss_name)
            hit_count = int(correct.item()) if self.task.counts_hits else None
            row = self.task.curve_row(epoch, float(loss_sum.item()) / n, hit_count, n, ev)
            result.curve.append(row)
            last = epoch
            stop = self.tracker.update(epoch, ev, self.sharded or module)  # FSDP: its shards
            if progress is not None:
                progress(epoch, cfg.epochs, row)
            if stop:
                break
            if checkpoint is not None and checkpoint.due(epoch, cfg.epochs):
                tensors = snapshot(module, self.opt, self.gen, self.tracker, self.device)
                meta = {"step": self.step, "spent": spent, "curve": result.curve}
                checkpoint.save(epoch, tensors, {**meta, "tracker": self.tracker.to_dict()})
        if self.tracker.best_state is not None:  # early stopping keeps its best epoch
            (self.sharded or module).load_state_dict(self.tracker.best_state)
            result.best_epoch, result.stopped_epoch = self.tracker.best_epoch, last
        if self.sharded is not None:  # FSDP: the full weights back into the module, rank 0
            dist.gather_into(self.sharded, self.trained, self.device)
        module.eval()
        result.train_seconds = spent
        epochs_run = max(last - first + 1, 0)
        result.samples_per_s = n * epochs_run / spent if spent > 0 else 0.0
        return result

    def _resume(
        self, checkpoint: Checkpointer | None, result: TrainResult, writer: bool = True
    ) -> tuple[int, float]:
        """Restore a matching checkpoint: (first epoch to train, seconds spent before)."""
        # the other ranks load after rank 0 kept or deleted the file: they find it whole
        loaded = checkpoint.load() if checkpoint is not None else None
        if loaded is None or checkpoint is None:
            return 1, 0.0
        meta = restore(loaded, self.module, self.opt, self.gen, self.tracker, self.device)
        if meta is None:  # tensors that do not fit this module: start over
            if writer:
                checkpoint.clear()
            return 1, 0.0
        self.step = int(meta["step"])
        result.curve = list(meta["curve"])
        result.resumed_epoch = int(meta["epoch"])
        return int(meta["epoch"]) + 1, float(meta["spent"])

    def _mirror_modes(self) -> None:
        """FSDP: the sharded copy in the train/eval modes the module's trained part is in
        (`deepcopy` keeps the order of `modules()`)."""
        if self.sharded is not None:
            for mine, theirs in zip(self.trained.modules(), self.sharded.modules(), strict=True):
                theirs.training = mine.training

    def _barrier(self) -> None:
        import torch.distributed as tdist

        tdist.barrier()

    def _summed(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the ranks."""
        import torch.distributed as tdist

        value = value.clone()
        tdist.all_reduce(value)
        return value

    def _same_start(self, first: int) -> None:
        """Every rank resumes from the same epoch: a checkpoint only rank 0 can see (another
        node's disk) would have the ranks train different models."""
        mine = torch.tensor([first], dtype=torch.int64, device=self.device)
        if int(self._summed(mine).item()) != first * self.world:
            raise BuildError(
                f"{self.display} at /training/distributed: the ranks found different"
                " checkpoints; put .stemma/checkpoints on storage every node shares, or"
                " delete it"
            )

    def _epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over the training data; returns (summed loss, correct predictions)."""
        cfg, device, task, opt = self.cfg, self.device, self.task, self.opt
        self.module.train()
        _hold_eval(self.frozen_stages)
        hold_in_eval(self.module)  # frozen batch-norm keeps the source's statistics
        self._mirror_modes()
        n = len(self.yt)
        order = torch.randperm(n, generator=self.gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        group = cfg.batch_size * cfg.accumulate
        total = self.steps_per_epoch * cfg.epochs
        for begin in range(0, n, group):
            end = min(begin + group, n)
            assert opt is not None
            for start in range(begin, end, cfg.batch_size):
                idx = order[start : min(start + cfg.batch_size, end)]
                if start == begin:
                    opt.zero_grad(set_to_none=True)
                if self.world > 1:
                    last = start + cfg.batch_size >= end
                    loss_sum += self._ranks_step(idx, end - begin, last, correct)
                    continue
                xb, yb = self.xt[idx], self.yt[idx]
                with autocast(device, self.amp):
                    out = self.step_fn(xb)
                loss = task.loss(out, yb, self.loss_name, cfg.label_smoothing, self.weight)
                # micro-batch means weighted by their share: the gradient of the group's mean
                scaled = loss if cfg.accumulate == 1 else loss * (len(idx) / (end - begin))
                scaled.backward()  # type: ignore[no-untyped-call]
                loss_sum += loss.detach() * len(idx)
                hits = task.hits(out, yb)
                if hits is not None:
                    correct += hits
            if cfg.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad_norm)
            if cfg.schedule is not None:
                opt.lr = cfg.schedule.lr_at(cfg.lr, self.step, self.steps_per_epoch, total)
            opt.step()
            self.step += 1
        return loss_sum, correct

    def _ranks_step(
        self, idx: torch.Tensor, group: int, last: bool, correct: torch.Tensor
    ) -> torch.Tensor:
        """This rank's slice of one micro-batch: forward, backward (DDP averages the
        gradients over the ranks on the group's last micro-batch), adds its hits to
        `correct`; returns its summed loss. Each slice's mean is weighted by its share of the
        group times the world size, so the average DDP takes is the gradient of the group's
        mean, as in one process (slices may differ in size by one sample, or be empty)."""
        cfg, task = self.cfg, self.task
        mine = idx.tensor_split(self.world)[self.rank]
        xb, yb = self.xt[mine], self.yt[mine]
        # gradients are averaged once per group: on its last micro-batch
        quiet = self.ddp is not None and not last
        if self.sharded is not None:  # FSDP's no_sync: reduce-scatter on the last only
            self.sharded.set_requires_gradient_sync(last)
        with self.ddp.no_sync() if quiet and self.ddp is not None else nullcontext():
            with autocast(self.device, self.amp):
                out = self.forward(xb)
            if len(mine):
                loss = task.loss(out, yb, self.loss_name, cfg.label_smoothing, self.weight)
                scaled = loss * (len(mine) * self.world / group)
            else:  # no sample here: still take part in the gradient average, adding zero
                loss = out.sum() * 0.0
                scaled = loss
            scaled.backward()  # type: ignore[no-untyped-call]
        hits = task.hits(out, yb) if len(mine) else None
        if hits is not None:
            correct += hits
        return loss.detach() * len(mine)


def _units(module: nn.Module) -> list[nn.Module]:
    """The parts of a trained module FSDP may shard as units of their own: those its forward
    calls as modules (a cached suffix's stages, a staged network's stages and head); any other
    network is one unit (its parent might use a child's weights without calling it)."""
    if isinstance(module, nn.Sequential):
        return list(module.children())
    if isinstance(module, StagedNet):
        return [stage for _, stage in module.feature_stages()] + [module.head]
    return []


def class_weights(
    cfg: TrainConfig, task: str, loss: str, y_train: np.ndarray, display: str = SPEC_FILE
) -> torch.Tensor | None:
    """The cross-entropy class weights `cfg.class_weights` asks for, or None.

    `balanced` is scikit-learn's rule, n_samples / (n_classes * count): each class then
    weighs as much in the loss as it would in balanced data (a class absent from the
    training split gets weight 0: it never appears in a batch).
    """
    if cfg.class_weights is None:
        return None
    where = f"{display} at /training/class_weights"
    if task != "classification" or loss != "cross_entropy":
        raise BuildError(f"{where}: class weights apply to classification (cross_entropy) only")
    classes = int(y_train.max(initial=0)) + 1
    if cfg.class_weights == "balanced":
        counts = np.bincount(y_train.astype(np.int64), minlength=classes).astype(np.float64)
        weights = np.where(counts > 0, len(y_train) / (classes * np.maximum(counts, 1)), 0.0)
        return torch.as_tensor(weights, dtype=torch.float32)
    if len(cfg.class_weights) != classes:
        raise BuildError(
            f"{where}: {len(cfg.class_weights)} weights for {classes} classes; give one per class"
        )
    return torch.tensor(list(cfg.class_weights), dtype=torch.float32)
