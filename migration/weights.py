"""Weights on disk: safetensors only (written atomically, deterministic bytes).

A `.pt` file can be imported, but only as a plain state dict loaded with `weights_only=True`:
stemma never unpickles arbitrary objects.

Weights can be as large as the machine's memory, so neither direction holds a second copy:
writing streams the header and then each tensor's own memory to the file, feeding md5 and
sha256 in two threads as it goes (one pass over the bytes, `stream`); reading maps the file,
hashes the mapped pages and builds the tensors on them (one read, `read_checked`), so the
bytes that were hashed are the bytes that are loaded. The layout is byte for byte what
`safetensors.torch.save` writes (the tests hold it to that), so content ids do not change.

Above a size threshold the weights are split into shards with an index beside them, in the
layout transformers and huggingface_hub write (`WEIGHTS-00001-of-0000N.safetensors` plus
`weights.safetensors.index.json`, `{"metadata": {"total_size"}, "weight_map"}`):
migration/shards.py writes them, `load_sharded` here reads them back.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import queue
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from stemma.registry.errors import BuildError
from stemma.registry.records.manifest import FileRef, Weights
from stemma.registry.store.files import confined, read_json, write_atomic

CHUNK = 16 << 20
"""Bytes handed to the writer and the hash threads at a time: big enough that hashlib
releases the GIL for long stretches, small enough to pipeline the three."""
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
SHARD_BYTES = 20 << 30
"""Default largest shard: every model stemma builds today stays one file."""

# safetensors' dtype names, in the order its writer lays tensors out (largest alignment
# first, then its enum order; ties by name): fixed by the format's Rust implementation.
_ORDER = (
    *("U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16"),
    *("F8_E5M2FNUZ", "F8_E4M3FNUZ", "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"),
)
_TORCH = {
    "U64": "uint64",
    "I64": "int64",
    "F64": "float64",
    "C64": "complex64",
    "F32": "float32",
    "U32": "uint32",
    "I32": "int32",
    "BF16": "bfloat16",
    "F16": "float16",
    "U16": "uint16",
    "I16": "int16",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
DTYPES: dict[torch.dtype, str] = {
    getattr(torch, t): s for s, t in _TORCH.items() if hasattr(torch, t)
}
_BY_NAME = {s: d for d, s in DTYPES.items()}
_RANK = {s: i for i, s in enumerate(_ORDER)}


@dataclass(frozen=True)
class Hashes:
    """What a manifest records of a file: md5 (as DVC records it), sha256 and size."""

    md5: str
    sha256: str
    bytes: int

    def ref(self, path: str, fmt: str) -> FileRef:
        """The manifest's file block."""
        return FileRef.of(path, self.md5, self.sha256, self.bytes, fmt)

    def weights(self, path: str, fmt: str, shards: tuple[FileRef, ...] | None = None) -> Weights:
        """The manifest's weights block of this file (`shards`: the files it indexes)."""
        return Weights.of(path, self.md5, self.sha256, self.bytes, fmt, shards)


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's bytes as the file holds them, without a copy for a CPU contiguous one."""
    if sys.byteorder != "little":  # safetensors is little-endian; no big-endian host runs stemma
        raise BuildError("writing safetensors needs a little-endian machine")
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    flat: Any = t.reshape(-1).view(torch.uint8).numpy()  # numpy arrays are buffers
    return memoryview(flat)


def _dtype(name: str, tensor: torch.Tensor) -> str:
    found = DTYPES.get(tensor.dtype)
    if found is None:
        raise BuildError(f"tensor {name!r}: dtype {tensor.dtype} cannot be written as safetensors")
    return found


def layout(
    state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, list[str]]:
    """The safetensors header (length prefix included) and the order tensors follow it."""
    dtypes = {n: _dtype(n, t) for n, t in state.items()}
    names = sorted(state, key=lambda n: (_RANK[dtypes[n]], n))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in names:
        t = state[name]
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": dtypes[name],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text, names


def _pieces(head: bytes, state: Mapping[str, torch.Tensor], names: list[str]) -> Iterator[Any]:
    yield memoryview(head)
    for name in names:
        data = _as_bytes(state[name])
        for start in range(0, len(data), CHUNK):
            yield data[start : start + CHUNK]


