"""A Hugging Face snapshot folder as the Hub ships it, checked before any library reads it.

A snapshot (`huggingface_hub.snapshot_download`, or a package that bundles one) holds
`config.json`, the weights (`model.safetensors`, or shards named by
`model.safetensors.index.json`), often the tokenizer's files and a `README.md` card. Its
content is untrusted: the index names the files to open, the card is YAML. Here

- the index is a bounded JSON file whose shard names are plain file names beside it, each
  shard a regular file (not a link) inside the folder, read once and hashed;
- the weights may be a headless base (`BertModel`: `embeddings.*`, no classifier): the base
  is kept as the library's base model (`AutoModel`) and a child adds the head;
- tensors the library itself ignores when loading (a buffer it no longer persists, such as
  `embeddings.position_ids`, or its class's `_keys_to_ignore_on_load_unexpected` patterns)
  are dropped, as `from_pretrained` drops them;
- the tokenizer files are copied (checked) to a private folder, loaded and saved by the
  library (`AutoTokenizer`, `save_pretrained`), so `models/NAME/tokenizer/` holds exactly
  what the library writes;
- the card's `base_model` / `base_model_relation` (read by huggingface_hub's `ModelCard`
  after stemma's own YAML reader accepted the front matter) give the lineage.

Every refusal is one located error naming the file and field; nothing is written before
all of it passed.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from stemma.registry import Registry
from stemma.registry.errors import BuildError, ParseError, PathEscape, UnsafeFile
from stemma.registry.publish.card import hub_id
from stemma.registry.publish.hubfiles import MAX_CARD_BYTES, hub_id_pattern
from stemma.registry.records.manifest import ModelManifest, Source, Tokenizer
from stemma.registry.rules.pointer import escape
from stemma.registry.store.files import file_kind, read_bytes_file, read_json, read_text_file
from stemma.registry.store.yamlio import load_yaml_text
from torch import nn

from . import tokenizer as tok
from .families import family_of, read_hf_config, require
from .weights import Hashes, read_checked

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CARD = "README.md"
MAX_INDEX_BYTES = 8 << 20
"""An index names each tensor once: a few hundred KB for the largest models on the Hub."""
MAX_SHARDS = 4096
MAX_TOKENIZER_BYTES = 64 << 20
"""Per tokenizer file: the largest vocabularies on the Hub are tens of MB."""
RELATIONS = ("finetune", "adapter", "merge", "quantized")
"""The Hub's `base_model_relation` values."""


@dataclass(frozen=True)
class CardLineage:
    """What a snapshot's card says it derives from: Hub ids and the relation."""

    base_models: tuple[str, ...] = ()
    relation: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """A checked snapshot folder: its config, weights files and card lineage."""

    folder: Path
    display: str
    config: dict[str, Any]
    shards: tuple[str, ...]  # weight files inside the folder, in the index's order
    index: str | None  # the index file name, when sharded
    card: CardLineage
    tokenizer: tuple[str, ...]  # tokenizer file names present


def is_snapshot(path: Path) -> bool:
    """True for a folder with a config.json (a Hugging Face model folder)."""
    return path.is_dir() and os.path.lexists(path / "config.json")


def read_snapshot(folder: Path, display: str) -> Snapshot:
    """Check a snapshot folder (config, weights or index and shards, card, tokenizer files)."""
    base = Path(os.path.realpath(folder))
    config = read_hf_config(_regular(base, "config.json", display), f"{display}/config.json")
    if os.path.lexists(base / INDEX):
        shards = _index_shards(base, display)
        index: str | None = INDEX
    else:
        _regular(base, WEIGHTS, display)
        shards, index = (WEIGHTS,), None
    card = card_lineage(base / CARD, f"{display}/{CARD}") if os.path.lexists(base / CARD) else None
    tokenizer = tuple(n for n in sorted(tok.KNOWN_FILES) if os.path.lexists(base / n))
    return Snapshot(base, display, config, shards, index, card or CardLineage(), tokenizer)


def _regular(base: Path, name: str, display: str) -> Path:
    """`base/name` when it is a regular file (no link) inside the folder."""
    path = base / name
    shown = f"{display}/{name}"
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        raise ParseError(shown, "the file does not exist") from None
    if stat.S_ISLNK(mode):
        raise UnsafeFile(shown, "is a symbolic link; a snapshot's files must be regular files")
    if not stat.S_ISREG(mode):
        raise UnsafeFile(shown, f"is {file_kind(mode)}, not a regular file")
    return path


