"""Data-parallel builds: torch.distributed (DDP) launched by torchrun.

A spec (or stemma.yaml's training defaults) asks for it with
``training: {distributed: {processes: N, nodes: M, backend: gloo|nccl}}``. The DVC stage's
command stays `stemma build model NAME`: when it runs outside a torchrun launch and the
spec asks for more than one process on one node, `stemma build` starts itself again under
``python -m torch.distributed.run --standalone --nproc-per-node N`` and returns its exit
status. torchrun rather than processes of our own: it is the launcher every GPU cluster
already uses, the same command covers several machines (``--nnodes``, ``--rdzv-endpoint``),
and it sets the variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR) that
`init_process_group` reads, so one code path serves 2 CPU processes and 64 GPUs.

Every process reads the same inputs and trains the same model; each takes its slice of
every batch (the same seeded order on all ranks) and DDP averages the gradients. Only
rank 0 writes: checkpoints, weights, manifest, metrics and curve; the others stop after
training. This module imports torch only inside its functions: `stemma build` decides to
relaunch before torch loads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from stemma.registry.errors import BuildError

BACKENDS = ("gloo", "nccl")
STRATEGIES = ("ddp", "fsdp")  # ddp: every rank holds the whole model; fsdp: each a shard
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun gives every process


@dataclass(frozen=True)
class Distributed:
    """The `training.distributed` block (schema-checked before it gets here)."""

    processes: int = 1
    nodes: int = 1
    backend: str | None = None  # None: nccl on CUDA, gloo on the CPU
    strategy: str = "ddp"  # STRATEGIES

    @classmethod
    def from_spec(cls, block: Mapping[str, Any]) -> Distributed:
        """Read a validated block."""
        backend = block.get("backend")
        return cls(
            processes=int(block.get("processes", 1)),
            nodes=int(block.get("nodes", 1)),
            backend=None if backend is None else str(backend),
            strategy=str(block.get("strategy", "ddp")),
        )

    @property
    def world_size(self) -> int:
        """Processes in all: per node times nodes."""
        return self.processes * self.nodes

    def to_dict(self) -> dict[str, Any]:
        """The block as the spec writes it."""
        doc: dict[str, Any] = {"processes": self.processes, "nodes": self.nodes}
        if self.backend is not None:
            doc["backend"] = self.backend
        if self.strategy != "ddp":  # absent for DDP: the checkpoint keys of earlier builds
            doc["strategy"] = self.strategy
        return doc

    @property
    def sharded(self) -> bool:
        """True for FSDP: parameters, gradients and optimizer state split over the ranks."""
        return self.strategy == "fsdp"


def requested(
    block: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> Distributed | None:
    """The distributed block of a spec's training block over the registry's defaults (the
    spec's wins whole), or None for a single-process build. No schema check here: the
    build's `TrainConfig.from_spec` refuses a bad block with its pointer."""
    found = block.get("distributed", (defaults or {}).get("distributed"))
    if not isinstance(found, Mapping):
        return None
    try:
        dist = Distributed.from_spec(found)
    except (TypeError, ValueError):
        return None  # the build reports it
    return dist if dist.world_size > 1 else None


def rank() -> int:
    """This process's rank (0 outside a launch)."""
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    """Processes in the launch (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched() -> bool:
    """True inside a torchrun launch (its variables are set)."""
    return all(key in os.environ for key in ENV)


def is_writer() -> bool:
    """Only rank 0 writes a build's outputs."""
    return rank() == 0


def launch_argv(dist: Distributed, args: Sequence[str]) -> list[str]:
    """torchrun's command line that runs `stemma ARGS` in `dist.processes` processes on
    this machine (`--standalone`: a local rendezvous on a free port)."""
    if dist.nodes > 1:
        raise BuildError(
            f"training.distributed.nodes is {dist.nodes}: start the build on every node with"
            f" torchrun --nnodes {dist.nodes} --nproc-per-node {dist.processes}"
            " --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id NAME"
            " -m stemma.cli.app build model NAME (README: Large weights and parallel builds)"
        )
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(dist.processes),
        "-m",
        "stemma.cli.app",
        *args,
    ]


def check_launch(dist: Distributed | None, display: str) -> None:
    """Refuse a launch whose size is not the one the spec asks for: its result would not be
    the spec's (the batch split and the averaged gradients depend on the world size)."""
    want = dist.world_size if dist is not None else 1
    if launched() and world_size() != want:
        raise BuildError(
            f"{display} at /training/distributed: the launch has {world_size()} processes,"
            f" the spec asks for {want}; start it with the spec's processes and nodes"
        )


@contextmanager
def process_group(dist: Distributed | None, device_type: str) -> Iterator[str | None]:
    """Join the launch's process group for the block (yields the backend, None for a
    single-process build) and leave it after."""
    if dist is None or not launched():
        yield None
        return
    import torch
    import torch.distributed as tdist

    backend = dist.backend or ("nccl" if device_type == "cuda" else "gloo")
    if backend == "nccl" and device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    owned = not tdist.is_initialized()
    if owned:
        tdist.init_process_group(backend=backend)
    try:
        yield backend
    finally:
        if owned:
            tdist.destroy_process_group()


def device_for(name: str) -> str:
    """The device a rank trains on: its own GPU under CUDA (LOCAL_RANK), else as given."""
    if launched() and name == "cuda":
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return name


def shard(module: Any, device: Any, units: Any) -> Any:
    """A copy of `module` sharded over the launch's ranks with torch's FSDP2
    (`torch.distributed.fsdp.fully_shard`): each of `units(copy)` with trainable
    parameters its own unit (its full weights exist only around its forward and backward),
    then the whole. A unit must be called as a module by its parent: a parent that loops
    over a unit's children would meet sharded weights, so `units` names only modules the
    caller knows are called. `module`
    itself stays unsharded, so it can take the trained weights back (`gather_into`) and be
    evaluated and written as a DDP build's is; it waits on the CPU meanwhile, so the device
    holds one shard of the trained part and not a second whole copy. Gradients are
    averaged over the ranks as DDP's are (FSDP's reduce-scatter divides by the world size)."""
    import copy

    from torch.distributed.fsdp import fully_shard

    module.to("cpu")
    copied = copy.deepcopy(module).to(device)
    for unit in units(copied):
        if any(p.requires_grad for p in unit.parameters()):
            fully_shard(unit)
    fully_shard(copied)
    return copied


def gather_into(sharded: Any, module: Any, device: Any) -> None:
    """The sharded copy's full weights loaded into `module` on rank 0 (every rank takes
    part in the gather; the others load nothing: they write nothing)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(sharded, options=options)
    if is_writer():
        module.load_state_dict(full)
        module.to(device)