def _hashed(pieces: Iterator[Any], sink: Callable[[Any], object]) -> Hashes:
    """Hand every piece to `sink` while md5 and sha256 take it in two threads."""
    hashes = (hashlib.md5(), hashlib.sha256())
    # Bounded queues: a non-contiguous tensor's copy is held only until both threads pass it.
    queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=4) for _ in hashes]

    def work(h: Any, q: queue.Queue[Any]) -> None:
        while (item := q.get()) is not None:
            h.update(item)  # hashlib drops the GIL for long buffers: the threads run at once

    threads = [
        threading.Thread(target=work, args=hq, daemon=True)
        for hq in zip(hashes, queues, strict=True)
    ]
    for t in threads:
        t.start()
    size = 0
    try:
        for piece in pieces:
            for q in queues:
                q.put(piece)
            sink(piece)
            size += len(piece)
    finally:
        for q in queues:
            q.put(None)
        for t in threads:
            t.join()
    return Hashes(hashes[0].hexdigest(), "sha256:" + hashes[1].hexdigest(), size)


def hashes_of(blob: bytes) -> Hashes:
    """md5, sha256 and size of bytes in memory (the two hashes in parallel)."""
    view = memoryview(blob)
    return _hashed((view[i : i + CHUNK] for i in range(0, len(view), CHUNK)), lambda _: None)


