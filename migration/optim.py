"""SGD, Adam and AdamW for stemma's training loops, on torch.optim's own update functions.

torch.optim's optimizer classes import the compiler stack (torch._dynamo, which loads
torch._inductor's config) the first time one is made, and enter it at every step (their eager
code calls `torch._dynamo.graph_break()`). A build never compiles, yet that import cost as much
as `import torch` itself: 1.55 s against 1.58 s (`benchmarks/bench_build.py --startup`,
`torch_dynamo_import_s` against `import_torch_s`, medians of 5), most of a small build's
start-up. The update rules the classes call, `torch.optim.sgd.sgd` and `torch.optim.adam.adam`
(the public functional forms, in those modules' `__all__`), do not import it. The classes here
keep the state the way torch.optim's do (created at a parameter's first gradient, `step` a
float32 tensor on the CPU) and call those functions with the arguments torch.optim passes, so
the weights are bit for bit those of torch.optim's classes (tests/test_optim.py); on CUDA the
functions pick torch's multi-tensor kernels exactly as the classes do.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.adam import adam
from torch.optim.sgd import sgd


class Optimizer:
    """A single group of parameters with one learning rate; the loop's two calls."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> None:
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (set to None, as torch.optim does by default)."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    def _with_grad(self) -> list[nn.Parameter]:
        """The parameters that got a gradient: the others are left as they are."""
        found = [p for p in self.params if p.grad is not None]
        if any(p.grad is not None and p.grad.is_sparse for p in found):
            raise RuntimeError("sparse gradients are not supported")
        return found

    def step(self) -> None:
        """Apply one update from the current gradients."""
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD without dampening or Nesterov: momentum and L2 weight decay."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum
        self.buffers: dict[nn.Parameter, torch.Tensor] = {}

    @torch.no_grad()
    def step(self) -> None:
        """One SGD step; the momentum buffer starts as the first gradient (torch's rule)."""
        params = self._with_grad()
        buffers: list[torch.Tensor | None] = [self.buffers.get(p) for p in params]
        sgd(
            list(params),
            [p.grad for p in params if p.grad is not None],
            buffers,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )
        if self.momentum != 0:
            for p, buf in zip(params, buffers, strict=True):
                assert buf is not None  # the update function created it
                self.buffers[p] = buf


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay) or, with `decoupled`, torch.optim.AdamW."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, lr, weight_decay)
        self.decoupled, self.betas, self.eps = decoupled, betas, eps
        self.state: dict[nn.Parameter, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _state(self, p: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(step, first moment, second moment), made at the parameter's first update."""
        if p not in self.state:
            self.state[p] = (
                torch.tensor(0.0, dtype=torch.float32),  # on the CPU, as torch.optim keeps it
                torch.zeros_like(p, memory_format=torch.preserve_format),
                torch.zeros_like(p, memory_format=torch.preserve_format),
            )
        return self.state[p]

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step (the update function advances each `step` counter)."""
        params = self._with_grad()
        states = [self._state(p) for p in params]
        adam(
            list(params),
            [p.grad for p in params if p.grad is not None],
            [s[1] for s in states],
            [s[2] for s in states],
            [],
            [s[0] for s in states],
            has_complex=any(torch.is_complex(p) for p in params),
            amsgrad=False,
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=self.lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
            decoupled_weight_decay=self.decoupled,
        )
