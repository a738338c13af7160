"""Library model families: timm, torchvision and Hugging Face transformers, by name or config.

Each family builds the library's own module with the library's own constructor and never
downloads weights (`pretrained=False`, `weights=None`, `from_config`), so tensor names stay the
library's (`fc.*`, `classifier.*`) and the library's own loader reads stemma's weights
unchanged. The head is found through the library's API. stemma feeds every model one tensor
`x`; where the library wants another input, the module's instance `forward` adapts it:

- torchvision models take three channels; one-channel data is repeated to three channels
  (`input: {channels: 1, method: repeat, model_channels: 3}` in the config), so the
  stem keeps torchvision's shapes and `load_state_dict(strict=True)` still works.
- transformers take int64 token ids; the attention mask is `ids != pad_token_id`, and the
  forward returns the logits tensor.

Penultimate features are the head's input, caught by a forward pre-hook on the head.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from stemma.registry.check import archrules
from stemma.registry.errors import BuildError, StemmaError
from stemma.registry.publish import _optional
from stemma.registry.records.archconfig import REPEAT, ArchitectureConfig
from stemma.registry.rules.taskspec import CAUSAL_LM, DETECTION
from torch import nn

from .entrypoints import import_entrypoint

LIBRARY_FAMILIES = ("timm", "torchvision", "transformers")
HEADLESS = 0
"""`num_classes` of a transformers base registered without a head (the library's AutoModel)."""
FAMILY_ATTR = "stemma_family"  # a plain attribute on the module: not a tensor, not in state_dict
_EXTRAS = {"timm": "timm", "torchvision": "torchvision", "transformers": "transformers"}
_TORCHVISION_HEADS = ("fc", "classifier", "heads", "head")
_HF_HEADS = ("classifier", "score")


def require(package: str, extra: str | None = None) -> Any:
    """Import an optional library, or raise one line naming the extra that installs it."""
    top = package.split(".")[0]
    return _optional.require(package, extra or _EXTRAS.get(top, top), error=BuildError)


def library_config(arch: ArchitectureConfig, config: dict[str, Any]) -> dict[str, Any]:
    """Fill a library family's part of an architecture config (name/config, options, input)
    from the spec's block `arch`; `config` holds the family, input shape and class count."""
    family, in_shape = arch.family, config["in_shape"]
    options = dict(arch.options or {})
    if family in ("timm", "torchvision"):
        config["name"] = str(arch.name if arch.name is not None else "")
        config["options"] = options
        if family == "torchvision" and in_shape and in_shape[0] == 1:
            config["input"] = {"channels": 1, "method": REPEAT, "model_channels": 3}
    else:
        config["config"] = dict(arch.library or {})
        config["options"] = options
    return config


def read_hf_config(folder: Path, display: str) -> dict[str, Any]:
    """A Hugging Face config.json (the file, or the folder holding it), as a dict: a regular
    file of bounded size and depth (`archrules.read_config_file`)."""
    try:
        return archrules.read_config_file(folder, str(folder))
    except StemmaError as exc:
        message = exc.message if display == str(folder) else f"{display}: {exc.message}"
        raise BuildError(message) from None


def hf_config(config: ArchitectureConfig, where: str = "architecture") -> Any:
    """The transformers PretrainedConfig an architecture config describes (num_labels set)."""
    transformers = require("transformers")
    doc = dict(config.library or {})
    model_type = doc.pop("model_type", None)
    if not model_type:
        raise BuildError(f"{where}: model_type is missing from the transformers config")
    # keys written by save_pretrained that are not configuration
    for key in ("architectures", "transformers_version", "id2label", "label2id", "num_labels"):
        doc.pop(key, None)
    try:
        cfg = transformers.AutoConfig.for_model(str(model_type), **doc)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise BuildError(f"{where}: invalid transformers config: {_first_line(exc)}") from None
    if config.task != CAUSAL_LM:  # a decoder's head is its vocabulary, not labels
        cfg.num_labels = int(config.num_classes)
    return cfg


def _refuse(
    config: Mapping[str, Any],
    options: Mapping[str, Any],
    trusted: Sequence[str],
    limits: Mapping[str, int] | None,
    display: str,
) -> None:
    """Raise for the first thing `archrules` refuses in a transformers config: untrusted
    code, trust_remote_code, a dtype that is none, a model past the limits."""
    found = archrules.config_problems(config, options, trusted, limits)
    for pointer, message, _ in archrules.problems_in(found, "/architecture/config"):
        raise BuildError(f"{display} at {pointer}: {message}")


def _transformers(
    config: ArchitectureConfig,
    options: dict[str, Any],
    trusted: Sequence[str],
    limits: Mapping[str, int] | None,
    display: str,
) -> nn.Module:
    """A sequence classifier: transformers' own class for the model_type, or the class the
    config's auto_map names when stemma.yaml trusts it, imported as an entrypoint. Never
    through transformers' trust_remote_code, which imports code from any folder."""
    doc = dict(config.library or {})
    _refuse(doc, options, trusted, limits, display)
    transformers = require("transformers")
    cfg = hf_config(config, f"{display} at /architecture/config")
    if limits is not None:  # again with the defaults of the fields the spec leaves out
        for problem in archrules.size_problems(cfg.to_dict(), limits):
            where = f"{display} at /architecture/config{problem.pointer}"
            raise BuildError(f"{where}: {problem.message}")
    if config.task == CAUSAL_LM:  # a decoder with its LM head: migration/causal_lm.py
        lm: nn.Module = transformers.AutoModelForCausalLM.from_config(
            cfg, **{**options, archrules.TRUST_OPTION: False}
        )
        return lm
    entry = archrules.seq_class_entrypoint(doc)
    if entry is not None:
        pointer = "/architecture/config/auto_map/AutoModelForSequenceClassification"
        cls = import_entrypoint(entry, trusted, f"{display} at {pointer}")
        module = cls(cfg)
        if not isinstance(module, nn.Module):
            raise BuildError(f"{display} at {pointer}: {entry!r} is not a torch module class")
        return module
    auto = transformers.AutoModelForSequenceClassification
    if int(config.num_classes) == HEADLESS:  # a base without a head: a child adds one
        auto = transformers.AutoModel
    model: nn.Module = auto.from_config(cfg, **{**options, archrules.TRUST_OPTION: False})
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def build(
    config: ArchitectureConfig,
    where: str,
    trusted: Sequence[str] = (),
    limits: Mapping[str, int] | None = None,
    display: str = "architecture",
) -> nn.Module:
    """The library module for a timm, torchvision or transformers config (random init);
    `trusted` entrypoints may be auto_map classes, and `limits` (stemma.yaml's) bound the
    size of a transformers model before anything is allocated."""
    family = str(config.family)
    num_classes = int(config.num_classes)
    in_shape = [int(d) for d in config.in_shape]
    options = dict(config.options or {})
    try:
        if family == "timm":
            timm = require("timm")
            module = timm.create_model(
                str(config.name),
                pretrained=False,
                num_classes=num_classes,
                in_chans=in_shape[0],
                **options,
            )
        elif family == "torchvision":
            models = require("torchvision.models", "torchvision")
            if in_shape and in_shape[0] not in (1, 3):
                raise BuildError(
                    f"{where}: torchvision models take 1 or 3 channels, the data has {in_shape[0]}"
                )
            if config.task == DETECTION:  # no pretrained backbone fetched either
                options["weights_backbone"] = None
            module = models.get_model(
                str(config.name), weights=None, num_classes=num_classes, **options
            )
            if config.repeats_channels:
                _adapt_forward(module, _repeat_channels)
        else:
            module = _transformers(config, options, trusted, limits, display)
            if config.task != CAUSAL_LM:  # a decoder is called the library's way
                cfg = module.config
                pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
                _adapt_forward(module, _token_forward(int(pad)))
    except BuildError:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise BuildError(f"{where}: cannot build {family} model: {_first_line(exc)}") from None
    setattr(module, FAMILY_ATTR, family)
    return module


def family_of(module: nn.Module) -> str | None:
    """The library family a module was built for, or None for stemma's own modules."""
    family = getattr(module, FAMILY_ATTR, None)
    return str(family) if family else None


def _adapt_forward(
    module: nn.Module, adapt: Callable[[nn.Module, torch.Tensor], torch.Tensor]
) -> None:
    """Give this one instance a `forward(x) -> logits`; the class and its tensors are unchanged."""
    original = type(module).forward

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            return adapt(self, args[0])
        return original(self, *args, **kwargs)  # the library's own call (e.g. from peft)

    module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]


