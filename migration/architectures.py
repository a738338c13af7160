"""Architectures: a plain config dict (kept in the manifest) and the module built from it.

stemma's own modules expose `forward_features(x) -> (N, D)` and a linear `head`, with
`forward(x) == head(forward_features(x))`; library families (migration/families.py) keep the
library's module and head names, and `penultimate` gives their head's input. The built-in
families also list their feature stages in order, which lets training cache the output of a
frozen prefix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from stemma.registry.errors import BuildError
from stemma.registry.records.archconfig import ArchitectureConfig
from torch import nn

from .entrypoints import import_entrypoint
from .families import LIBRARY_FAMILIES, family_of, head_input, head_name, library_config
from .families import build as library_build

FAMILIES = ("mlp", "cnn", "entrypoint", *LIBRARY_FAMILIES)
DEFAULT_HIDDEN = [128, 64]
DEFAULT_CHANNELS = [16, 32]
POOLED = 4  # spatial size of the cnn's feature maps before the head


def make_config(
    arch: Mapping[str, Any], in_shape: Sequence[int], num_classes: int
) -> dict[str, Any]:
    """The full architecture config (the manifest's document): the spec's block `arch` (or a
    source's config) plus input shape and class count."""
    block = ArchitectureConfig.from_dict(arch)
    family = "mlp" if block.family is None else str(block.family)
    config: dict[str, Any] = {
        "family": family,
        "in_shape": [int(d) for d in in_shape],
        "num_classes": int(num_classes),
    }
    if family == "mlp":
        config["hidden"] = [int(h) for h in _or(block.hidden, DEFAULT_HIDDEN)]
    elif family == "cnn":
        config["channels"] = [int(c) for c in _or(block.channels, DEFAULT_CHANNELS)]
    elif family == "entrypoint":
        config["entrypoint"] = str(_or(block.entrypoint, ""))
        config["options"] = dict(block.options or {})
    elif family in LIBRARY_FAMILIES:
        return library_config(block, config)
    if block.dropout is not None:
        config["dropout"] = float(block.dropout)
    return config


def _or(value: Any, default: Any) -> Any:
    """`value`, or `default` where the block leaves it out."""
    return default if value is None else value


class StagedNet(nn.Module):
    """A network made of ordered feature stages followed by a linear `head`."""

    head: nn.Module

    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        """(name, module) pairs whose composition is `forward_features`."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape (N, D)."""
        for _, stage in self.feature_stages():
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        out: torch.Tensor = self.head(self.forward_features(x))
        return out


class MLP(StagedNet):
    """Flatten, then Linear+ReLU blocks in `body`, optional dropout, then the `head`."""

    def __init__(
        self, in_shape: Sequence[int], num_classes: int, hidden: Sequence[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = math.prod(in_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        # Dropout sits outside `body` so parameter names stay body.0, body.2, ...
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self.num_features = width

    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        """Flatten, each body layer, dropout."""
        return [
            ("flatten", self.flatten),
            *((f"body.{i}", m) for i, m in enumerate(self.body)),
            ("dropout", self.dropout),
        ]


class CNN(StagedNet):
    """Conv3x3+ReLU blocks, max-pooled while the maps are large, pooled to 4x4, then `head`.

    The adaptive pool makes the feature size independent of the input size, so a model of
    28x28 images and one of 8x8 images share every tensor shape.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"cnn needs images [C, H, W], got input shape {list(in_shape)}")
        layers: list[nn.Module] = []
        width, size = int(in_shape[0]), min(int(in_shape[1]), int(in_shape[2]))
        for c in channels:
            layers += [nn.Conv2d(width, c, kernel_size=3, padding=1), nn.ReLU()]
            if size >= 2 * POOLED:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            width = c
        layers += [nn.AdaptiveAvgPool2d(POOLED), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.num_features = width * POOLED * POOLED
        self.head = nn.Linear(self.num_features, num_classes)

    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        """Each body layer, dropout."""
        return [*((f"body.{i}", m) for i, m in enumerate(self.body)), ("dropout", self.dropout)]


def build_module(
    config: Mapping[str, Any],
    trusted: Sequence[str] = (),
    display: str = "architecture",
    limits: Mapping[str, int] | None = None,
) -> nn.Module:
    """Build the module an architecture config describes (initialised from torch's RNG).
    `trusted` are stemma.yaml's entrypoints; `limits`, its size limits, checked before a
    library model is allocated (None: a model already built, from its manifest)."""
    block = ArchitectureConfig.from_dict(config)
    family = block.family
    in_shape = [int(d) for d in block.in_shape]
    num_classes = int(block.num_classes)
    dropout = float(_or(block.dropout, 0.0))
    where = f"{display} at /architecture/family"
    try:
        if family == "mlp":
            return MLP(in_shape, num_classes, _or(block.hidden, DEFAULT_HIDDEN), dropout)
        if family == "cnn":
            return CNN(in_shape, num_classes, _or(block.channels, DEFAULT_CHANNELS), dropout)
    except ValueError as exc:
        raise BuildError(f"{where}: {exc}") from None
    if family == "entrypoint":
        where = f"{display} at /architecture/entrypoint"
        fn = import_entrypoint(str(_or(block.entrypoint, "")), trusted, where)
        module = fn(in_shape=in_shape, num_classes=num_classes, **dict(block.options or {}))
        if not (
            isinstance(module, nn.Module)
            and hasattr(module, "forward_features")
            and isinstance(getattr(module, "head", None), nn.Module)
        ):
            raise BuildError(
                f"{where}: {block.entrypoint!r} must return an nn.Module with"
                " forward_features(x) and a `head` module"
            )
        return module
    if family in LIBRARY_FAMILIES:
        return library_build(block, where, trusted, limits, display)
    raise BuildError(f"{where}: unknown family {family!r}; use one of {', '.join(FAMILIES)}")


class FeatureStage(nn.Module):
    """`forward_features` of a module that lists no stages, as one stage."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = [module]  # a list, so the module is not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped module's penultimate features, computed in eval mode (a frozen prefix)."""
        inner = self.inner[0]
        was_training = inner.training
        inner.eval()  # the module is not registered here, so `stage.eval()` does not reach it
        try:
            return penultimate(inner, x)
        finally:
            inner.train(was_training)


def head_prefix(module: nn.Module) -> str:
    """The head's module name: `head` for stemma's own, the library's (`fc`, ...) otherwise."""
    return head_name(module)


def head_of(module: nn.Module) -> nn.Module:
    """The module's head (`head`, or the one the library's API names)."""
    head = module.get_submodule(head_name(module))
    if not isinstance(head, nn.Module):  # pragma: no cover - get_submodule returns modules
        raise BuildError(f"{type(module).__name__} has no head module")
    return head


def penultimate(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features (N, D): `forward_features`, or the head's input for a library."""
    if family_of(module) is not None:
        return head_input(module, head_of(module), x)
    features = getattr(module, "forward_features")  # noqa: B009 (untyped module)
    out: torch.Tensor = features(x)
    return out


def stages(module: nn.Module) -> list[tuple[str, nn.Module, list[str]]]:
    """Ordered (name, callable, parameter names) covering the module, the head last."""
    prefix_of = {id(m): n for n, m in module.named_modules()}
    out: list[tuple[str, nn.Module, list[str]]] = []
    if isinstance(module, StagedNet):
        for name, stage in module.feature_stages():
            base = prefix_of[id(stage)]
            out.append((name, stage, [f"{base}.{p}" for p, _ in stage.named_parameters()]))
    else:
        prefix = head_prefix(module)
        head = {f"{prefix}.{p}" for p, _ in head_of(module).named_parameters()}
        rest = [n for n, _ in module.named_parameters() if n not in head]
        out.append(("features", FeatureStage(module), rest))
    prefix = head_prefix(module)
    head_module = head_of(module)
    out.append(("head", head_module, [f"{prefix}.{p}" for p, _ in head_module.named_parameters()]))
    return out


def infer_architecture(
    state: Mapping[str, torch.Tensor], in_shape: list[int] | None = None
) -> dict[str, Any]:
    """Guess an mlp or cnn config from tensor names and shapes (body.N.weight, head.weight)."""
    if "head.weight" not in state or state["head.weight"].ndim != 2:
        raise BuildError(
            "cannot infer the architecture: no 2-D head.weight tensor;"
            " pass the architecture explicitly"
        )
    body = sorted(
        (
            (int(n.split(".")[1]), t)
            for n, t in state.items()
            if n.startswith("body.") and n.endswith(".weight") and n.split(".")[1].isdigit()
        ),
        key=lambda item: item[0],
    )
    num_classes = int(state["head.weight"].shape[0])
    if body and body[0][1].ndim == 4:
        if in_shape is None or len(in_shape) != 3:
            raise BuildError(
                "cannot infer a cnn's input size from its weights; pass"
                " --in-shape C,H,W or an eval dataset"
            )
        return make_config(
            {"family": "cnn", "channels": [int(t.shape[0]) for _, t in body]}, in_shape, num_classes
        )
    if all(t.ndim == 2 for _, t in body):
        width = int(body[0][1].shape[1]) if body else int(state["head.weight"].shape[1])
        shape = in_shape or [width]
        return make_config(
            {"family": "mlp", "hidden": [int(t.shape[0]) for _, t in body]}, shape, num_classes
        )
    raise BuildError("cannot infer the architecture from the tensor names; pass it explicitly")
