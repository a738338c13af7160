"""The folder layouts that a model's own library loads, built from the manifest and weights.

stemma keeps each library's tensor names, so its weights file is already the library's
state dict: the layout is that file under the library's name plus the library's config, made
from the manifest's `architecture.config` (`family`, `name`, `config`). Nothing is imported:
the files are bytes.

- transformers: `config.json` (the model's `PretrainedConfig` as a dict) + `model.safetensors`,
  for `AutoModel*.from_pretrained(folder)`;
- timm: `config.json` in timm's Hub layout (`architecture`, `num_classes`, `model_args`,
  `pretrained_cfg`) + `model.safetensors`, for `timm.create_model("local-dir:" + folder)`;
- an adapter: PEFT's own `adapter_config.json` + `adapter_model.safetensors`, stored beside
  the manifest, for `PeftModel.from_pretrained(base, folder)`.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import StemmaError
from .files import file_hashes
from .records import Manifest
from .registry import Registry

WEIGHTS_NAME = "model.safetensors"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
LAYOUTS = ("transformers", "timm")


def _read(reg: Registry, name: str, file: str) -> bytes:
    path = reg.resolve(f"models/{name}/{file}", display=reg.rel("models", name, file))
    if not path.is_file():
        raise StemmaError(
            f"{reg.rel('models', name, file)} is missing: restore the weights first"
            f" (stemma checkout {name}@REF, or dvc pull)"
        )
    return path.read_bytes()


def _weights(reg: Registry, manifest: Manifest) -> bytes:
    """The version's weights from the working tree, checked against the manifest's hash."""
    weights = manifest.raw["weights"]
    path = reg.resolve(
        f"models/{manifest.name}/{weights['path']}", pointer="/weights/path", display=manifest.path
    )
    if not path.is_file() or file_hashes(path)["sha256"] != weights["sha256"]:
        raise StemmaError(
            f"{reg.rel('models', manifest.name, str(weights['path']))} is not the weights of"
            f" version {manifest.id[:19]}: run"
            f" `stemma checkout {manifest.name}@{manifest.id[7:19]}` first"
        )
    return path.read_bytes()


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _transformers_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    hf = config.get("config")
    if not isinstance(hf, dict) or "model_type" not in hf:
        raise StemmaError(
            f"model {name!r}: architecture.config.config holds no transformers config"
            " (with model_type); it cannot be written as config.json"
        )
    doc = dict(hf)
    if isinstance(config.get("num_classes"), int):
        # the build sets the head's size from the data (num_labels), not from the config
        for key in ("id2label", "label2id"):
            doc.pop(key, None)
        doc["num_labels"] = config["num_classes"]
    return doc


def _timm_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    arch = config.get("name")
    if not isinstance(arch, str):
        raise StemmaError(f"model {name!r}: architecture.config.name names no timm model")
    model_args = dict(config.get("options") or config.get("kwargs") or {})
    in_shape = config.get("in_shape")
    if isinstance(in_shape, list) and in_shape:
        model_args.setdefault("in_chans", in_shape[0])
    pretrained_cfg: dict[str, Any] = {"num_classes": config.get("num_classes")}
    if isinstance(in_shape, list) and len(in_shape) == 3:
        pretrained_cfg["input_size"] = list(in_shape)
    return {
        "architecture": arch,
        "num_classes": config.get("num_classes"),
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
    }


def weight_files(reg: Registry, manifest: Manifest) -> list[tuple[str, bytes]]:
    """(file name, content) of the library layout for this version; raises for a family
    without one."""
    config = dict((manifest.raw.get("architecture") or {}).get("config") or {})
    family = str(config.get("family", ""))
    relation = (manifest.raw.get("source") or {}).get("relation")
    if relation == "adapter":
        return [(f, _read(reg, manifest.name, f)) for f in PEFT_FILES]
    if family == "transformers":
        hf = _transformers_config(config, manifest.name)
        return [("config.json", _dump(hf)), (WEIGHTS_NAME, _weights(reg, manifest))]
    if family == "timm":
        cfg = _timm_config(config, manifest.name)
        return [("config.json", _dump(cfg)), (WEIGHTS_NAME, _weights(reg, manifest))]
    raise StemmaError(
        f"--weights is not supported for family {family or 'unknown'!r} (model"
        f" {manifest.name!r}): only {', '.join(LAYOUTS)} and adapters have a library layout"
    )
