"""The folder layouts that a model's own library loads, built from the manifest and weights.

stemma keeps each library's tensor names, so its weights file is already the library's
state dict: the layout is that file under the library's name plus the library's config, made
from the manifest's `architecture.config` (`family`, `name`, `config`). Nothing is imported:
the files are bytes.

- transformers: `config.json` (the model's `PretrainedConfig` as a dict, with `architectures`
  naming the sequence-classification class) + `model.safetensors`, for
  `AutoModelForSequenceClassification.from_pretrained(folder)`;
- timm: `config.json` in timm's Hub layout (`architecture`, `num_classes`, `model_args`,
  `pretrained_cfg`) + `model.safetensors`, for `timm.create_model("local-dir:" + folder)`;
- mlp, cnn, entrypoint and torchvision: `config.json` (stemma's architecture config, which
  `stemma.migration.architectures.build_module` rebuilds the module from) +
  `model.safetensors` (the module's own state dict), as huggingface_hub's PyTorch mixin lays
  out a plain torch module;
- an adapter: PEFT's own `adapter_config.json` + `adapter_model.safetensors`, stored under
  `models/NAME/adapter/`, for `PeftModel.from_pretrained(base, folder)`; the config's
  `base_model_name_or_path` names the base (its Hub id, or where its export goes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from stemma import schemas
from stemma.registry.errors import SchemaError, StemmaError
from stemma.registry.publish._hubconfig import CardMetadata, TransformersConfig
from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.records.core import Manifest
from stemma.registry.records.manifest import ModelManifest, Tokenizer, model_record
from stemma.registry.rules.layout import MODELS_DIR
from stemma.registry.store.files import file_hashes, read_text_file
from stemma.registry.store.handle import Registry
from stemma.registry.store.yamlio import load_yaml_text

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MODULE_FAMILIES = ("mlp", "cnn", "entrypoint", "torchvision")
"""Families whose export is a plain torch module: stemma's config + the state dict."""
MAX_CARD_BYTES = 1 << 20
"""A README card's size bound: cards are text of a few KB."""
SEQ_CLASS = "ForSequenceClassification"
# transformers names a model's classes <Prefix>Model, <Prefix>ForMaskedLM, ...: the prefix of
# a saved config's `architectures` entry gives the sequence classifier's class name
_ARCH_PREFIX = re.compile(r"^([A-Za-z0-9_]+?)(?:Model|For[A-Za-z]+|LMHeadModel)$")


def _checked(reg: Registry, manifest: Manifest, rel: str, sha256: str, pointer: str) -> bytes:
    """A file the manifest records (`path` + `sha256`), from the working tree, as recorded."""
    display = reg.rel(MODELS_DIR, manifest.name, rel)
    path = reg.resolve(
        f"{MODELS_DIR}/{manifest.name}/{rel}", pointer=pointer, display=manifest.path
    )
    if not path.is_file():
        raise StemmaError(
            f"{display} is missing: restore the weights first"
            f" (stemma checkout {manifest.name}@REF, or dvc pull)"
        )
    if file_hashes(path)["sha256"] != sha256:
        raise StemmaError(
            f"{display} is not the weights of version {manifest.id[:19]}: run"
            f" `stemma checkout {manifest.name}@{manifest.id[7:19]}` first"
        )
    return path.read_bytes()


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def architectures(hf: TransformersConfig) -> list[str] | None:
    """The `architectures` entry of the exported config: the class stemma built (the
    auto_map class a trusted entrypoint names, else `<Prefix>ForSequenceClassification`
    from the saved config's own `architectures`, else from transformers' table)."""
    auto = hf.auto_sequence_classifier
    if isinstance(auto, str) and auto:
        return [auto.rsplit(".", 1)[-1]]
    for named in hf.architectures:
        found = _ARCH_PREFIX.match(named)
        if found:
            return [found.group(1) + SEQ_CLASS]
    try:  # transformers' own table; importing it imports torch, so only here (--weights)
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as NAMES,
        )
    except ImportError:
        return None
    name = NAMES.get(str(hf.model_type))
    return [str(name)] if name else None


