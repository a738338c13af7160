"""Rules over a spec's architecture that its schema cannot state: the code a transformers
config names, the dtype it asks for, and how large the model it describes would be.

`validate` (registry/consistency.py), the build (migration/families.py), `stemma register`
and the audit all apply these, so they live here, in plain Python: no torch, no transformers.

A transformers config's `auto_map` names classes that transformers imports and runs
(`trust_remote_code`). That is code a spec runs, so it is an entrypoint: each class,
written as the entrypoint `module:Class`, must be listed under `entrypoints` in stemma.yaml,
and stemma imports it as it imports every entrypoint (from the registry root), never through
transformers' `trust_remote_code`, which would run code from any folder the config names.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stemma.registry.errors import StemmaError
from stemma.registry.records.core import LIMITS
from stemma.registry.rules.naming import ENTRYPOINT_RE
from stemma.registry.rules.pointer import escape as _escape
from stemma.registry.store.files import parse_json_text, plain_value, read_text_file

AUTO_MAP = "auto_map"
TRUST_OPTION = "trust_remote_code"
# The dtypes a config may name (torch's names, as transformers writes them in config.json).
DTYPES = frozenset({"auto", "float32", "float16", "bfloat16", "float64", "float", "half", "double"})
_DTYPE_KEYS = ("torch_dtype", "dtype")
CONFIG_BYTES = 1 << 20  # a config.json is a few kilobytes

# The fields the usual transformers configs spell each size with, first match wins.
_WIDTH = ("hidden_size", "n_embd", "d_model", "dim", "embed_dim")
_DEPTH = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_STACKS = ("encoder_layers", "decoder_layers")  # encoder-decoder models: both stacks count
_INNER = ("intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim", "hidden_dim")
_TABLES = ("vocab_size", "max_position_embeddings", "n_positions", "type_vocab_size")


@dataclass(frozen=True)
class Problem:
    """One refusal: a JSON pointer below the config (or options), and why. `untrusted` marks
    code that is not listed under entrypoints (an untrusted-entrypoint violation)."""

    pointer: str
    message: str
    untrusted: bool = False


@dataclass(frozen=True)
class CodeRef:
    """A class an `auto_map` entry names: `pointer` below the config, the text as written,
    and the entrypoint that trusts it (None: code elsewhere, e.g. a Hub repo `org/x--m.C`)."""

    pointer: str
    ref: str
    entrypoint: str | None


def code_refs(config: Mapping[str, Any]) -> list[CodeRef]:
    """Every class the config's `auto_map` names, in order."""
    auto = config.get(AUTO_MAP)
    if auto is None:
        return []
    if not isinstance(auto, Mapping):
        return [CodeRef(f"/{AUTO_MAP}", str(auto)[:80], None)]
    found = []
    for key, value in auto.items():
        pointer = f"/{AUTO_MAP}/{_escape(str(key))}"
        values = value if isinstance(value, list) else [value]  # tokenizers: [slow, fast]
        for i, ref in enumerate(values):
            where = (
                pointer if len(values) == 1 and not isinstance(value, list) else f"{pointer}/{i}"
            )
            if ref is None:
                continue  # a tokenizer pair without its slow class
            found.append(CodeRef(where, str(ref)[:200], _entrypoint(ref)))
    return found


def _entrypoint(ref: Any) -> str | None:
    """`module.Class` as the entrypoint `module:Class`; None for anything else."""
    if not isinstance(ref, str) or "--" in ref:
        return None
    module, _, cls = ref.rpartition(".")
    entry = f"{module}:{cls}"
    return entry if ENTRYPOINT_RE.match(entry) else None


def seq_class_entrypoint(config: Mapping[str, Any]) -> str | None:
    """The entrypoint of the class `auto_map` gives for sequence classification, if any."""
    auto = config.get(AUTO_MAP)
    ref = auto.get("AutoModelForSequenceClassification") if isinstance(auto, Mapping) else None
    return _entrypoint(ref) if ref is not None else None


