"""Weights at any size: streamed safetensors (byte for byte what safetensors writes), one
read to load and hash, shards with an index, and verify checking every shard."""

from __future__ import annotations

import io
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import SPECS, new_registry
from safetensors import safe_open
from safetensors.torch import _TYPES, save
from stemma.migration import weights
from stemma.migration.build import build_dataset, build_model, load_model
from stemma.migration.commit import Stage, commit
from stemma.migration.shards import write
from stemma.migration.verify import verify_model as verify
from stemma.migration.weights import load_sharded
from stemma.registry import Registry
from stemma.registry.errors import BuildError


def _states(seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Random state dicts: every dtype safetensors knows, odd shapes and names, views."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    for _ in range(6):
        state: dict[str, torch.Tensor] = {}
        for i in range(rng.randint(1, 12)):
            dtype = rng.choice(list(_TYPES.values()))
            shape = [rng.randint(0, 5) for _ in range(rng.randint(0, 3))]
            t = torch.randn(shape).to(dtype) if dtype != torch.bool else torch.zeros(shape) > 0
            name = rng.choice(["a", "layer.0.weight", "é", "h\u00f6he", "z"]) + str(i)
            state[name] = t
        state["view.t"] = torch.randn(3, 4).t()  # not contiguous
        state["view.slice"] = state["view.t"][1:]  # shares storage
        yield state


def _reference(state: dict[str, torch.Tensor], **kw: object) -> bytes:
    return bytes(save({k: v.contiguous().clone() for k, v in state.items()}, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_is_byte_for_byte_what_safetensors_writes(seed: int) -> None:
    for state in _states(seed):
        ref = _reference(state)
        out = io.BytesIO()
        got = weights.stream(out, state)
        assert out.getvalue() == ref
        assert weights.to_bytes(state) == ref
        assert got == weights.hashes_of(ref) and got.bytes == len(ref)
        meta = io.BytesIO()
        weights.stream(meta, state, {"format": "pt"})
        assert meta.getvalue() == _reference(state, metadata={"format": "pt"})


def test_read_checked_hashes_what_it_loads(tmp_path: Path) -> None:
    state = next(_states(3))
    path = tmp_path / "w.safetensors"
    path.write_bytes(_reference(state))
    loaded, hashes = weights.read_checked(path)
    assert hashes == weights.hashes_of(path.read_bytes())
    assert sorted(loaded) == sorted(state)
    for name, t in loaded.items():
        assert t.dtype == state[name].dtype and t.shape == state[name].shape
        raw = state[name].contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(t.reshape(-1).view(torch.uint8), raw)
    loaded[next(iter(loaded))].zero_()  # private mapping: writable, the file is untouched
    assert weights.hashes_of(path.read_bytes()) == hashes


def test_damaged_files_are_refused_like_safetensors_refuses_them(tmp_path: Path) -> None:
    """Seeded corruptions: whatever safetensors' own loader refuses, read_checked refuses
    with one BuildError naming the file; nothing escapes as another exception."""
    from safetensors.torch import load

    rng = random.Random(7)
    good = _reference({"a": torch.randn(4, 4), "b": torch.arange(6), "c": torch.ones(3).half()})
    n = int.from_bytes(good[:8], "little")
    outcomes = {"refused": 0, "clean": 0}
    for case in range(150):
        blob = bytearray(good)
        kind = case % 5
        if kind == 0:  # flip bytes in the header
            for _ in range(rng.randint(1, 4)):
                blob[8 + rng.randrange(n)] = rng.randrange(256)
        elif kind == 1:  # truncate
            blob = blob[: rng.randrange(len(blob))]
        elif kind == 2:  # a wrong header length
            blob[:8] = rng.choice([0, 1, n - 1, n + 1, 2**63, len(blob)]).to_bytes(8, "little")
        elif kind == 3:  # a header of our making: offsets, shapes, dtypes changed
            head = json.loads(bytes(blob[8 : 8 + n]))
            entry = head[rng.choice(["a", "b", "c"])]
            entry[rng.choice(["data_offsets", "shape", "dtype"])] = rng.choice(
                [[0, 8], [-1, 4], [4], "F128", [2, 2], [0, 2**40], None, "I64"]
            )
            text = json.dumps(head).encode()
            text += b" " * (-len(text) % 8)
            blob = bytearray(len(text).to_bytes(8, "little") + text + bytes(blob[8 + n :]))
        else:  # trailing bytes
            blob += bytes(rng.randrange(1, 9))
        path = tmp_path / f"{case}.safetensors"
        path.write_bytes(bytes(blob))
        try:
            load(bytes(blob))
            theirs = True
        except Exception:
            theirs = False
        try:
            weights.read_checked(path, f"case{case}")
            ours = True
        except BuildError as exc:
            assert exc.message.startswith(f"case{case}: ") and "\n" not in exc.message
            ours = False
        if not theirs:
            assert not ours, f"case {case}: safetensors refuses, read_checked loaded it"
        outcomes["clean" if ours else "refused"] += 1
    assert outcomes["refused"] > 100


def test_shards_follow_the_hub_layout(tmp_path: Path) -> None:
    state = {f"layer.{i}.weight": torch.randn(64, 64) for i in range(5)}
    folder = tmp_path / "m"
    with Stage(folder) as stage:
        block = write(stage.write, state, "weights.safetensors", 20_000)
        commit(folder, {}, stage)
    assert block.path == "weights.safetensors.index.json" and block.shards is not None
    assert len(block.shards) == 5 and block.format == "safetensors-index"
    assert list(block.to_dict()) == ["path", "md5", "sha256", "bytes", "format", "shards"]
    index = json.loads((folder / block.path).read_text())
    assert index["metadata"] == {"total_size": 5 * 64 * 64 * 4}
    assert set(index["weight_map"].values()) == {s.path for s in block.shards}
    assert block.shards[0].path == "weights-00001-of-00005.safetensors"
    for shard in block.shards:
        with safe_open(folder / shard.path, "pt") as fh:
            assert fh.metadata() == {"format": "pt"}
        assert weights.hashes_of((folder / shard.path).read_bytes()).sha256 == shard.sha256
    loaded, _ = load_sharded(folder / block.path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert not (folder / ".stemma-staging").exists()


def test_a_failed_build_leaves_no_streamed_file(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    with pytest.raises(RuntimeError), Stage(folder) as stage:
        write(stage.write, {"a": torch.ones(3)}, "weights.safetensors", 1 << 30)
        raise RuntimeError("the build failed after saving")
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Registry:
    """base built as one file, ft (fine-tuned from it) built in shards."""
    specs = {k: v for k, v in SPECS.items() if "scratch" not in k}
    reg = new_registry(tmp_path_factory.mktemp("sharded") / "repo", registry_template, specs)
    build_dataset(reg, "digits-0to4")
    build_dataset(reg, "digits-5to9")
    build_model(reg, "base")
    before = weights.SHARD_BYTES
    weights.SHARD_BYTES = 2048  # a setting's default, lowered so a tiny model shards
    try:
        build_model(reg, "ft")
    finally:
        weights.SHARD_BYTES = before
    return Registry.open(reg.root)


def test_sharded_build_verifies_every_shard(sharded: Registry) -> None:
    base = sharded.model_manifest("base")
    assert base is not None and "shards" not in base.raw["weights"]  # small: one file
    manifest = sharded.model_manifest("ft")
    assert manifest is not None
    block = manifest.raw["weights"]
    assert len(block["shards"]) >= 2
    report = verify(sharded, "ft")
    assert report.ok, report.to_dict()
    load_model(sharded, "ft")
    last = sharded.model_dir("ft") / block["shards"][-1]["path"]
    saved = last.read_bytes()
    last.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    try:
        bad = verify(sharded, "ft")
        finding = next(f for f in bad.findings if f.item == "weights")
        assert not bad.ok and block["shards"][-1]["path"] in finding.message
    finally:
        last.write_bytes(saved)


def test_source_weights_changed_after_build_are_refused(sharded: Registry, tmp_path: Path) -> None:
    reg = Registry.open(Path(shutil.copytree(sharded.repo_root, tmp_path / "c", symlinks=True)))
    path = reg.model_dir("base") / "weights.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(BuildError, match="does not match its manifest"):
        build_model(reg, "ft")