def stream(
    fh: IO[bytes], state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Hashes:
    """Write `state` as safetensors to `fh` in one pass, hashing as it goes."""
    head, names = layout(state, metadata)
    return _hashed(_pieces(head, state, names), fh.write)


def to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a state dict (no metadata), for outputs small enough to hold."""
    head, names = layout(state)
    out = bytearray()
    _hashed(_pieces(head, state, names), out.extend)
    return bytes(out)


def save_weights(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors, atomically."""
    write_atomic(path, to_bytes(state))


# -- reading ----------------------------------------------------------------------------------


def _bad(where: str, why: str) -> BuildError:
    return BuildError(f"{where}: not a valid safetensors file: {why}")


def _header(buf: Any, size: int, where: str) -> tuple[dict[str, Any], int]:
    """The validated header of a mapped safetensors file and where its data starts."""
    if size < 8:
        raise _bad(where, "shorter than its 8-byte header length")
    n = int.from_bytes(buf[:8], "little")
    if n > MAX_HEADER or n + 8 > size:
        raise _bad(where, f"header length {n} does not fit the file")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(where, f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad(where, "header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise _bad(where, "__metadata__ must map names to strings")
    spans = []
    for name, info in header.items():
        ok = isinstance(info, dict) and isinstance(info.get("dtype"), str)
        ok = ok and info["dtype"] in _BY_NAME
        shape, offs = (info.get("shape"), info.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
        ok = ok and isinstance(offs, list) and len(offs) == 2
        ok = ok and all(type(o) is int and o >= 0 for o in offs or ())
        if not ok:
            raise _bad(where, f"tensor {name!r} has no valid dtype, shape and data_offsets")
        assert isinstance(offs, list)  # for the type checker: `ok` held it
        count = 1
        for d in shape or ():
            count *= d
        itemsize = _BY_NAME[info["dtype"]].itemsize
        if offs[1] - offs[0] != count * itemsize:
            raise _bad(where, f"tensor {name!r}: data_offsets do not match its shape and dtype")
        spans.append((offs[0], offs[1]))
    end = 0
    for start, stop in sorted(spans):  # the format's rule: the data is tiled, no gap, no overlap
        if start != end:
            raise _bad(where, "tensor data overlaps or leaves a gap")
        end = stop
    if end != size - 8 - n:
        raise _bad(where, f"tensor data covers {end} bytes, the file holds {size - 8 - n}")
    return header, 8 + n


def _tensor(buf: Any, base: int, info: Mapping[str, Any]) -> torch.Tensor:
    dtype = _BY_NAME[info["dtype"]]
    start, stop = info["data_offsets"]
    if stop == start:
        return torch.empty(info["shape"], dtype=dtype)
    raw = torch.frombuffer(buf, dtype=torch.uint8, count=stop - start, offset=base + start)
    if (base + start) % dtype.itemsize:  # a hand-made file may misalign: copy that one
        raw = raw.clone()
    return raw.view(dtype).reshape(info["shape"])


def read_checked(
    path: Path, display: str = "", root: Path | None = None
) -> tuple[dict[str, torch.Tensor], Hashes]:
    """Map a safetensors file once: its tensors (on the mapped pages) and its hashes.

    The mapping is private (copy-on-write): the tensors are writable, and a later change to
    the file cannot reach tensors built from pages already read. With `root`, a path that
    resolves outside it is refused before it is opened."""
    where = display or str(path)
    if root is not None:
        confined(path, root, where)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BuildError(f"{where}: weights file {path} does not exist") from None
    except OSError as exc:
        raise BuildError(f"{where}: cannot open: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BuildError(f"{where}: is not a regular file")
        size = info.st_size
        buf: Any = mmap.mmap(fd, size, access=mmap.ACCESS_COPY) if size else b""
    finally:
        os.close(fd)
    view = memoryview(buf)
    hashes = _hashed((view[i : i + CHUNK] for i in range(0, size, CHUNK)), lambda _: None)
    header, base = _header(view, size, where)
    state = {name: _tensor(buf, base, spec) for name, spec in header.items()}
    view.release()
    return state, hashes


def load_weights(path: Path, display: str = "") -> dict[str, torch.Tensor]:
    """Read a safetensors file (or a sharded one's index) into CPU tensors."""
    if path.name.endswith(INDEX_SUFFIX):
        return load_sharded(path, display)[0]
    return read_checked(path, display)[0]


INDEX_SUFFIX = ".index.json"


def shard_files(index_path: Path, display: str) -> dict[str, list[str]]:
    """file -> the tensors it holds, from an index (files must sit beside the index)."""
    doc = read_json(index_path)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise BuildError(f"{display} at /weight_map: expected a map of tensor names to files")
    files: dict[str, list[str]] = {}
    for tensor, file in weight_map.items():
        if (
            "/" in file
            or "\\" in file
            or file in ("", ".", "..")
            or not file.endswith(".safetensors")
        ):
            raise BuildError(
                f"{display} at /weight_map/{tensor}: {file!r} is not a .safetensors file"
                " beside the index"
            )
        files.setdefault(file, []).append(tensor)
    return files


def load_sharded(
    index_path: Path, display: str = "", root: Path | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Hashes]]:
    """Every shard an index names, each read once: the tensors and each file's hashes."""
    where = display or str(index_path)
    state: dict[str, torch.Tensor] = {}
    found: dict[str, Hashes] = {}
    for file, names in shard_files(index_path, where).items():
        shown = str(Path(where).parent / file)
        part, found[file] = read_checked(index_path.parent / file, shown, root)
        if sorted(part) != sorted(names):
            raise BuildError(
                f"{shown}: holds other tensors than {where} lists for it"
                f" ({len(part)} found, {len(names)} listed)"
            )
        state.update(part)
    return state, found


def load_pt(path: Path, display: str = "") -> dict[str, torch.Tensor]:
    """Read a `.pt` state dict with weights_only=True (a {'state_dict': ...} wrapper is fine)."""
    where = display or str(path)
    if not path.is_file():
        raise BuildError(f"{where}: weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a refused or corrupt pickle
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"{where}: cannot load as a weights-only state dict: {first}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise BuildError(f"{where}: expected a state dict (a mapping of names to tensors)")
    return dict(obj)


def read_any(path: Path, display: str = "") -> dict[str, torch.Tensor]:
    """Load `.safetensors` (or a sharded index) or a weights-only `.pt` / `.pth` state dict."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors" or path.name.endswith(".safetensors" + INDEX_SUFFIX):
        return load_weights(path, display)
    if suffix in (".pt", ".pth", ".bin"):
        return load_pt(path, display)
    raise BuildError(
        f"{display or path}: unsupported weights format {suffix!r};"
        " use .safetensors or a .pt state dict"
    )
