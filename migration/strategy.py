"""Transfer strategies: which tensors are frozen and which are re-initialised.

`freeze` and `reinit` are fnmatch globs over tensor names (`body.0.*`, `head.*`, `fc.*`). Mode
`finetune` trains everything that is not frozen; `linear-probe` freezes all but the head (the
module the family's API names: `head`, timm's `get_classifier()`, torchvision's `fc` or
`classifier`, transformers' `classifier` or `score`). Re-initialised tensors keep the target
module's own seeded initialisation. A module whose own parameters are all frozen is held in
eval mode while training, so its batch-norm statistics stay the source's too.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from stemma.registry.errors import BuildError
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.rules.layout import SPEC_FILE
from stemma.registry.rules.taskspec import DETECTION
from torch import nn

from .architectures import build_module, head_prefix
from .hubsnapshot import base_prefixes
from .initschemes import InitScheme, apply_init
from .mapping import TensorMap, held_in_eval, transfer
from .renaming import derived_prefixes, plan_renamed

MODES = ("finetune", "linear-probe", "lora")
FEATURES = ("cached", "recompute")
DEFAULT_MAPPING = "by-name"


@dataclass(frozen=True)
class Strategy:
    """The resolved `strategy:` block of a model spec."""

    mode: str = "finetune"
    mapping: str = DEFAULT_MAPPING
    freeze: tuple[str, ...] = ()
    reinit: tuple[str, ...] = ()
    features: str = "cached"
    lora: Mapping[str, Any] | None = None  # mode lora: r, alpha, dropout, target_modules
    rename: Mapping[str, str] | None = None  # source prefix -> target prefix (renaming.py)
    init: Any = None  # str | {scheme, ...}: new tensors' initialisation (initschemes.py)

    @classmethod
    def from_spec(cls, block: Mapping[str, Any], display: str = SPEC_FILE) -> Strategy:
        """Read a strategy block, filling defaults."""
        mode = str(block.get("mode", "finetune"))
        if mode not in MODES:
            raise BuildError(
                f"{display} at /strategy/mode: unknown mode {mode!r}; use one of {', '.join(MODES)}"
            )
        features = str(block.get("features", "cached"))
        if features not in FEATURES:
            raise BuildError(
                f"{display} at /strategy/features: unknown value {features!r};"
                f" use one of {', '.join(FEATURES)}"
            )
        return cls(
            mode=mode,
            mapping=str(block.get("mapping", DEFAULT_MAPPING)),
            freeze=tuple(block.get("freeze", ())),
            reinit=tuple(block.get("reinit", ())),
            features=features,
            lora=dict(block["lora"]) if mode == "lora" and block.get("lora") else None,
            rename=dict(block["rename"]) if block.get("rename") else None,
            init=block.get("init"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved block."""
        return {
            "mode": self.mode,
            "mapping": self.mapping,
            "freeze": list(self.freeze),
            "reinit": list(self.reinit),
            "features": self.features,
        }


def match(
    names: Iterable[str], patterns: Iterable[str], pointer: str, display: str = SPEC_FILE
) -> set[str]:
    """Names matched by any pattern; a pattern that matches nothing raises BuildError."""
    pool = list(names)
    found: set[str] = set()
    for i, pattern in enumerate(patterns):
        hits = fnmatch.filter(pool, pattern)
        if not hits:
            sample = ", ".join(pool[:4]) + (", ..." if len(pool) > 4 else "")
            raise BuildError(
                f"{display} at {pointer}/{i}: pattern {pattern!r} matches no"
                f" tensor (tensors: {sample})"
            )
        found.update(hits)
    return found


def frozen_names(module: nn.Module, strategy: Strategy, display: str = SPEC_FILE) -> set[str]:
    """Parameter names the strategy freezes."""
    names = [n for n, _ in module.named_parameters()]
    frozen = match(names, strategy.freeze, "/strategy/freeze", display)
    if strategy.mode == "linear-probe":
        head = head_prefix(module) + "."
        frozen.update(n for n in names if not n.startswith(head))
    return frozen


def hold_in_eval(module: nn.Module) -> None:
    """Put every fully frozen module in eval mode (after `module.train()`)."""
    for name in held_in_eval(module):
        module.get_submodule(name).eval()


def reinit_names(module: nn.Module, strategy: Strategy, display: str = SPEC_FILE) -> set[str]:
    """Tensor names (parameters and buffers) the strategy re-initialises."""
    return match(module.state_dict().keys(), strategy.reinit, "/strategy/reinit", display)


def apply_freeze(module: nn.Module, frozen: set[str]) -> None:
    """Set requires_grad: False for frozen parameters, True for the rest."""
    for name, param in module.named_parameters():
        param.requires_grad_(name not in frozen)


@dataclass(frozen=True)
class Prepared:
    """A target module ready to train: source tensors mapped in, strategy applied."""

    module: nn.Module
    tensor_map: TensorMap | None  # None without a source
    reinit: set[str]


def prepare_target(
    config: Mapping[str, Any],
    strategy: Strategy,
    seed: int,
    source: tuple[str, Mapping[str, Any]] | None = None,
    trusted: Sequence[str] = (),
    display: str = SPEC_FILE,
) -> Prepared:
    """Build the target module (seeded), map the source's tensors in, re-initialise and
    freeze per the strategy: the one preparation shared by builds and searches."""
    torch.manual_seed(seed)  # the module's own initialisation is part of the build
    module = build_module(config, trusted, display)
    reinit = reinit_names(module, strategy, display)
    tmap = None
    if source is not None:
        src_name, src_state = source
        target = module.state_dict()
        prefixes = strategy.rename
        if prefixes is None and ArchitectureConfig.from_dict(config).task == DETECTION:
            # a classifier's tensors under a detector's names
            prefixes = derived_prefixes(src_state, target)
        if prefixes is None:  # a headless transformers base under a head model's names
            prefixes = base_prefixes(module, src_state)
        tmap = plan_renamed(
            src_state,
            target,
            strategy.mapping,
            prefixes or {},
            f"{display} at /strategy/mapping",
            f"source {src_name!r}",
        )
        if not set(tmap.pairs) - reinit:
            raise BuildError(
                f"{display} at /strategy/mapping: mapping {strategy.mapping} transfers no tensor"
                f" from source {src_name!r}; the names or shapes differ (try mapping by-shape,"
                " or another source)"
            )
        transfer(module, src_state, tmap, reinit)
    kept = set(tmap.pairs) - reinit if tmap is not None else set()
    new = {n for n, _ in module.named_parameters() if n not in kept}
    apply_init(module, InitScheme.from_spec(strategy.init, display), new, seed)
    apply_freeze(module, frozen_names(module, strategy, display))
    return Prepared(module, tmap, reinit)