def config_problems(
    config: Mapping[str, Any],
    options: Mapping[str, Any],
    trusted: Sequence[str],
    limits: Mapping[str, int] | None,
) -> list[Problem]:
    """What a transformers config (and its constructor options) may not do: name untrusted
    code, ask transformers to trust code, name an unknown dtype, or exceed `limits` (not
    checked when None). Pointers are below the config; options' start with /options."""
    found = [
        Problem(
            c.pointer,
            f"{c.ref!r} is code transformers would run; list it as {c.entrypoint!r} under"
            " entrypoints in stemma.yaml to trust it"
            if c.entrypoint is not None
            else f"{c.ref!r} names code outside the registry, which stemma never runs;"
            " use module.Class with the module in the registry",
            untrusted=True,
        )
        for c in code_refs(config)
        if c.entrypoint is None or c.entrypoint not in trusted
    ]
    if TRUST_OPTION in options:
        found.append(
            Problem(
                f"/options/{TRUST_OPTION}",
                f"{TRUST_OPTION} is never passed to transformers; list the auto_map classes"
                " under entrypoints in stemma.yaml instead",
            )
        )
    for where, block in (("", config), ("/options", options)):
        for key in _DTYPE_KEYS:
            value = block.get(key)
            name = value.removeprefix("torch.") if isinstance(value, str) else value
            if value is not None and name not in DTYPES:
                found.append(
                    Problem(
                        f"{where}/{key}",
                        f"{key} {str(value)[:40]!r} is not a dtype; use one of"
                        f" {', '.join(sorted(DTYPES))}",
                    )
                )
    if limits is not None:
        found += size_problems(config, limits)
    return found


def size_problems(config: Mapping[str, Any], limits: Mapping[str, int]) -> list[Problem]:
    """The config's model against stemma.yaml's limits (an estimate, from the usual fields);
    a limit `limits` leaves out is the default."""
    limits = {**LIMITS, **limits}
    params, layers = estimate(config)
    if layers > limits["max_layers"]:
        return [
            Problem(
                _largest(config, (*_DEPTH, *_STACKS)),
                f"{layers} layers exceed limits.max_layers {limits['max_layers']} in"
                " stemma.yaml; raise it there if this model is meant",
            )
        ]
    if params > limits["max_parameters"]:
        return [
            Problem(
                _largest(config, (*_WIDTH, *_INNER, *_TABLES, *_DEPTH, *_STACKS)),
                f"about {params:.3g} parameters exceed limits.max_parameters"
                f" {limits['max_parameters']} in stemma.yaml; raise it there if this model"
                " is meant",
            )
        ]
    return []


def estimate(config: Mapping[str, Any], depth: int = 0) -> tuple[int, int]:
    """(parameters, layers) of a transformers config, sub-configs included: embedding tables
    plus, per layer, attention (4 H^2) and the feed-forward block (2 H I). An estimate, close
    for the BERT/GPT/T5 families; enough to refuse a model that cannot fit."""
    width = _number(config, _WIDTH)
    inner = _number(config, _INNER) or 4 * width
    layers = _number(config, _DEPTH) + sum(_number(config, (k,)) for k in _STACKS)
    tables = sum(_number(config, (k,)) for k in _TABLES)
    params = tables * width + layers * (4 * width * width + 2 * width * inner + 9 * width)
    if depth < 8:  # composite models (text_config, vision_config, encoder, decoder)
        for value in config.values():
            if isinstance(value, Mapping):
                more, deeper = estimate(value, depth + 1)
                params, layers = params + more, layers + deeper
    return params, layers


def layer_parameters(widths: Sequence[int], kernel: int = 1) -> int:
    """Weights between consecutive widths (the input's width is not known before the data)."""
    return sum(a * b * kernel for a, b in itertools.pairwise(widths))


def _number(config: Mapping[str, Any], keys: Sequence[str]) -> int:
    """The first of `keys` that holds a finite non-negative number, as an int (else 0)."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        return max(0, int(value))
    return 0


def _largest(config: Mapping[str, Any], keys: Sequence[str]) -> str:
    """The pointer of the largest of `keys` in the config (the field to look at)."""
    present = [(_number(config, (k,)), k) for k in keys if k in config]
    return f"/{_escape(max(present)[1])}" if present else ""


def read_config_file(folder: Path, display: str) -> dict[str, Any]:
    """A Hugging Face config.json (the file, or the folder holding it): a regular file of
    bounded size, parsed with JSON's limits (depth, numbers); errors name the file."""
    path = folder if folder.is_file() else folder / "config.json"
    shown = f"{display.rstrip('/')}/config.json" if path != folder else display
    text = read_text_file(path, shown, limit=CONFIG_BYTES)
    if text is None:
        raise ConfigFileError(f"{display}: {path.name} not found in {folder}")
    doc = plain_value(parse_json_text(text, shown), shown)  # nesting past MAX_DEPTH refused
    if not isinstance(doc, dict) or "model_type" not in doc:
        raise ConfigFileError(f"{shown}: no model_type")
    return doc


class ConfigFileError(StemmaError):
    """A config.json that is missing or is no transformers config."""

    code = "schema"


def problems_in(found: Sequence[Problem], base: str) -> Iterator[tuple[str, str, bool]]:
    """(pointer, message, untrusted) with each problem's pointer under `base`
    (/architecture/config), options under /architecture."""
    for p in found:
        root = "/architecture" if p.pointer.startswith("/options") else base
        yield root + p.pointer, p.message, p.untrusted