def _index_shards(base: Path, display: str) -> tuple[str, ...]:
    """The shard names of `model.safetensors.index.json`, each a plain file beside it."""
    shown = f"{display}/{INDEX}"
    _regular(base, INDEX, display)
    try:
        size = os.stat(base / INDEX).st_size
    except OSError as exc:
        raise UnsafeFile(shown, f"cannot read: {exc.strerror}") from None
    if size > MAX_INDEX_BYTES:
        raise UnsafeFile(shown, f"is {size} bytes, more than the {MAX_INDEX_BYTES} allowed")
    doc = read_json(base / INDEX, shown)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ParseError(shown, "expected a map of tensor names to files", pointer="/weight_map")
    order: dict[str, None] = {}
    for tensor, file in weight_map.items():
        pointer = "/weight_map/" + escape(tensor)[:200]
        if not isinstance(file, str) or not _plain(file) or not file.endswith(".safetensors"):
            raise PathEscape(
                shown,
                f"{str(file)[:80]!r} is not a .safetensors file beside the index",
                pointer=pointer,
            )
        order.setdefault(file)
        if len(order) > MAX_SHARDS:
            raise UnsafeFile(shown, f"names more than {MAX_SHARDS} shards", pointer=pointer)
    for file in order:
        _regular(base, file, display)
    return tuple(order)


def _plain(name: str) -> bool:
    """One file name: no separators, not `.`/`..`, nothing a path or URL reader expands."""
    return (
        name not in ("", ".", "..")
        and not {"/", "\\", "\x00", ":"} & set(name)
        and not name.startswith("~")
        and len(name) <= 255
    )


def load_state(snap: Snapshot) -> tuple[dict[str, torch.Tensor], dict[str, Hashes]]:
    """The snapshot's tensors, every file read once (the bytes hashed are the bytes loaded)."""
    state: dict[str, torch.Tensor] = {}
    hashes: dict[str, Hashes] = {}
    listed = _listed(snap) if snap.index else None
    for file in snap.shards:
        shown = f"{snap.display}/{file}"
        part, hashes[file] = read_checked(snap.folder / file, shown, snap.folder)
        if listed is not None and sorted(part) != sorted(listed.get(file, ())):
            raise BuildError(
                f"{shown}: holds other tensors than {snap.display}/{INDEX} lists for it"
                f" ({len(part)} found, {len(listed.get(file, ()))} listed)"
            )
        state.update(part)
    return state, hashes


def _listed(snap: Snapshot) -> dict[str, list[str]]:
    doc = read_json(snap.folder / INDEX, f"{snap.display}/{INDEX}")
    files: dict[str, list[str]] = {}
    for tensor, file in doc["weight_map"].items():
        files.setdefault(str(file), []).append(str(tensor))
    return files


def ignored_by_library(module: nn.Module, names: Mapping[str, Any]) -> list[str]:
    """The checkpoint names `module` does not hold that its library drops when loading:
    buffers it keeps but no longer saves (non-persistent), and the class's
    `_keys_to_ignore_on_load_unexpected` patterns."""
    held = module.state_dict()
    unexpected = [n for n in names if n not in held]
    if not unexpected or family_of(module) != "transformers":
        return []
    # named_non_persistent_buffers is transformers' own answer to which these are
    dropped = {n for n, _ in module.named_non_persistent_buffers()}  # type: ignore[operator]
    patterns = [str(p) for p in getattr(module, "_keys_to_ignore_on_load_unexpected", None) or ()]
    found = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
    return [n for n in unexpected if n in dropped or (found is not None and found.search(n))]


def base_prefixes(module: nn.Module, source: Mapping[str, Any]) -> dict[str, str]:
    """The rename that puts a headless base's names under a head model's (`embeddings.*` ->
    `bert.embeddings.*`): the library's `base_model_prefix`, as `from_pretrained` applies it
    when a head model loads a base checkpoint; {} when the names already match."""
    prefix = str(getattr(module, "base_model_prefix", "") or "")
    if family_of(module) != "transformers" or not prefix:
        return {}
    head = prefix + "."
    if any(n.startswith(head) for n in source):
        return {}
    target = module.state_dict()
    return {"": head} if any(head + n in target for n in source) else {}


