"""Read commands side by side with `stemma ls` on synthetic registries; prints one JSON object.

    python benchmarks/bench_read_paths.py [--models 1000 10000 30000] [--repeat 5]

Each command runs as a user runs it (the console script, a fresh process), interleaved with
`stemma ls` in the same round so the machine's drift hits both alike; the report gives each
command's median CPU time (user + system of the child: steadier than wall on a shared
machine) beside its median wall time, and the ratio of each to the median of `stemma ls`.
The index is warm (one refresh before timing), as it is for a user who ran any read command
before, except for `cold_index`: `stemma ls` with no `.stemma/` (the index built from
nothing, which also drops every fact the store held), and the commands `…_after_edit`, run
just after one spec was edited. Those run last in each round (the edits, then the cold
index); the round then waits until an edit is old enough to be trusted (`RACY_NS`) and runs
every command once unmeasured (the `…_after_edit` ones without an edit), so that the next
round's find the registry unchanged and the store as warm as it was. With several
sizes, `growth` gives each command's exponent of growth in CPU time between consecutive
sizes (1.0: linear in the registry) and flags a ratio to `ls` that rises with N. Targets
(DESIGN.md): lineage, cold index, validate and pipeline --check (on an unchanged registry,
and just after a one-spec edit), each within 2x of `stemma ls`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import growth, stemma
from stemma.registry.store._snapshot import RACY_NS
from synth import generate, model_name

COMMANDS = {
    "ls": ["ls"],
    "cold_index": ["ls"],  # run with `.stemma/` removed first (see `run`)
    "lineage_show_json": ["lineage", "show", model_name(0), "--format", "json"],
    "lineage_descendants": ["lineage", "descendants", model_name(0)],
    "lineage_impact": ["lineage", "impact", model_name(0)],
    "validate": ["validate"],
    "pipeline_check": ["pipeline", "--check"],
    # each run just after one spec was edited (`edit_one_spec`), as a user runs them
    "validate_after_edit": ["validate"],
    "pipeline_check_after_edit": ["pipeline", "--check"],
}
TARGETS = {
    "cold_index": 2.0,
    "lineage_show_json": 2.0,
    "lineage_descendants": 2.0,
    "lineage_impact": 2.0,
    "validate": 2.0,
    "pipeline_check": 2.0,
    "validate_after_edit": 2.0,
    "pipeline_check_after_edit": 2.0,
}


def registry(work: Path, n: int, locks: bool = False) -> Path:
    """A synthetic registry of `n` models with one family, generated on first use; with
    `locks`, each built model has the dvc.lock `dvc repro` would leave."""
    root = work / (f"read-{n}-locks" if locks else f"read-{n}")
    if not (root / ".generated").exists():
        shutil.rmtree(root, ignore_errors=True)
        generate(root, n, shape="mixed", seed=0, family_size=n + 1, locks=locks)
        subprocess.run(
            [str(Path(sys.executable).with_name("stemma")), "pipeline"],
            cwd=root,
            check=True,
            capture_output=True,
        )
        (root / ".generated").write_text("ok\n")
    return root


def run(root: Path, name: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one `stemma ARGS` for command `name` in `root` (any exit
    status: `validate` may fail); `cold_index` first removes the index, a command `…_after_edit`
    first edits one spec."""
    if name == "cold_index":
        shutil.rmtree(root / ".stemma", ignore_errors=True)
    if name.endswith("_after_edit"):
        edit_one_spec(root)
    return stemma(COMMANDS[name], root)


_EDITS = itertools.count(1)


def edit_one_spec(root: Path) -> None:
    """Change the learning rate in the spec of a model in the middle of the registry (one with
    a parent and children) to a value it never had: the edit a user makes before running a
    command."""
    models = sorted(p.name for p in (root / "models").iterdir())
    spec = root / "models" / models[len(models) // 2] / "spec.yaml"
    text = spec.read_text()
    now = re.search(r"lr: ([0-9.e-]+)", text)
    assert now is not None, spec
    other = f"0.001{next(_EDITS):06d}"
    spec.write_text(text[: now.start(1)] + other + text[now.end(1) :])


def measure(
    work: Path, n: int, names: list[str], repeat: int, locks: bool = False
) -> dict[str, Any]:
    """Median CPU and wall time of each command at `n` models, and their ratios to `ls`."""
    root = registry(work, n, locks)
    for name in names:  # warm: the index, bytecode caches, any cache a command keeps
        run(root, name)
    run(root, "ls")  # `cold_index` may have run last: leave the index warm
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    edits = [n for n in names if n.endswith("_after_edit")]
    cold = [n for n in names if n == "cold_index"]
    # the edits, then the cold index, last in each round: the commands before them find
    # the store as the last round left it
    names = [n for n in names if n not in edits and n not in cold] + edits + cold
    for _ in range(repeat):
        for name in names:
            c, w = run(root, name)
            cpu[name].append(c)
            wall[name].append(w)
        if edits or cold:
            # the edit old enough to be trusted, and taken in; every fact the removed store
            # held made again: unchanged again for the next round
            time.sleep(RACY_NS / 1e9 if edits else 0)
            for name in names:
                if name not in cold:  # an `…_after_edit` one without an edit
                    stemma(COMMANDS[name], root)
        run(root, "ls")
    ls_cpu, ls_wall = statistics.median(cpu["ls"]), statistics.median(wall["ls"])
    report: dict[str, Any] = {}
    for name in names:
        median_cpu, median_wall = statistics.median(cpu[name]), statistics.median(wall[name])
        report[name] = {
            "command": ("rm -r .stemma; " if name == "cold_index" else "")
            + "stemma "
            + " ".join(COMMANDS[name])
            + (" (one spec edited just before)" if name.endswith("_after_edit") else ""),
            "cpu_s": round(median_cpu, 3),
            "wall_s": round(median_wall, 3),
            "min_cpu_s": round(min(cpu[name]), 3),
            "cpu_ratio_to_ls": round(median_cpu / ls_cpu, 2),
            "wall_ratio_to_ls": round(median_wall / ls_wall, 2),
            "target_ratio": TARGETS.get(name),
        }
    return report


def main(argv: list[str] | None = None) -> None:
    """Time every command beside `stemma ls` and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=list(COMMANDS), choices=list(COMMANDS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/stemma-bench-read"))
    parser.add_argument(
        "--locks", action="store_true", help="give each built model the dvc.lock DVC leaves"
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    names = ["ls", *[c for c in args.only if c != "ls"]]
    sizes = sorted(set(args.models))
    by_size = {n: measure(args.work, n, names, args.repeat, args.locks) for n in sizes}
    report: dict[str, Any] = {"models": sizes, "repeat": args.repeat, "locks": args.locks}
    report |= {str(n): by_size[n] for n in sizes}
    if len(sizes) > 1:
        report["growth"] = growth(sizes, by_size)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
