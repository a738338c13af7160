"""Benchmark saving and loading large weights: peak memory and time against the weights' size.

Prints one JSON document. Each measurement runs in a fresh process that first builds the same
state dict (`--gib` GiB of float32 tensors, seeded) and then does one thing:

- `save`: the build's save (`shards.write` into a `commit.Stage`, then `commit`): the
  safetensors file streamed with md5 and sha256 computed as it is written;
- `save_in_memory`: the save as it was (cloned tensors, `safetensors.torch.save` to bytes,
  md5 then sha256 over them, then the bytes written);
- `load`: a source's load (`weights.read_checked`: mapped once, hashed, tensors on the pages);
- `load_twice`: the load as it was (hash the file, then `safetensors.torch.load(read_bytes)`);
- `sha256`: one plain sha256 pass over the saved file (the floor for any hashing read).

For each: `seconds`, `peak_rss_over_state` (peak resident memory minus the memory the state
dict and imports held before, as a multiple of the weights' size) and, for save and load,
`vs_sha256` (seconds as a multiple of the plain sha256 pass). Peak RSS is the process's
ru_maxrss; pages of a mapped file count while they are resident.

    python benchmarks/bench_weights.py [--gib 1.0] [--tensors 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _state(gib: float, tensors: int) -> dict[str, object]:
    import torch

    torch.manual_seed(0)
    per = int(gib * (1 << 30)) // 4 // tensors
    return {f"layer.{i}.weight": torch.randn(per) for i in range(tensors)}


def child(what: str, folder: Path, gib: float, tensors: int) -> dict[str, float]:
    """One measurement (run in its own process)."""
    import hashlib

    import torch  # noqa: F401  (imported before the baseline is taken)
    from stemma.migration import weights
    from stemma.migration.commit import Stage, commit
    from stemma.migration.shards import write

    state = _state(gib, tensors) if what.startswith("save") else {}
    size = sum(t.numel() * t.element_size() for t in state.values())  # type: ignore[attr-defined]
    before = _rss_kib()
    start = time.perf_counter()
    path = folder / "weights.safetensors"
    if what == "save":
        with Stage(folder) as stage:
            write(stage.write, state, "weights.safetensors", weights.SHARD_BYTES)  # type: ignore[arg-type]
            commit(folder, {}, stage)
    elif what == "save_in_memory":
        from safetensors.torch import save

        blob = bytes(save({k: v.contiguous().clone() for k, v in state.items()}))  # type: ignore[attr-defined]
        hashlib.md5(blob).hexdigest()
        hashlib.sha256(blob).hexdigest()
        path.write_bytes(blob)
    elif what == "load":
        loaded, _ = weights.read_checked(path)
        size = sum(t.numel() * t.element_size() for t in loaded.values())
        sum(float(t[-1]) for t in loaded.values())  # touch every tensor
    elif what == "load_twice":
        from safetensors.torch import load
        from stemma.registry.store.files import file_hashes

        file_hashes(path)
        loaded = load(path.read_bytes())
        size = sum(t.numel() * t.element_size() for t in loaded.values())
    elif what == "sha256":
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(16 << 20):
                h.update(chunk)
        size = path.stat().st_size
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": seconds, "peak_over_kib": peak - before, "bytes": size}


def run(what: str, folder: Path, gib: float, tensors: int) -> dict[str, float]:
    """`child` in a fresh process (its peak RSS is its own)."""
    out = subprocess.run(
        [sys.executable, str(HERE), "--child", what, "--folder", str(folder),
         "--gib", str(gib), "--tensors", str(tensors)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout)
    return result


def _drop_cache(path: Path) -> None:
    """Evict the file from the page cache where the kernel allows, so loads read the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--child")
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.gib, args.tensors)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-weights-") as tmp:
        folder = Path(tmp)
        results = {}
        for what in ("save_in_memory", "save", "sha256", "load", "load_twice"):
            _drop_cache(folder / "weights.safetensors")
            results[what] = run(what, folder, args.gib, args.tensors)
    size = results["save"]["bytes"]
    base = results["sha256"]["seconds"]
    doc: dict[str, object] = {"weights_bytes": size, "cpus": os.cpu_count()}
    for what, r in results.items():
        doc[what] = {
            "seconds": round(r["seconds"], 3),
            "peak_rss_over_state": round(r["peak_over_kib"] * 1024 / size, 2),
            "vs_sha256": round(r["seconds"] / base, 2),
        }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