def _transformers_config(config: ArchitectureConfig, name: str) -> dict[str, Any]:
    hf = TransformersConfig.from_dict(
        config.library,
        f"model {name!r}: architecture.config.config holds no transformers config"
        " (with model_type); it cannot be written as config.json",
    )
    if config.num_classes == 0:  # a base registered without a head: the library's Model
        found = [m for m in map(_ARCH_PREFIX.match, hf.architectures) if m]
        return hf.to_dict(architectures=[found[0].group(1) + "Model"] if found else None)
    if isinstance(config.num_classes, int):
        # the build sets the head's size from the data (num_labels), not from the config
        return hf.to_dict(
            ("id2label", "label2id"), num_labels=config.num_classes, architectures=architectures(hf)
        )
    return hf.to_dict(architectures=architectures(hf))


def _timm_config(config: ArchitectureConfig, name: str) -> dict[str, Any]:
    if not isinstance(config.name, str):
        raise StemmaError(f"model {name!r}: architecture.config.name names no timm model")
    model_args = dict(config.options or {})
    in_shape = config.in_shape
    if isinstance(in_shape, list) and in_shape:
        model_args.setdefault("in_chans", in_shape[0])
    input_size = list(in_shape) if isinstance(in_shape, list) and len(in_shape) == 3 else None
    return {
        "architecture": config.name,
        "num_classes": config.num_classes,
        "model_args": model_args,
        "pretrained_cfg": {"num_classes": config.num_classes}
        if input_size is None
        else {"num_classes": config.num_classes, "input_size": input_size},
    }


def _adapter_files(
    reg: Registry, manifest: Manifest, record: ModelManifest, base_ref: str | None
) -> list[tuple[str, bytes]]:
    """PEFT's two files, as the build recorded them, with `base_model_name_or_path` set."""
    if record.adapter is None:
        raise SchemaError(manifest.path, "an adapter model records its adapter config", "/adapter")
    config_block = record.adapter.config
    raw = _checked(reg, manifest, config_block.path, config_block.sha256, "/adapter/config/path")
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise StemmaError(
            f"{reg.rel(MODELS_DIR, manifest.name, config_block.path)}: not a JSON object"
        )
    if base_ref is not None:
        doc = {**doc, "base_model_name_or_path": base_ref}
    weights = record.weights
    data = _checked(reg, manifest, weights.path, weights.sha256, "/weights/path")
    return [(PEFT_CONFIG, _dump(doc)), (PEFT_WEIGHTS, data)]


def _causal_lm_config(config: ArchitectureConfig, name: str) -> dict[str, Any]:
    """config.json of a causal LM: its transformers config naming the `...ForCausalLM` class
    (transformers' own table, imported only here), for AutoModelForCausalLM.from_pretrained."""
    hf = TransformersConfig.from_dict(
        config.library, f"model {name!r}: architecture.config.config holds no decoder config"
    )
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as NAMES,
        )

        found = NAMES.get(str(hf.model_type))
    except ImportError:  # without transformers no class is named; its loader is absent too
        found = None
    return hf.to_dict(
        ("id2label", "label2id", "num_labels"), architectures=[str(found)] if found else None
    )


def tokenizer_files(reg: Registry, manifest: Manifest) -> list[tuple[str, bytes]]:
    """The model's tokenizer files (models/NAME/tokenizer/), each checked against the sha256
    its manifest records (bare hex digests there); none for a model without a tokenizer."""
    return _tokenizer_files(reg, manifest, model_record(manifest).tokenizer)


def _tokenizer_files(
    reg: Registry, manifest: Manifest, block: Tokenizer | None
) -> list[tuple[str, bytes]]:
    if block is None:
        return []
    return [
        (n, _checked(reg, manifest, f"tokenizer/{n}", f"sha256:{sha}", "/tokenizer"))
        for n, sha in sorted(block.files.items())
    ]


