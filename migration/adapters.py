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

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

import torch
from stemma.registry.errors import BuildError, SchemaError
from stemma.registry.records.manifest import Adapter, FileRef, ModelRef, Tensor
from stemma.registry.store.files import parse_json_text, read_bytes_file
from torch import nn

from .families import require
from .mapping import tensor_row

ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.0}
MAX_CONFIG_BYTES = 1 << 16
"""peft writes about 2 KB; anything far larger is not a config it wrote."""
MAX_RANK = 1 << 16
"""Bound on `r`: a rank past this allocates tensors no tiny-to-large model here could hold."""
MAX_ALPHA = 1e6
"""Bound on `lora_alpha` (a scale; peft divides it by r)."""
MAX_TARGETS = 4096
LORA_TYPE = "LORA"
"""The peft type of a `peft-lora` adapter, the only format stemma builds."""


def lora_block(block: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved `strategy.lora` block."""
    out = {**DEFAULTS, **dict(block)}
    out["target_modules"] = [str(t) for t in out.get("target_modules") or []]
    return out


def adapter_record(
    base: ModelRef,
    lora: Mapping[str, Any],
    config: FileRef,
    modules_to_save: tuple[str, ...] | None = None,
) -> Adapter:
    """The manifest's `adapter` block: PEFT's LoRA format on `base`, the resolved `lora`
    block (`lora_block`: r, alpha, dropout, target modules, as the spec gave them), the
    modules saved whole (a classifier's head) and the adapter config file."""
    keys = ("format", "base", "r", "alpha", "dropout", "target_modules")
    return Adapter(
        keys=keys + (() if modules_to_save is None else ("modules_to_save",)) + ("config",),
        format="peft-lora",
        base=base,
        r=lora["r"],
        alpha=lora["alpha"],  # as given: an integer alpha stays one in the manifest
        dropout=lora["dropout"],
        target_modules=tuple(lora["target_modules"]),
        modules_to_save=modules_to_save,
        config=config,
    )


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
        files = {n: (Path(tmp) / n).read_bytes() for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
    # peft keeps target_modules as a set: its JSON order follows the interpreter's hash seed,
    # so the lists are sorted to give a rebuild the same bytes (peft reads either order)
    doc = json.loads(files[ADAPTER_CONFIG])
    for key in ("target_modules", "modules_to_save"):
        if isinstance(doc.get(key), list):
            doc[key] = sorted(doc[key])
    files[ADAPTER_CONFIG] = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    return files


def rows(peft_model: Any, transferred: set[str]) -> list[Tensor]:
    """Per-tensor rows of the adapted module: adapter and head tensors new, the base frozen."""
    base = peft_model.get_base_model()
    params = dict(base.named_parameters())
    out = []
    for name, tensor in base.state_dict().items():
        plain = name.replace(".base_layer.", ".").replace(".original_module.", ".")
        added = ".lora_" in name or ".modules_to_save." in name
        param = params.get(name)
        fed = not added and plain in transferred
        out.append(
            tensor_row(
                name,
                "parameter" if param is not None else "buffer",
                tensor.shape,
                str(tensor.dtype).replace("torch.", ""),
                "transferred" if fed else "new",
                param is None or not param.requires_grad,
                plain if fed else None,
            )
        )
    return out


def read_adapter_config(path: Path, display: str, root: Path | None = None) -> dict[str, Any]:
    """The adapter config at `path`, checked before peft reads it: a bounded regular JSON
    file (inside `root` when given) whose peft_type is peft's LORA and whose rank, alpha,
    dropout and module lists have the types and bounds peft needs. Raises one located error
    naming the file and field (peft itself would fail with a bare KeyError or allocate
    whatever `r` says)."""
    raw = read_bytes_file(path, display, root=root, limit=MAX_CONFIG_BYTES)
    if raw is None:
        raise BuildError(f"{display}: the adapter config is missing; run dvc repro")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SchemaError(display, "is not UTF-8 text") from None
    doc = parse_json_text(text, display)
    if not isinstance(doc, dict):
        raise SchemaError(display, "an adapter config is a JSON object")
    check_adapter_config(doc, display)
    return doc


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_adapter_config(doc: Mapping[str, Any], display: str) -> None:
    """Refuse an adapter config (parsed) that is no LoRA config peft could have written."""
    kind = doc.get("peft_type")
    if kind != LORA_TYPE:
        known = _peft_types()
        why = "is not one of peft's adapter types" if kind not in known else "is not LoRA"
        raise SchemaError(
            display,
            f"{str(kind)[:80]!r} {why}; a peft-lora adapter has {LORA_TYPE!r}",
            "/peft_type",
        )
    rank = doc.get("r")
    if not _is_int(rank) or not 1 <= rank <= MAX_RANK:
        raise SchemaError(display, f"must be an integer from 1 to {MAX_RANK}", "/r")
    alpha = doc.get("lora_alpha")
    if not _is_number(alpha) or not 0 < alpha <= MAX_ALPHA:
        raise SchemaError(
            display, f"must be a number above 0, at most {MAX_ALPHA:g}", "/lora_alpha"
        )
    dropout = doc.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0 <= dropout <= 1:
        raise SchemaError(display, "must be a number from 0 to 1", "/lora_dropout")
    for key in ("target_modules", "modules_to_save"):
        value = doc.get(key)
        if value is None and key == "modules_to_save":
            continue
        if not isinstance(value, list) or not value or len(value) > MAX_TARGETS:
            raise SchemaError(
                display, f"must be a list of 1 to {MAX_TARGETS} module names", f"/{key}"
            )
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item or len(item) > 1000:
                raise SchemaError(display, "must be a module name (a string)", f"/{key}/{i}")


def _peft_types() -> set[str]:
    """The adapter types peft knows (its `PeftType` enum)."""
    try:
        return {str(t.value) for t in require("peft").PeftType}
    except BuildError:  # no peft installed: LoRA is the one type stemma can use anyway
        return {LORA_TYPE}


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
    # peft would read a config of any content (a bare KeyError for an unknown type, a
    # tensor of whatever rank it says): it is checked first
    read_adapter_config(adapter_dir / ADAPTER_CONFIG, _display_of(adapter_dir, display))
    peft_model = peft.PeftModel.from_pretrained(module, str(adapter_dir))
    merged: nn.Module = peft_model.merge_and_unload()
    merged.eval()
    return merged


def _display_of(adapter_dir: Path, manifest_display: str) -> str:
    """The config's name as messages give it: beside the manifest that names it."""
    folder = manifest_display.rsplit("/", 1)[0] if "/" in manifest_display else ""
    rel = f"{ADAPTER_DIR}/{ADAPTER_CONFIG}"
    return f"{folder}/{rel}" if folder else str(adapter_dir / ADAPTER_CONFIG)
