"""LoRA adapters through peft, stored in PEFT's own format beside the manifest.

`strategy: {mode: lora, lora: {r, alpha, dropout, target_modules}}` with
`source: {model: BASE, relation: adapter}`: the base's tensors are mapped in and frozen,
peft's `get_peft_model` injects the LoRA layers, and the head is trained and saved with the
adapter (`modules_to_save`). The outputs are `models/NAME/adapter/adapter_config.json` and
`adapter_model.safetensors`, as `save_pretrained` writes them, so
`PeftModel.from_pretrained(<the base>, "models/NAME/adapter")` loads them; no copy of the base
is stored. `compose` is the one way every reader (load_model, a child's source, checks,
explore, verify) turns base + adapter back into a plain module: LoRA merged into the base.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from stemma.registry.errors import BuildError
from torch import nn

from .families import require

ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.0}


def lora_block(block: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved `strategy.lora` block."""
    out = {**DEFAULTS, **dict(block)}
    out["target_modules"] = [str(t) for t in out.get("target_modules") or []]
    return out


def check_targets(module: nn.Module, targets: list[str], display: str) -> None:
    """Refuse target modules that name no module (peft matches a name or a name suffix)."""
    names = [n for n, _ in module.named_modules() if n]
    for i, target in enumerate(targets):
        if not any(n == target or n.endswith("." + target) for n in names):
            sample = ", ".join(n for n, m in module.named_modules() if isinstance(m, nn.Linear))
            raise BuildError(
                f"{display} at /strategy/lora/target_modules/{i}: no module named {target!r}"
                f" (linear modules: {sample[:200]})"
            )


def inject(module: nn.Module, lora: Mapping[str, Any], head: str) -> Any:
    """Wrap `module` with peft's LoRA (base frozen, head in modules_to_save); the PeftModel."""
    peft = require("peft")
    config = peft.LoraConfig(
        r=int(lora["r"]),
        lora_alpha=float(lora["alpha"]),
        lora_dropout=float(lora["dropout"]),
        target_modules=list(lora["target_modules"]),
        modules_to_save=[head],
    )
    return peft.get_peft_model(module, config)


def adapter_files(peft_model: Any) -> dict[str, bytes]:
    """The bytes `save_pretrained` writes for the adapter (config and weights only)."""
    with tempfile.TemporaryDirectory(prefix="stemma-adapter-") as tmp:
        peft_model.save_pretrained(tmp)
        return {name: (Path(tmp) / name).read_bytes() for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}


def rows(peft_model: Any, transferred: set[str]) -> list[dict[str, Any]]:
    """Per-tensor rows of the adapted module: adapter and head tensors new, the base frozen."""
    base = peft_model.get_base_model()
    params = dict(base.named_parameters())
    out = []
    for name, tensor in base.state_dict().items():
        plain = name.replace(".base_layer.", ".").replace(".original_module.", ".")
        added = ".lora_" in name or ".modules_to_save." in name
        param = params.get(name)
        out.append(
            {
                "name": name,
                "kind": "parameter" if param is not None else "buffer",
                "shape": [int(d) for d in tensor.shape],
                "dtype": str(tensor.dtype).replace("torch.", ""),
                "origin": "new" if added or plain not in transferred else "transferred",
                "frozen": param is None or not param.requires_grad,
                "source_name": None if added or plain not in transferred else plain,
            }
        )
    return out


def compose(
    module: nn.Module, base_state: Mapping[str, torch.Tensor], adapter_dir: Path, display: str
) -> nn.Module:
    """Base + adapter as one plain module: base tensors mapped in, adapter loaded, merged."""
    peft = require("peft")
    target = module.state_dict()
    with torch.no_grad():
        for name, tensor in base_state.items():
            if name in target and target[name].shape == tensor.shape:
                target[name].copy_(tensor)
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise BuildError(f"{display}: adapter files missing in {adapter_dir}; run dvc repro")
    peft_model = peft.PeftModel.from_pretrained(module, str(adapter_dir))
    merged: nn.Module = peft_model.merge_and_unload()
    merged.eval()
    return merged
