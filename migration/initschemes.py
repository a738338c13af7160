"""Initialisation schemes for the tensors a transfer leaves new (`strategy.init`).

`default` keeps the target module's own seeded initialisation. The others redraw every new
parameter from a generator seeded by the build's seed, so two builds give identical tensors:

- `zeros`: every new parameter zero (a detector head that starts out predicting nothing).
- `normal`: weights N(mean, std) (default 0, 0.01), biases zero.
- `xavier`: weights Glorot-uniform with `gain` (default 1), biases zero.
- `kaiming`: weights He-normal (`mode` fan_in, `nonlinearity` relu by default), biases zero.

Weights are the parameters of two or more dimensions; one-dimensional parameters other than
biases (a norm layer's scale) keep their own value, since zeroing one silences its layer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from stemma.registry.errors import BuildError
from stemma.registry.rules.layout import SPEC_FILE
from torch import nn

SCHEMES = ("default", "zeros", "normal", "xavier", "kaiming")
_SEED_SALT = 0x1F2E3D  # a stream of its own: the init does not replay the module's draws


@dataclass(frozen=True)
class InitScheme:
    """A resolved `strategy.init`: the scheme and its parameters."""

    scheme: str = "default"
    mean: float = 0.0
    std: float = 0.01
    gain: float = 1.0
    mode: str = "fan_in"
    nonlinearity: str = "relu"

    @classmethod
    def from_spec(
        cls, block: str | Mapping[str, Any] | None, display: str = SPEC_FILE
    ) -> InitScheme:
        """Read `strategy.init` (a scheme name or {scheme, ...parameters})."""
        if block is None:
            return cls()
        raw: dict[str, Any] = {"scheme": block} if isinstance(block, str) else dict(block)
        scheme = str(raw.get("scheme", "default"))
        if scheme not in SCHEMES:
            raise BuildError(
                f"{display} at /strategy/init: unknown scheme {scheme!r};"
                f" use one of {', '.join(SCHEMES)}"
            )
        known = {"scheme", "mean", "std", "gain", "mode", "nonlinearity"}
        extra = sorted(set(raw) - known)
        if extra:
            raise BuildError(f"{display} at /strategy/init/{extra[0]}: unknown init parameter")
        return cls(
            scheme=scheme,
            mean=float(raw.get("mean", 0.0)),
            std=float(raw.get("std", 0.01)),
            gain=float(raw.get("gain", 1.0)),
            mode=str(raw.get("mode", "fan_in")),
            nonlinearity=str(raw.get("nonlinearity", "relu")),
        )


def apply_init(
    module: nn.Module, scheme: InitScheme, names: Collection[str], seed: int
) -> list[str]:
    """Redraw the parameters `names` of `module` under `scheme`; returns the names changed."""
    if scheme.scheme == "default":
        return []
    gen = torch.Generator().manual_seed((int(seed) ^ _SEED_SALT) & 0xFFFFFFFF)
    changed: list[str] = []
    with torch.no_grad():
        for name, param in module.named_parameters():  # module order: a fixed draw order
            if name not in names or not param.dtype.is_floating_point:
                continue
            if param.ndim < 2:
                if not name.endswith("bias"):
                    continue  # a norm layer's scale keeps its value
                param.zero_()
            else:
                param.copy_(_draw(scheme, param, gen))
            changed.append(name)
    return changed


def _draw(scheme: InitScheme, param: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A fresh value for one weight, drawn on the CPU from `gen`."""
    out = torch.empty(param.shape, dtype=torch.float32)
    if scheme.scheme == "zeros":
        out.zero_()
    elif scheme.scheme == "normal":
        out.normal_(scheme.mean, scheme.std, generator=gen)
    elif scheme.scheme == "xavier":
        nn.init.xavier_uniform_(out, gain=scheme.gain, generator=gen)
    else:
        nn.init.kaiming_normal_(
            out, mode=scheme.mode, nonlinearity=scheme.nonlinearity, generator=gen
        )
    return out.to(dtype=param.dtype, device=param.device)
