"""Read commands side by side with `stemma ls` on one synthetic registry; prints one JSON object.

    python benchmarks/bench_read_paths.py [--models 10000] [--repeat 5]

Each command runs as a user runs it (the console script, a fresh process), interleaved with
`stemma ls` in the same round so the machine's drift hits both alike; the report gives each
command's median wall time and its ratio to the median of `stemma ls`. The index is warm
(one refresh before timing), as it is for a user who ran any read command before. Targets
(DESIGN.md): lineage within 2x, validate and pipeline --check within 4x of `stemma ls`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import generate, model_name, timing_env

COMMANDS = {
    "ls": ["ls"],
    "lineage_show_json": ["lineage", "show", model_name(0), "--format", "json"],
    "lineage_descendants": ["lineage", "descendants", model_name(0)],
    "lineage_impact": ["lineage", "impact", model_name(0)],
    "validate": ["validate"],
    "pipeline_check": ["pipeline", "--check"],
}
TARGETS = {
    "lineage_show_json": 2.0,
    "lineage_descendants": 2.0,
    "lineage_impact": 2.0,
    "validate": 4.0,
    "pipeline_check": 4.0,
}


def registry(work: Path, n: int) -> Path:
    """A synthetic registry of `n` models with one family, generated on first use."""
    root = work / f"read-{n}"
    if not (root / ".generated").exists():
        shutil.rmtree(root, ignore_errors=True)
        generate(root, n, shape="mixed", seed=0, family_size=n + 1)
        subprocess.run(
            [str(Path(sys.executable).with_name("stemma")), "pipeline"],
            cwd=root,
            check=True,
            capture_output=True,
        )
        (root / ".generated").write_text("ok\n")
    return root


def run(root: Path, args: list[str]) -> float:
    """Wall seconds of one `stemma ARGS` in `root` (any exit status: `validate` may fail)."""
    stemma = str(Path(sys.executable).with_name("stemma"))
    start = time.perf_counter()
    subprocess.run([stemma, *args], cwd=root, capture_output=True, env=timing_env(), check=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Time every command beside `stemma ls` and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=list(COMMANDS), choices=list(COMMANDS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/stemma-bench-read"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    root = registry(args.work, args.models)
    names = ["ls", *[c for c in args.only if c != "ls"]]
    for name in names:  # warm: the index, bytecode caches, any cache a command keeps
        run(root, COMMANDS[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeat):
        for name in names:
            times[name].append(run(root, COMMANDS[name]))
    ls = statistics.median(times["ls"])
    report: dict[str, Any] = {"models": args.models, "repeat": args.repeat}
    for name in names:
        median = statistics.median(times[name])
        report[name] = {
            "command": "stemma " + " ".join(COMMANDS[name]),
            "median_s": round(median, 3),
            "min_s": round(min(times[name]), 3),
            "ratio_to_ls": round(median / ls, 2),
            "target_ratio": TARGETS.get(name),
        }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