def card_lineage(path: Path, display: str) -> CardLineage:
    """`base_model` / `base_model_relation` of a card, read by huggingface_hub's ModelCard
    once stemma's own YAML reader accepted the front matter (bounded, JSON values only)."""
    text = read_text_file(path, display, limit=MAX_CARD_BYTES)
    if text is None or not text.startswith("---"):
        return CardLineage()
    head, sep, _ = text[3:].partition("\n---")
    if not sep:
        raise ParseError(display, "the front matter opened by '---' is never closed", line=1)
    meta = load_yaml_text(head, display)
    if meta is None:
        return CardLineage()
    if not isinstance(meta, dict):
        raise ParseError(display, "the front matter is not a mapping", line=1)
    model_card = require("huggingface_hub").ModelCard
    try:
        data = model_card(text, ignore_metadata_errors=False).data
    except (ValueError, TypeError) as exc:
        raise ParseError(display, f"not a model card: {exc}") from None
    raw = data.base_model
    bases = [raw] if isinstance(raw, str) else raw
    if bases is None:
        bases = []
    valid = hub_id_pattern()
    if not isinstance(bases, list) or (not bases and raw is not None):
        raise ParseError(display, "expected a Hub id or a list of them", pointer="/base_model")
    for i, base in enumerate(bases):
        if not isinstance(base, str) or not valid.match(base):
            pointer = "/base_model" + (f"/{i}" if isinstance(raw, list) else "")
            raise ParseError(display, f"{str(base)[:80]!r} is not a Hub model id", pointer=pointer)
    relation = getattr(data, "base_model_relation", None)
    if relation is not None and relation not in RELATIONS:
        raise ParseError(
            display,
            f"{str(relation)[:40]!r} is not one of {', '.join(RELATIONS)}",
            pointer="/base_model_relation",
        )
    if relation is None and bases:  # the Hub's own default: several bases are a merge
        relation = "merge" if len(bases) > 1 else "finetune"
    return CardLineage(tuple(dict.fromkeys(bases)), relation)


def tokenizer_files(snap: Snapshot) -> dict[str, bytes]:
    """The snapshot's tokenizer as the library's `save_pretrained` writes it (file name ->
    bytes, read back as `tokenizer.read_files` reads a model's); {} when there is none. The
    library reads checked copies only, never the snapshot folder itself."""
    if not snap.tokenizer:
        return {}
    with tempfile.TemporaryDirectory(prefix="stemma-tok-") as tmp:
        given, out = Path(tmp) / "given", Path(tmp) / "saved"
        given.mkdir()
        for name in snap.tokenizer:
            shown = f"{snap.display}/{name}"
            _regular(snap.folder, name, snap.display)
            data = read_bytes_file(snap.folder / name, shown, limit=tok.MAX_FILE_BYTES)
            (given / name).write_bytes(data or b"")
        # the tokenizer module's rules (known names, sizes, no auto_map), named as the folder
        files = tok.read_files(given, snap.display)
        # then the library's own loader (local files, no remote code) and its own writer
        tok.load(files, snap.display).save_pretrained(str(out))
        return tok.read_files(out, f"{snap.display} (as saved by the library)")


EXTERNAL_KEY = "external_sources"
"""The spec key (in a registered model's manifest) listing parents that live on the Hub."""


def card_parents(reg: Any, card: CardLineage) -> tuple[Source | None, list[dict[str, str]]]:
    """The card's lineage as (source block, external parents): a single base whose Hub id
    a registered model's spec declares (`hub_id`) becomes that model's source block; every
    other base stays an external parent named by its Hub id (recorded, never fetched)."""
    if not card.base_models:
        return None, []
    reg = Registry.open(reg.root)  # a fresh handle: models registered since are listed too
    relation = card.relation or "finetune"
    if len(card.base_models) == 1:
        wanted = card.base_models[0]
        for name in reg.model_names():
            manifest = reg.model_manifest(name)
            if manifest is not None and hub_id(reg, name) == wanted:
                return Source.of(name, relation, manifest.id), []
    return None, [{"hub_id": b, "relation": relation} for b in card.base_models]


def inherited_tokenizer(
    reg: Any, src_name: str | None, src_manifest: ModelManifest | None
) -> tuple[Tokenizer | None, dict[str, bytes]]:
    """The source's tokenizer as the child keeps it: the manifest's `tokenizer` block (from
    the source) and the files, checked against the source's manifest, as the child's outputs
    (`tokenizer/NAME`); (None, {}) for a source without one."""
    block = None if src_manifest is None else src_manifest.tokenizer
    if src_name is None or block is None:
        return None, {}
    shown = reg.rel("models", src_name, tok.TOKENIZER_DIR)
    files = tok.checked_files(reg.model_dir(src_name), block, shown, reg.repo_root)
    return tok.record(files, src_name), tok.outputs(files)
