"""Reading manifests through the typed records (`records/manifest.py`), old code beside new.

    python benchmarks/bench_records.py /tmp/reg [--old PYTHONPATH] [--rounds 5]

`/tmp/reg` is a registry (e.g. from `benchmarks/synth.py /tmp/reg 10000`). Each round runs,
in a fresh interpreter per side: every manifest.json of the registry (its bytes read first)
parsed and read into its record (`manifest_record`), as a command reads them; then the same
documents parsed beforehand, read into records alone; and, in another interpreter, the import
of `stemma.registry.records.manifest` alone, then the first read of one model and one dataset
manifest (what a command that shows one manifest pays). Times are CPU (user+sys) and wall.
`--old` is a PYTHONPATH whose `stemma` is an older copy of the code (a folder holding a
`stemma` folder of symbolic links to a git worktree's top-level folders); the sides alternate
within each round and medians are printed. Modules are imported from bytecode (written to a
temporary pycache before the first round), as an installed stemma imports them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_READ = r"""
import gc, json, sys, time
from pathlib import Path
from stemma.registry.records.manifest import manifest_record
raw = [p.read_bytes() for p in sorted(Path(sys.argv[1]).glob("*/*/manifest.json"))]
t0, c0 = time.perf_counter(), time.process_time()
for b in raw:
    manifest_record(json.loads(b))
c1, t1 = time.process_time(), time.perf_counter()
docs = [json.loads(b) for b in raw]
gc.collect()  # the parse's pending collections would land on whichever side runs next
t2, c2 = time.perf_counter(), time.process_time()
for doc in docs:
    manifest_record(doc)
c3, t3 = time.process_time(), time.perf_counter()
n, cpu, wall, rcpu, rwall = len(raw), c1 - c0, t1 - t0, c3 - c2, t3 - t2
print(json.dumps({"n": n, "cpu": cpu, "wall": wall, "rcpu": rcpu, "rwall": rwall}))
"""

_IMPORT = r"""
import json, sys, time
from pathlib import Path
import stemma.registry.errors, stemma.registry.rules.gates, stemma.registry.rules.layout
first = [json.loads(next(Path(sys.argv[1]).glob(f"{k}/*/manifest.json")).read_bytes())
         for k in ("models", "datasets")]
t0, c0 = time.perf_counter(), time.process_time()
from stemma.registry.records.manifest import manifest_record
c1, t1 = time.process_time(), time.perf_counter()
for doc in first:
    manifest_record(doc)
c2, t2 = time.process_time(), time.perf_counter()
print(json.dumps({"cpu": c1 - c0, "wall": t1 - t0, "fcpu": c2 - c1, "fwall": t2 - t1}))
"""


_PYCACHE = os.path.join(tempfile.gettempdir(), "bench_records_pycache")


def _run(code: str, pythonpath: str | None, *args: str) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # imports as users have them: from bytecode, kept apart from the tree's own __pycache__
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = _PYCACHE
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    """Print the medians of reading every manifest and of importing the module, per side."""
    parser = argparse.ArgumentParser()
    parser.add_argument("registry", type=Path)
    parser.add_argument("--old", default=None, help="PYTHONPATH of the older code")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sides = {"new": None} if args.old is None else {"old": args.old, "new": None}
    reads: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    imports: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    for path in sides.values():  # the bytecode is written once, before any round
        _run(_IMPORT, path, str(args.registry))
    for _ in range(args.rounds):
        for side, path in sides.items():
            reads[side].append(_run(_READ, path, str(args.registry)))
            imports[side].append(_run(_IMPORT, path, str(args.registry)))
    for side in sides:
        n = int(reads[side][0]["n"])

        def med(key: str, runs: list[dict[str, float]]) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"{side}: {n} manifests, parse+read cpu {med('cpu', reads[side]):.3f}s"
            f" wall {med('wall', reads[side]):.3f}s; read only cpu {med('rcpu', reads[side]):.3f}s"
            f" wall {med('rwall', reads[side]):.3f}s ({med('rcpu', reads[side]) / n * 1e6:.0f} us"
            f" each); import cpu {med('cpu', imports[side]) * 1000:.1f}ms"
            f" wall {med('wall', imports[side]) * 1000:.1f}ms; then the first model and dataset"
            f" manifest cpu {med('fcpu', imports[side]) * 1000:.2f}ms"
        )


if __name__ == "__main__":
    main()
