"""Train-time augmentation (`training.augment`), drawn per batch from the build's seed.

Each batch is augmented as it is drawn, never the stored dataset: every epoch sees other
flips. The draws come from a generator of their own, seeded by the training seed, in batch
order, so two builds of one spec see the same augmented batches and get the same weights.

- `hflip: p`: mirror an image left-right with probability p (boxes mirrored with it).
- `vflip: p`: mirror it top-bottom with probability p.
- `brightness: a`: scale its pixels by a factor drawn from [1 - a, 1 + a], clipped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from stemma.registry.errors import BuildError
from stemma.registry.rules.layout import SPEC_FILE

KEYS = ("hflip", "vflip", "brightness")
_SEED_SALT = 0x5A5A17  # a stream apart from the batch order's


@dataclass(frozen=True)
class Augment:
    """The resolved `training.augment` block; all zero: no augmentation."""

    hflip: float = 0.0
    vflip: float = 0.0
    brightness: float = 0.0

    @classmethod
    def from_spec(cls, block: Mapping[str, Any] | None, display: str = SPEC_FILE) -> Augment:
        """Read `training.augment`; an unknown key or a value outside [0, 1] is an error."""
        values: dict[str, float] = {}
        for key, value in dict(block or {}).items():
            if key not in KEYS:
                raise BuildError(
                    f"{display} at /training/augment/{key}: unknown augmentation;"
                    f" use {', '.join(KEYS)}"
                )
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= 1
            ):
                raise BuildError(f"{display} at /training/augment/{key}: a number in [0, 1]")
            values[key] = float(value)
        return cls(**values)

    @property
    def active(self) -> bool:
        """True when any augmentation applies."""
        return bool(self.hflip or self.vflip or self.brightness)

    def generator(self, seed: int) -> torch.Generator:
        """The generator a build draws its augmentations from."""
        return torch.Generator().manual_seed((int(seed) ^ _SEED_SALT) & 0xFFFFFFFF)

    def apply(
        self, image: torch.Tensor, boxes: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image (C, H, W) and its boxes (M, 4, xyxy pixels), augmented.

        Three numbers are drawn per image whatever applies, so enabling one augmentation
        does not shift another's draws."""
        u = torch.rand(3, generator=gen)
        height, width = image.shape[-2:]
        boxes = boxes.clone()
        if u[0] < self.hflip:
            image = image.flip(-1)
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        if u[1] < self.vflip:
            image = image.flip(-2)
            boxes[:, [1, 3]] = height - boxes[:, [3, 1]]
        if self.brightness:
            factor = 1.0 + (2.0 * float(u[2]) - 1.0) * self.brightness
            image = (image * factor).clamp(0.0, 1.0)
        return image, boxes