def _quantization(record: ModelManifest, doc: dict[str, Any]) -> dict[str, Any]:
    """A transformers config.json with the quantized build's `quantization_config`, so
    from_pretrained reads torchao's tensors through TorchAoConfig (others as they are)."""
    block = record.quantize
    quantized = None if block is None else block.hf_quantization_config
    return {**doc, "quantization_config": dict(quantized)} if quantized else doc


def weight_files(
    reg: Registry, manifest: Manifest, base_ref: str | None = None
) -> list[tuple[str, bytes]]:
    """(file name, content) of the library layout for this version; `base_ref` is what an
    adapter's config names as its base. Raises for a family without a layout. A model with a
    tokenizer (a causal LM) brings its files too, so AutoTokenizer loads the same folder."""
    return record_weight_files(reg, manifest, model_record(manifest), base_ref)


def record_weight_files(
    reg: Registry, manifest: Manifest, record: ModelManifest, base_ref: str | None = None
) -> list[tuple[str, bytes]]:
    """`weight_files` of a manifest already read as its typed `record`."""
    config = record.architecture.block
    family = record.architecture.family
    if record.adapter is not None:
        return _adapter_files(reg, manifest, record, base_ref) + _tokenizer_files(
            reg, manifest, record.tokenizer
        )
    weights = record.weights
    if family == "transformers" and config.task == "causal-lm":
        return [
            (
                CONFIG_NAME,
                _dump(_quantization(record, _causal_lm_config(config, manifest.name))),
            ),
            (WEIGHTS_NAME, _checked(reg, manifest, weights.path, weights.sha256, "/weights/path")),
            *_tokenizer_files(reg, manifest, record.tokenizer),
        ]
    if family == "transformers":
        doc = _transformers_config(config, manifest.name)
        doc = _quantization(record, doc)
    elif family == "timm":
        doc = _timm_config(config, manifest.name)
    elif family in MODULE_FAMILIES:
        doc = config.to_dict()
    else:
        raise StemmaError(
            f"--weights is not supported for family {family or 'unknown'!r} (model"
            f" {manifest.name!r}): no library loads it"
        )
    return [
        (CONFIG_NAME, _dump(doc)),
        (WEIGHTS_NAME, _checked(reg, manifest, weights.path, weights.sha256, "/weights/path")),
        *_tokenizer_files(reg, manifest, record.tokenizer),  # a text classifier's tokenizer
    ]


def hub_id_pattern() -> re.Pattern[str]:
    """A Hub repository id (`org/name` or `name`): the model spec's `hub_id` pattern."""
    return re.compile(str(schemas.load("model-spec")["properties"]["hub_id"]["pattern"]))


def _card_metadata(path: Path) -> dict[str, Any]:
    """The YAML front matter of a README card (empty when there is none); a bounded
    regular file, safe-loaded like every YAML stemma reads."""
    text = read_text_file(path, str(path), limit=MAX_CARD_BYTES)
    if text is None or not text.startswith("---"):
        return {}
    head, sep, _ = text[3:].partition("\n---")
    doc = load_yaml_text(head, str(path)) if sep else None
    return doc if isinstance(doc, dict) else {}


def snapshot_hub_id(folder: Path) -> str | None:
    """The Hub id of a snapshot folder that huggingface_hub downloaded: from the cache's own
    layout (`models--ORG--NAME/snapshots/REVISION`), else from the folder's README card
    (`model_id`, or `model-index[0].name` when it is an `org/name` id). None when unknown."""
    valid = hub_id_pattern()
    parts = Path(folder).resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        candidate = parts[-3][len("models--") :].replace("--", "/")
        if valid.match(candidate):
            return candidate
    try:  # the card is optional metadata: one the loader refuses names nothing
        meta = _card_metadata(Path(folder) / "README.md")
    except StemmaError:
        return None
    card = CardMetadata.from_dict(meta)
    for value in (card.model_id, card.index_name):
        if isinstance(value, str) and "/" in value and valid.match(value):
            return value
    return None
