"""The card's "Usage" section: the code that loads the exported folder, per family.

Each snippet uses the loader of the library whose layout `hubfiles` writes (transformers'
`from_pretrained`, timm's `create_model`, peft's `PeftModel.from_pretrained`); stemma's own
families are rebuilt by stemma's `build_module` from `config.json`. Snippets name the folder
(or the Hub id) they load from, so the text runs as written.
"""

from __future__ import annotations

import json

from stemma.registry.records.archconfig import ArchitectureConfig
from stemma.registry.records.manifest import ModelManifest

MODULE_LOAD = """\
import json
from safetensors.torch import load_file
from stemma.migration.architectures import build_module

with open(f"{{folder}}/config.json") as f:
    config = json.load(f)
model = build_module(config{trusted})
model.load_state_dict(load_file(f"{{folder}}/model.safetensors"))
model.eval()"""


def _folder_line(where: str, hub: bool) -> list[str]:
    if hub:
        return [
            "from huggingface_hub import snapshot_download",
            "",
            f"folder = snapshot_download({where!r})",
        ]
    return [f"folder = {where!r}"]


def _module(where: str, hub: bool, family: str) -> list[str]:
    # an entrypoint family runs the code the config names: the reader says it trusts it
    trusted = ', trusted=[config["entrypoint"]]' if family == "entrypoint" else ""
    return [*_folder_line(where, hub), *MODULE_LOAD.format(trusted=trusted).splitlines()]


def _causal_lm(where: str, base_ref: str | None) -> list[str]:
    """A causal LM (or its LoRA adapter over `base_ref`) and its tokenizer, from one folder."""
    lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer", ""]
    if base_ref is None:
        return [
            *lines,
            f"model = AutoModelForCausalLM.from_pretrained({where!r}).eval()",
            f"tokenizer = AutoTokenizer.from_pretrained({where!r})",
        ]
    return [
        *lines[:1],
        "from peft import PeftModel",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({base_ref!r})",
        f"model = PeftModel.from_pretrained(base, {where!r}).eval()",
        f"tokenizer = AutoTokenizer.from_pretrained({where!r})",
    ]


def _library(family: str, where: str, hub: bool) -> list[str]:
    if family == "transformers":
        return [
            "from transformers import AutoModelForSequenceClassification",
            "",
            f"model = AutoModelForSequenceClassification.from_pretrained({where!r}).eval()",
        ]
    if family == "timm":
        prefix = "hf-hub:" if hub else "local-dir:"
        return [
            "import timm",
            "",
            f"model = timm.create_model({prefix + where!r}, pretrained=True).eval()",
        ]
    return _module(where, hub, family)


def _base(family: str, config: ArchitectureConfig, base_ref: str, base_hub: bool) -> list[str]:
    """Code that makes `base`: the base model, with the adapter's head size."""
    if family == "transformers":
        classes = int(config.num_classes or 0)
        return [
            "from transformers import AutoModelForSequenceClassification",
            "",
            "base = AutoModelForSequenceClassification.from_pretrained(",
            f"    {base_ref!r}, num_labels={classes}, ignore_mismatched_sizes=True",
            ")",
        ]
    # stemma's own and other torch families: the base's tensors of the same shape, into the
    # module the adapter was trained on (its head is saved with the adapter)
    lines = [
        "import json",
        "from safetensors.torch import load_file",
        "from stemma.migration.architectures import build_module",
        "",
        *(_folder_line(base_ref, base_hub)),
        f"config = {json.dumps(config.to_dict(), sort_keys=True)}",
        "base = build_module(config)",
        'state = load_file(f"{folder}/model.safetensors")',
        "own = base.state_dict()",
        "base.load_state_dict(",
        "    {k: v for k, v in state.items() if k in own and own[k].shape == v.shape},",
        "    strict=False,",
        ")",
    ]
    return lines


def usage(
    manifest: ModelManifest, where: str, hub: bool, base_ref: str | None, base_hub: bool
) -> list[str]:
    """The Markdown lines of the Usage section for a version (its manifest) exported to
    `where` (a Hub id when `hub`); an adapter's base is loaded from `base_ref`."""
    family = manifest.architecture.family
    adapter = manifest.adapter is not None
    out = ["## Usage", ""]
    if manifest.task == "causal-lm" and (base_ref is not None or not adapter):
        code = _causal_lm(where, base_ref if adapter else None)
        note = "With `stemma export card NAME DIR --weights`, the folder holds the model's files"
        return [*out, note + " and its tokenizer:", "", "```python", *code, "```", ""]
    if adapter:
        if base_ref is None:
            return [*out, "The adapter's base has no Hub id or export: load it first.", ""]
        code = [
            *_base(family, manifest.architecture.block, base_ref, base_hub),
            "",
            "from peft import PeftModel",
            "",
            f"model = PeftModel.from_pretrained(base, {where!r}).eval()",
        ]
        note = "Load the base, then the adapter over it (PEFT):"
    else:
        code = _library(family, where, hub)
        note = (
            "With `stemma export card NAME DIR --weights`, the folder holds the files this loads:"
        )
    return [*out, note, "", "```python", *code, "```", ""]
