"""Numeric modes of a build: pin torch's CPU code paths before torch loads (portable mode).

torch's vector kernels (ATen), oneDNN and MKL each pick a code path from the processor's
instruction set when they first run: on an AVX-512 machine they use AVX-512 kernels, whose
float reductions round differently from the AVX2 ones, so the same build gives other bits on
another processor. Portable mode caps all three at AVX2 through the environment variables each
library reads once, at its first use:

- ``ATEN_CPU_CAPABILITY=avx2``: ATen's vectorized kernels (elementwise ops, reductions, softmax);
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN, behind convolutions and some matrix products;
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility (the BLAS behind
  ``nn.Linear``) on its one code path that every x86-64 processor runs alike. ``AVX2`` is not
  enough: MKL honours it on Intel processors only (on AMD it reports ``CNR:AUTO`` and keeps its
  own dispatch). CNR holds only with a fixed thread count, which CPU builds have
  (``train.CPU_THREADS``).

Measured with ``benchmarks/bench_build.py --numerics`` on an AMD EPYC with AVX-512: unpinned,
torch reports ``AVX512`` and oneDNN runs AVX-512 kernels; each of ``ATEN_CPU_CAPABILITY=default``,
``ONEDNN_MAX_CPU_ISA=AVX2`` and ``MKL_CBWR=COMPATIBLE`` changes the weights' last bits (max
absolute difference about 3e-7 after training), so all three decide a build's bits.

They must be in ``os.environ`` before ``import torch`` in the build process, so this module
never imports torch and `stemma build` calls `pin` first thing. When torch is already loaded
(a library caller that imported it) the pin cannot take effect any more: `pin` then changes
nothing and `record` says so, rather than claiming bits it cannot promise.

MKL's vector math (torch's float32 ``sqrt``, ``exp``, ``log``, ``tanh``, ``erf`` on the CPU) is
not covered by these pins in the same way: its ``sqrt`` under ``MKL_CBWR=COMPATIBLE`` is not
correctly rounded and its last bits follow the processor (it was the one operation of the
portability probe where an emulated AMD CPUID parted from an Intel Xeon). Builds therefore take
the square root they need (Adam's) from IEEE operations (`optim.sqrt`).

What portable guarantees: the same spec, data, torch version and thread count give the same
bits on processors whose numerics fingerprint (`fingerprint.py`) equals the build's; shown for
an Intel Xeon and for emulated AMD (EPYC-Rome) and Intel (Haswell) CPUIDs. What it does not:
another torch (or MKL / oneDNN) version, another architecture (arm64 has no pin here), CUDA.
``native`` leaves every library its fastest path for this processor. Cost, measured with
``benchmarks/bench_build.py --numerics --repeat 3`` on the Intel Xeon: the example's builds
took 1.03x the CPU time of native (wall time was noise-bound on a loaded machine).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stemma.registry.errors import StemmaError
from stemma.registry.store.handle import Registry

MODES = ("portable", "native")
DEFAULT_MODE = "portable"
PORTABLE_ENV: Mapping[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
}
"""What portable mode sets on x86-64 (chosen by benchmarks/bench_build.py --numerics)."""
_X86 = ("x86_64", "amd64", "x86-64")


@dataclass(frozen=True)
class Pin:
    """What `pin` did in this process."""

    mode: str
    applied: bool  # True: every variable was set before torch loaded
    env: dict[str, str] = field(default_factory=dict)  # the values set (portable, x86-64)
    reason: str = ""  # why not applied


_pinned: Pin | None = None  # a fact about this process: set once, before torch loads


def mode_of(defaults: Mapping[str, Any]) -> str:
    """The numeric mode a registry's `defaults` block asks for (portable when absent)."""
    mode = defaults.get("numerics", DEFAULT_MODE)
    return mode if mode in MODES else DEFAULT_MODE


def pin(mode: str) -> Pin:
    """Set the portable code-path variables (portable mode) unless torch is already loaded."""
    global _pinned
    if _pinned is not None and _pinned.applied and _pinned.mode == mode:
        return _pinned  # a fact about this process: asking again (torch loaded since) keeps it
    if mode == "native" and _pinned is not None and _pinned.mode == "portable" and _pinned.applied:
        _pinned = Pin(mode, applied=False, reason="this process pinned portable mode already")
    elif mode == "native":
        _pinned = Pin(mode, applied=True)
    elif "torch" in sys.modules:
        _pinned = Pin(mode, applied=False, reason="torch was imported before the pin")
    elif platform.machine().lower() not in _X86:
        _pinned = Pin(mode, applied=False, reason=f"no pin is defined for {platform.machine()}")
    else:
        os.environ.update(PORTABLE_ENV)
        _pinned = Pin(mode, applied=True, env=dict(PORTABLE_ENV))
    return _pinned


def pin_for_repo(repo: Path) -> Pin:
    """Pin the mode that `stemma.yaml` in `repo` asks for; the start of every `stemma build`.

    Reads the settings without torch; unreadable settings pin the default (the build that
    follows reports the error).
    """
    try:
        defaults = Registry.open(repo).settings.defaults
    except StemmaError:
        defaults = {}
    return pin(mode_of(defaults))


def pinned_mode() -> str | None:
    """The mode this process pinned before torch loaded, or None (no pin took effect)."""
    return _pinned.mode if _pinned is not None and _pinned.applied else None


def is_portable() -> bool:
    """True when this process pinned portable mode before torch loaded (the build's case)."""
    return _pinned is not None and _pinned.mode == "portable" and _pinned.applied


def record_env() -> dict[str, str]:
    """The pinning variables as this process has them."""
    return {k: os.environ[k] for k in sorted(PORTABLE_ENV) if k in os.environ}


def cpu_flags_digest() -> str:
    """A short hash of the processor's identity: vendor, model, family and feature flags.

    Two processors with the same digest run the same code paths; the numerics fingerprint is
    cached under it.
    """
    import hashlib

    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = platform.processor()
    keep = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags")
    first = text.split("\n\n", 1)[0]
    lines = [ln for ln in first.splitlines() if ln.split(":", 1)[0].strip() in keep]
    return hashlib.sha256("\n".join([platform.machine(), *lines]).encode()).hexdigest()[:16]


def cpu() -> dict[str, str]:
    """The processor: vendor and model name (from /proc/cpuinfo where there is one)."""
    info = {"machine": platform.machine(), "vendor": "", "model": platform.processor()}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id" and not info["vendor"]:
            info["vendor"] = value
        elif key in ("model name", "Model") and value:
            info["model"] = value
            break
    return info


def record(mode: str) -> dict[str, Any]:
    """`run.numerics`: the mode, whether the pin took effect, the variables, the processor.

    Call once torch is loaded: it adds the capability torch reports for its kernels.
    """
    import torch  # the caller's build has loaded it already

    if _pinned is not None and _pinned.mode == mode:
        applied, reason = _pinned.applied, _pinned.reason
    elif mode == "native":
        applied, reason = True, ""
    else:  # a library call in a process that loaded torch itself; `stemma build` pins
        applied, reason = False, "not pinned before torch was imported"
    doc: dict[str, Any] = {
        "mode": mode,
        "pinned": applied,
        "env": record_env(),
        "cpu": {**cpu(), "capability": torch.backends.cpu.get_cpu_capability()},
    }
    if reason:
        doc["note"] = reason
    return doc