def _repeat_channels(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = type(module).forward(module, x.expand(-1, 3, -1, -1))
    return out


def _token_forward(pad: int) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()  # float copies of token ids (exact below 2**24) are accepted too
        out = type(module).forward(module, input_ids=ids, attention_mask=(ids != pad).long())
        logits: torch.Tensor = out.logits
        return logits

    return run


def input_dtype(module: nn.Module) -> torch.dtype:
    """The dtype the module takes its input in: int64 token ids or float32."""
    return torch.int64 if family_of(module) == "transformers" else torch.float32


def head_name(module: nn.Module) -> str:
    """The head's module name, found through the library's API (`head` for stemma's own)."""
    family = family_of(module)
    if family == "timm":
        classifier = module.get_classifier()  # type: ignore[operator]
        for name, sub in module.named_modules():
            if sub is classifier and name:
                return name
        raise BuildError(f"{type(module).__name__}: timm's get_classifier() is not a submodule")
    names: Sequence[str] = ("head",)
    if family == "torchvision":
        names = _TORCHVISION_HEADS
    elif family == "transformers":
        names = _HF_HEADS
    for name in names:
        if isinstance(getattr(module, name, None), nn.Module):
            return name
    raise BuildError(f"{type(module).__name__} has no head module ({', '.join(names)})")


@torch.no_grad()
def head_input(module: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features of a library module: the head's input, flattened to (N, D)."""
    caught: list[torch.Tensor] = []

    def grab(_: nn.Module, args: tuple[Any, ...]) -> None:
        caught.append(args[0])

    handle = head.register_forward_pre_hook(grab)
    try:
        module(x)
    finally:
        handle.remove()
    return caught[-1].reshape(len(caught[-1]), -1)
