"""Learning-rate schedules of a build: warmup, then constant, linear, cosine or step decay.

The loop asks for the learning rate of each optimizer step (`Schedule.lr_at`), a closed form
of the step number: a resumed build needs no scheduler state beyond the step it stopped at.
The formulas are torch.optim.lr_scheduler's (tests/test_loop_features.py compares them):

- warmup over W steps: `LinearLR(start_factor=1/W, end_factor=1, total_iters=W-1)`, so the
  first step trains at lr/W and step W-1 at the full rate (no step is wasted at lr 0);
- after warmup, with t steps since its end and T steps left in training:
  `constant` the base rate; `linear` `LinearLR(end_factor=min_lr/lr, total_iters=T)`;
  `cosine` `CosineAnnealingLR(T_max=T, eta_min=min_lr)` (its closed form);
  `step` `StepLR(step_size, gamma)` stepped once per epoch (`step_size` counts epochs since
  the start of training), never below `min_lr`.

Warmup is given in steps (`warmup_steps`) or epochs (`warmup_epochs`, converted with the
number of optimizer steps per epoch), not both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from stemma.registry.errors import BuildError
from stemma.registry.rules.layout import SPEC_FILE

NAMES = ("constant", "linear", "cosine", "step")


@dataclass(frozen=True)
class Schedule:
    """The resolved `training.schedule` block."""

    name: str = "constant"
    warmup_steps: int = 0
    warmup_epochs: int = 0
    step_size: int = 1
    gamma: float = 0.1
    min_lr: float = 0.0

    @classmethod
    def from_spec(cls, block: Mapping[str, Any], display: str = SPEC_FILE) -> Schedule:
        """Read a schema-valid block; contradictions the schema cannot see raise BuildError."""
        where = f"{display} at /training/schedule"
        unknown = sorted(set(block) - set(cls.__dataclass_fields__))
        if unknown:
            raise BuildError(f"{where}/{unknown[0]}: unknown schedule setting")
        sched = cls(**block)
        if sched.name not in NAMES:
            raise BuildError(f"{where}/name: unknown schedule {sched.name!r}; use one of {NAMES}")
        if "warmup_steps" in block and "warmup_epochs" in block:
            raise BuildError(f"{where}: give warmup_steps or warmup_epochs, not both")
        return sched

    def to_dict(self) -> dict[str, Any]:
        """The block as a spec gives it: the name and the settings that differ from their
        defaults (warmup in steps and in epochs exclude each other)."""
        defaults = Schedule()
        doc = asdict(self)
        return {k: v for k, v in doc.items() if k == "name" or v != getattr(defaults, k)}

    def warmup(self, steps_per_epoch: int) -> int:
        """Warmup length in optimizer steps."""
        return self.warmup_steps or self.warmup_epochs * steps_per_epoch

    def lr_at(self, base: float, step: int, steps_per_epoch: int, total: int) -> float:
        """Learning rate of optimizer step `step` (0-based) of `total`, from base rate `base`."""
        warm = self.warmup(steps_per_epoch)
        if step < warm:
            return base * (step + 1) / warm
        t, span = step - warm, max(total - warm, 1)
        if self.name == "linear":
            return base + (self.min_lr - base) * min(t, span) / span
        if self.name == "cosine":
            return (
                self.min_lr
                + (base - self.min_lr) * (1 + math.cos(math.pi * min(t, span) / span)) / 2
            )
        if self.name == "step":
            epoch = step // max(steps_per_epoch, 1)
            return max(self.min_lr, base * self.gamma ** (epoch // self.step_size))
        return base
