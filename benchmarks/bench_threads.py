"""Which ops of a small build change their bits with the intra-op thread count, and what
threads buy in build time; prints JSON.

    .venv/bin/python benchmarks/bench_threads.py [--mode portable|native] [--repeat 3]

For each thread count (1, 2, ... up to the cores), the script runs the ops a build runs
(a Linear layer's forward and backward, i.e. matmul; a conv2d forward and backward;
reductions: a sum, a mean, cross-entropy, a gradient norm) on fixed inputs large enough for
torch to split them across threads, and hashes the results: `bits_change` lists the ops whose
hash differs from one thread's. It then times the same small training (stemma's loop, an MLP
and a CNN on random data) at 1 and 2 threads, and a plain torch loop (torch.optim.Adam, the
process's default thread count), and says whether the trained weights differ between 1 and 2
threads. Numerics are pinned first, as `stemma build` does (train.CPU_THREADS says what the
build uses).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any


def _hash(*tensors: Any) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def op_hashes(threads: int) -> dict[str, str]:
    """Hashes of each op's outputs and gradients at `threads` intra-op threads."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 1024, generator=gen)
    lin = nn.Linear(1024, 512)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(512, 1024, generator=gen) * 0.03)
    out = {}
    y = lin(x)
    y.square().sum().backward()  # type: ignore[no-untyped-call]
    out["matmul"] = _hash(y, lin.weight.grad)
    img = torch.randn(64, 8, 28, 28, generator=gen)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(16, 8, 3, 3, generator=gen) * 0.1)
    c = conv(img)
    c.square().sum().backward()  # type: ignore[no-untyped-call]
    out["conv2d"] = _hash(c, conv.weight.grad)
    big = torch.randn(4_000_000, generator=gen)
    out["sum"] = _hash(big.sum().reshape(1))
    out["mean_dim"] = _hash(torch.randn(2048, 2048, generator=gen).mean(dim=0))
    logits = torch.randn(8192, 10, generator=gen, requires_grad=True)
    labels = torch.randint(0, 10, (8192,), generator=gen)
    loss = nn.functional.cross_entropy(logits, labels)
    loss.backward()  # type: ignore[no-untyped-call]
    out["cross_entropy"] = _hash(loss.reshape(1), logits.grad)
    grads = [torch.randn(300_000, generator=gen) for _ in range(4)]
    out["grad_norm"] = _hash(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    return out


def _data(family: str) -> tuple[Any, Any, Any]:
    import numpy as np
    from stemma.migration.architectures import make_config

    rng = np.random.default_rng(0)
    shape = [1, 28, 28] if family == "cnn" else [784]
    x = rng.normal(size=(2048, *shape)).astype(np.float32)
    y = rng.integers(0, 10, 2048).astype(np.int64)
    arch = {"family": family} if family == "cnn" else {"family": "mlp", "hidden": [256, 128]}
    return x, y, make_config(arch, shape, 10)


def stemma_loop(family: str, threads: int) -> tuple[float, str]:
    """Seconds and weights hash of stemma's loop at `threads` threads."""
    import torch
    from stemma.migration import train as train_mod
    from stemma.migration.architectures import build_module

    x, y, config = _data(family)
    torch.manual_seed(0)
    module = build_module(config)
    train_mod.thread_count = lambda: threads  # the count under test, whatever the mode
    cfg = train_mod.TrainConfig(epochs=2, batch_size=64, device="cpu")
    begin = time.perf_counter()
    train_mod.train(module, x, y, x[:256], y[:256], cfg)
    took = time.perf_counter() - begin
    return took, _hash(*module.state_dict().values())


def plain_loop(family: str) -> float:
    """Seconds of a plain torch loop (torch.optim.Adam, default threads), same work."""
    import torch
    from stemma.migration.architectures import build_module

    x, y, config = _data(family)
    torch.manual_seed(0)
    torch.set_num_threads(DEFAULT_THREADS)
    module = build_module(config)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(0)
    begin = time.perf_counter()
    for _ in range(2):
        module.train()
        order = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(yt), 64):
            idx = order[start : start + 64]
            loss = torch.nn.functional.cross_entropy(module(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        module.eval()
        with torch.no_grad():
            module(xt[:256])
    return time.perf_counter() - begin


DEFAULT_THREADS = 1


def main() -> None:
    global DEFAULT_THREADS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("portable", "native"), default="portable")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from stemma.migration.numerics import pin

    pinned = pin(args.mode)
    import torch

    DEFAULT_THREADS = torch.get_num_threads()
    counts = sorted({1, 2, os.cpu_count() or 1})
    hashes = {n: op_hashes(n) for n in counts}
    changed = sorted(op for op in hashes[1] if any(hashes[n][op] != hashes[1][op] for n in counts))
    timings: dict[str, Any] = {}
    for family in ("mlp", "cnn"):
        runs = {n: [stemma_loop(family, n) for _ in range(args.repeat)] for n in (1, 2)}
        plain = [plain_loop(family) for _ in range(args.repeat)]
        timings[family] = {
            "stemma_1_thread_s": round(min(t for t, _ in runs[1]), 3),
            "stemma_2_threads_s": round(min(t for t, _ in runs[2]), 3),
            "plain_torch_default_threads_s": round(min(plain), 3),
            "weights_differ_1_vs_2_threads": runs[1][0][1] != runs[2][0][1],
        }
    json.dump(
        {
            "mode": args.mode,
            "pinned": pinned.applied,
            "cpu_count": os.cpu_count(),
            "torch_default_threads": DEFAULT_THREADS,
            "torch": torch.__version__,
            "thread_counts": counts,
            "bits_change": changed,
            "op_hashes": {str(n): h for n, h in hashes.items()},
            "train": timings,
        },
        sys.stdout,
        indent=2,
    )
    print()


if __name__ == "__main__":
    main()
