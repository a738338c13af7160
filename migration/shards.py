"""Sharded weights: several safetensors files and the index that names them.

The layout is the one transformers and huggingface_hub write, so their loaders read ours:
``weights-00001-of-0000N.safetensors`` files (each with ``{"format": "pt"}`` metadata, as
transformers saves shards) and ``weights.safetensors.index.json`` holding
``{"metadata": {"total_size": BYTES}, "weight_map": {tensor: file}}``. huggingface_hub
decides which tensor goes to which shard (`split_torch_state_dict_into_shards`).

The manifest's weights block then records the index (its path and hashes: the tensor to
file map is part of the id) and, under `shards`, each shard's path and hashes. Reading them back
is `weights.load_sharded`, beside the reader of one file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import IO

import torch
from stemma.registry.records.manifest import Weights

from .weights import INDEX_SUFFIX, Hashes, _hashed, stream

FORMAT = "safetensors-index"
SHARD_METADATA = {"format": "pt"}

Writer = Callable[[str, Callable[[IO[bytes]], Hashes]], Hashes]
"""Streams one named output (`commit.Stage.write`)."""


def index_name(weights_file: str) -> str:
    """`weights.safetensors` -> `weights.safetensors.index.json`."""
    return weights_file + INDEX_SUFFIX


def write(
    write_file: Writer, state: Mapping[str, torch.Tensor], weights_file: str, max_bytes: int
) -> Weights:
    """Stream `state` as one file, or as shards plus an index when it is larger than
    `max_bytes`; the manifest's weights block."""
    from huggingface_hub import split_torch_state_dict_into_shards

    stem = weights_file.removesuffix(".safetensors")
    split = split_torch_state_dict_into_shards(
        dict(state), filename_pattern=stem + "{suffix}.safetensors", max_shard_size=max_bytes
    )
    if not split.is_sharded:
        hashes = write_file(weights_file, lambda fh: stream(fh, state))
        return hashes.weights(weights_file, "safetensors")
    shards = []
    for file, names in split.filename_to_tensors.items():
        part = {n: state[n] for n in names}
        hashes = write_file(file, lambda fh, p=part: stream(fh, p, SHARD_METADATA))  # type: ignore[misc]
        shards.append(hashes.ref(file, "safetensors"))
    index = {"metadata": dict(split.metadata), "weight_map": dict(split.tensor_to_filename)}
    text = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()  # as transformers
    name = index_name(weights_file)
    index = write_file(name, lambda fh: _hashed(iter([text]), fh.write))
    return index.weights(name, FORMAT, tuple(shards))


def weights_files(block: Weights | None, default: str) -> list[str]:
    """The files a manifest's weights block names: the file, or the index and its shards
    (`default` where there is no block)."""
    if block is None:
        return [default]
    return [block.path, *(s.path for s in block.shards or ())]
