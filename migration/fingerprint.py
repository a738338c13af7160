"""The numerics fingerprint: a hash of each torch operation a build uses, under its pins.

Two machines give a build the same bits exactly when every operation the build runs gives the
same bits on both. This module runs a fixed set of those operations at the sizes small builds
use (random streams, initialisation, matrix products, linear and convolution backward, the
vector kernels, reductions, losses, norms, each optimizer's update, short training runs) and
hashes each result. `run.numerics.fingerprint` in every manifest records the hashes of the
machine that built it, so another machine can say before any training whether it will
reproduce the recorded bits, and name the operations where it would part
(`stemma doctor`, `stemma verify --rebuild`).

The set follows shared/portability's probe (whose reference results come from an Intel Xeon),
with the build's own formulations where stemma replaces torch's (the portable square root of
`optim.py`). Computing it takes about a second on one thread; it is computed once per machine,
processor, torch version and pin, and kept in the registry's `.stemma/` folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from stemma.registry.store import derived as _store
from torch import nn

from . import optim
from .numerics import cpu_flags_digest, is_portable, record_env

VERSION = 1
"""Bumped whenever the set of operations or their inputs change: old fingerprints then differ
from new ones as a whole, which `compare` reports as such rather than op by op."""

_CACHE_LIMIT = 1 << 20  # bytes: a cached fingerprint is a few kilobytes


def _h(*ts: torch.Tensor) -> str:
    d = hashlib.sha256()
    for t in ts:
        d.update(t.detach().contiguous().cpu().numpy().tobytes())
    return d.hexdigest()[:12]


def _train(model: nn.Module, opt: optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    for i in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x[i * 16 : i * 16 + 64]), y[i * 16 : i * 16 + 64]).backward()
        opt.step()


def _ops() -> dict[str, str]:
    """Each operation's hash on this machine, in this process's numeric setting."""
    out: dict[str, str] = {}
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    torch.manual_seed(0)
    out["rng.randn"] = _h(torch.randn(1000))
    out["rng.randperm"] = _h(torch.randperm(1797).to(torch.float32))
    lin = nn.Linear(64, 128)
    out["init.linear"] = _h(lin.weight, lin.bias)
    conv = nn.Conv2d(1, 16, 3)
    out["init.conv"] = _h(conv.weight, conv.bias)
    out["rng.dropout"] = _h(F.dropout(torch.ones(4096), 0.5, training=True))
    for m, k, n in [(64, 64, 128), (64, 128, 64), (64, 64, 5), (256, 784, 128), (33, 17, 9)]:
        a, b, bias = r(m, k), r(k, n), r(n)
        out[f"mm.{m}x{k}x{n}"] = _h(a @ b)
        out[f"linear.{m}x{k}x{n}"] = _h(F.linear(a, b.T.contiguous(), bias))
    x, w = r(64, 64).requires_grad_(), r(128, 64).requires_grad_()
    F.linear(x, w).square().sum().backward()
    assert x.grad is not None and w.grad is not None
    out["linear.backward"] = _h(x.grad, w.grad)
    # the example's convolutions (8x8 digits, 28x28 MNIST), forward and backward
    for shape, wshape in [
        ((64, 1, 8, 8), (16, 1, 3, 3)),
        ((64, 16, 8, 8), (32, 16, 3, 3)),
        ((64, 1, 28, 28), (16, 1, 3, 3)),
        ((64, 16, 14, 14), (32, 16, 3, 3)),
        ((4, 3, 32, 32), (64, 3, 7, 7)),
    ]:
        xi, wi = r(*shape).requires_grad_(), r(*wshape).requires_grad_()
        yo = F.conv2d(xi, wi, padding=1)
        yo.square().sum().backward()
        assert xi.grad is not None and wi.grad is not None
        key = "x".join(map(str, shape)) + "." + "x".join(map(str, wshape))
        out[f"conv2d.{key}"] = _h(yo, xi.grad, wi.grad)
    a = r(4096)
    elementwise: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "exp": torch.exp,
        "log": lambda t: torch.log(t.abs() + 1),
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "gelu": F.gelu,
        "erf": torch.erf,
        "rsqrt": lambda t: torch.rsqrt(t.abs() + 1),
        "sqrt": lambda t: optim.sqrt(t.abs()),  # the build's square root (portable or torch's)
    }
    for name, fn in elementwise.items():
        out[f"elementwise.{name}"] = _h(fn(a))
    out["reduce.sum"] = _h(a.sum())
    out["reduce.mean_dim"] = _h(r(257, 129).mean(1))
    out["reduce.var"] = _h(r(257, 129).var(0))
    out["reduce.norm"] = _h(r(4096).norm())
    logits, labels = r(64, 10), torch.randint(0, 10, (64,), generator=g)
    out["softmax"] = _h(torch.softmax(logits, 1), F.log_softmax(logits, 1))
    lg = logits.clone().requires_grad_()
    loss = F.cross_entropy(lg, labels)
    loss.backward()
    assert lg.grad is not None
    out["loss.cross_entropy"] = _h(loss, lg.grad)
    lg = logits.clone().requires_grad_()
    loss = F.binary_cross_entropy_with_logits(lg, (r(64, 10) > 0).float())
    loss.backward()
    assert lg.grad is not None
    out["loss.bce_logits"] = _h(loss, lg.grad)
    out["loss.mse"] = _h(F.mse_loss(r(64, 1), r(64, 1)))
    bn = nn.BatchNorm2d(16)
    out["norm.batch2d"] = _h(bn(r(8, 16, 7, 7)), bn.running_mean, bn.running_var)
    out["norm.layer"] = _h(nn.LayerNorm(64)(r(32, 64)))
    q, k_, v = r(2, 4, 16, 8), r(2, 4, 16, 8), r(2, 4, 16, 8)
    out["sdpa"] = _h(F.scaled_dot_product_attention(q, k_, v))
    out["pool"] = _h(F.max_pool2d(r(8, 16, 8, 8), 2), F.adaptive_avg_pool2d(r(8, 16, 7, 7), 1))
    out["interpolate.bilinear"] = _h(F.interpolate(r(2, 1, 8, 8), size=(28, 28), mode="bilinear"))
    for name, make in [
        ("adam", lambda ps: optim.Adam(ps, lr=1e-3)),
        ("adamw", lambda ps: optim.Adam(ps, lr=1e-3, weight_decay=0.01, decoupled=True)),
        ("sgd", lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4)),
    ]:
        p = nn.Parameter(r(1000))
        opt = make([p])
        for _ in range(3):
            opt.zero_grad()
            p.sin().sum().backward()
            opt.step()
        out[f"optim.{name}"] = _h(p)
    xs, ys = r(256, 64), torch.randint(0, 10, (256,), generator=g)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    _train(mlp, optim.Adam(list(mlp.parameters()), lr=1e-3), xs, ys)
    out["train.mlp"] = _h(*mlp.parameters())
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    _train(cnn, optim.Adam(list(cnn.parameters()), lr=1e-3), xs.view(256, 1, 8, 8), ys)
    out["train.cnn"] = _h(*cnn.parameters())
    return out


def compute() -> dict[str, Any]:
    """This machine's fingerprint under the current process's pins, on one thread."""
    prior = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            ops = _ops()
    finally:
        torch.set_num_threads(prior)
    return {"version": VERSION, "digest": digest(ops), "ops": ops}


def digest(ops: Mapping[str, str]) -> str:
    """The short hash of every operation's hash: equal digests mean equal numerics."""
    text = json.dumps(dict(ops), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_key() -> str:
    parts = {
        "version": VERSION,
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_flags_digest(),
        "env": record_env(),
        "portable": is_portable(),
        "mkldnn": torch.backends.mkldnn.enabled,
    }
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_cached(repo_root: Path, name: str) -> dict[str, Any] | None:
    """A cached fingerprint, or None when it is absent or damaged (a miss, never an answer)."""
    data = _store.load(repo_root, name, limit=_CACHE_LIMIT)
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return None
    ops = doc.get("ops")
    if not isinstance(ops, dict) or not all(isinstance(v, str) for v in ops.values()):
        return None
    if doc.get("digest") != digest(ops):
        return None
    return {"version": VERSION, "digest": doc["digest"], "ops": dict(ops)}


def of_this_machine(cache_dir: Path | None) -> dict[str, Any]:
    """The fingerprint, from the store of `cache_dir` (a registry's `.stemma/`) when
    computed before (the fact `numerics-KEY`, KEY naming this machine and software)."""
    if cache_dir is None:
        return compute()
    name = f"numerics-{_cache_key()}"
    cached = _read_cached(cache_dir.parent, name)
    if cached is not None:
        return cached
    doc = compute()
    # Unwritable (a read-only checkout, another process holding the store): computed again.
    _store.save(cache_dir.parent, name, json.dumps(doc, sort_keys=True))
    return doc
