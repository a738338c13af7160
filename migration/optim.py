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

One exception, in portable mode on the CPU: Adam's square root. torch's float32 `sqrt` on the
CPU is MKL's vector math (`vsSqrt`), which picks its code path by processor; under
`MKL_CBWR=COMPATIBLE` it differs from the correctly rounded root in 15% of values, and its
last bits differ between processors (under an emulated AMD CPUID it was the one op of the
portability probe that parted from the Intel reference; `exp`, `log`, `tanh` and `erf`, also
MKL's, did not). `sqrt` below computes the root from IEEE operations only (float64 square root
and division, then one rounding to float32), which every x86-64 processor computes alike; on
1,000,000 values it equals the correctly rounded root everywhere. Portable Adam is therefore
torch's update rule (the same expression, in the same order) with that root: bit for bit
torch.optim's wherever torch's root is correctly rounded (tested against torch.optim with
torch's root swapped in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from .numerics import is_portable


def sqrt(t: torch.Tensor) -> torch.Tensor:
    """The square root a build uses: processor-independent in portable mode on the CPU.

    `rsqrt` and `reciprocal` are ATen vector kernels of one IEEE square root and divisions
    (not MKL), in float64: the float32 result is the correctly rounded root but for inputs
    within 2**-51 of a rounding midpoint, and the same on every processor either way.
    """
    low = t.dtype in (torch.float32, torch.bfloat16, torch.float16)
    if low and t.device.type == "cpu" and is_portable():
        return t.double().rsqrt().reciprocal().to(t.dtype)
    return t.sqrt()


class Optimizer:
    """Parameters with one base learning rate `lr` (the loop's schedule sets it before each
    step), each scaled by its group's factor (`scales`, default 1: discriminative fine-tuning
    gives the body a smaller rate than the head); the loop's two calls."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        weight_decay: float,
        scales: Mapping[nn.Parameter, float] | None = None,
    ) -> None:
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay
        self.scales = dict(scales or {})

    def groups(self, params: list[nn.Parameter]) -> list[tuple[float, list[nn.Parameter]]]:
        """`params` by learning-rate factor, in order of first appearance: one update call
        per group, so a spec without factors updates everything in one call, as before."""
        found: dict[float, list[nn.Parameter]] = {}
        for p in params:
            found.setdefault(self.scales.get(p, 1.0), []).append(p)
        return list(found.items())

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
        scales: Mapping[nn.Parameter, float] | None = None,
    ) -> None:
        super().__init__(params, lr, weight_decay, scales)
        self.momentum = momentum
        self.buffers: dict[nn.Parameter, torch.Tensor] = {}

    @torch.no_grad()
    def step(self) -> None:
        """One SGD step; the momentum buffer starts as the first gradient (torch's rule)."""
        for scale, params in self.groups(self._with_grad()):
            self._step(params, self.lr * scale)

    def _step(self, params: list[nn.Parameter], lr: float) -> None:
        buffers: list[torch.Tensor | None] = [self.buffers.get(p) for p in params]
        sgd(
            list(params),
            [p.grad for p in params if p.grad is not None],
            buffers,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=lr,
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
        root: Callable[[torch.Tensor], torch.Tensor] | None = None,
        scales: Mapping[nn.Parameter, float] | None = None,
    ) -> None:
        super().__init__(params, lr, weight_decay, scales)
        self.decoupled, self.betas, self.eps = decoupled, betas, eps
        self.root = root or sqrt  # portable mode's root; tests swap in torch's to compare
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
        for scale, params in self.groups(self._with_grad()):
            self._step(params, self.lr * scale)

    def _step(self, params: list[nn.Parameter], lr: float) -> None:
        states = [self._state(p) for p in params]
        if is_portable() and all(p.device.type == "cpu" and not p.is_complex() for p in params):
            for p, (step_t, exp_avg, exp_avg_sq) in zip(params, states, strict=True):
                assert p.grad is not None
                self._update(p, p.grad, step_t, exp_avg, exp_avg_sq, lr)
            return
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
            lr=lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
            decoupled_weight_decay=self.decoupled,
        )

    def _update(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        step_t: torch.Tensor,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        lr: float,
    ) -> None:
        """torch.optim.adam's single-tensor update (torch 2.4-2.14), with the portable root."""
        wd, (beta1, beta2) = self.weight_decay, self.betas
        step_t += 1
        if wd != 0:
            if self.decoupled:
                param.mul_(1 - lr * wd)
            else:
                grad = grad.add(param, alpha=wd)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step_t.item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = (self.root(exp_avg_sq) / bias_correction2_sqrt).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
