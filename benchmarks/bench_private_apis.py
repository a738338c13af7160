"""What each private API stemma uses saves over its public fallback, on the command it serves.

    python benchmarks/bench_private_apis.py [--models 1000] [--repeat 5] [--work DIR]

Three private names, each kept only while it saves at least `WORTH_S` on its command:
- `duckdb`: DuckDB's engine module `_duckdb` instead of the `duckdb` package
  (registry/store/_engine.py), on `stemma query` over a synthetic registry (and on its own);
- `exit`: the quick exit of read-only commands, `atexit._run_exitfuncs()` then `os._exit`,
  instead of the interpreter's teardown (cli/app.py), on `stemma ls`, `query` and `lineage`;
- `deterministic`: `torch._C._set_deterministic_algorithms` instead of
  `torch.use_deterministic_algorithms` (migration/train.py `set_deterministic`), on what a
  `stemma build` process does first: import the training loop and set the mode.
Each path is a fresh process; the public one is the code's own fallback, taken by pointing the
module's constant for the private name at a name that does not exist. Private and public runs
alternate in each round, so the machine's drift hits both alike; each gets its median CPU time
(user + system) and wall time over `--repeat` runs, and `saved_*` is public minus private.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import summary, timed
from bench_ls import registry

WORTH_S = 0.02  # below this saving (median CPU: steadier than wall) on its command, it goes
CLI_QUERY = "SELECT name, accuracy FROM models ORDER BY accuracy DESC LIMIT 10"
ABSENT = "no_such_private_name"

# `stemma ARGS` as the console script runs it, after PATCH (the public path's switch).
CLI = """
import sys
{patch}
from stemma.cli.app import entry
sys.argv = ["stemma", *sys.argv[1:]]
entry()
"""
TO_PUBLIC = {
    "duckdb": f"from stemma.registry.store import _engine; _engine.PRIVATE = {ABSENT!r}",
    "exit": f"import stemma.cli.app; stemma.cli.app.PRIVATE_EXIT = {ABSENT!r}",
    "deterministic": f"train.PRIVATE_DETERMINISTIC = {ABSENT!r}",
}
# A build's first steps: load the training loop, then pin the deterministic mode.
BUILD_START = """
from stemma.migration import train
{patch}
train.set_deterministic(True)
import torch
assert torch.are_deterministic_algorithms_enabled()
"""


def cli_argv(args: list[str], patch: str = "") -> list[str]:
    """`stemma ARGS` in a fresh interpreter, after the Python statement `patch`."""
    return [sys.executable, "-c", CLI.format(patch=patch), *args]


def cases() -> dict[str, dict[str, list[str]]]:
    """Every case: the private and the public command line of the same work."""
    out: dict[str, dict[str, list[str]]] = {}
    query = ["query", CLI_QUERY]
    out["duckdb:query"] = {
        "private": cli_argv(query),
        "public": cli_argv(query, TO_PUBLIC["duckdb"]),
    }
    python = sys.executable
    engine = "from stemma.registry.store import _engine\n{patch}\n_engine.duckdb()"
    out["duckdb:engine_alone"] = {  # the import on its own, without the command around it
        "private": [python, "-c", engine.format(patch="")],
        "public": [python, "-c", engine.format(patch=f"_engine.PRIVATE = {ABSENT!r}")],
    }
    lineage = ["lineage", "descendants", "m000000"]
    for label, args in (("ls", ["ls"]), ("query", query), ("lineage", lineage)):
        out[f"exit:{label}"] = {
            "private": cli_argv(args),
            "public": cli_argv(args, TO_PUBLIC["exit"]),
        }
    out["deterministic:build_start"] = {
        "private": [python, "-c", BUILD_START.format(patch="")],
        "public": [python, "-c", BUILD_START.format(patch=TO_PUBLIC["deterministic"])],
    }
    return out


def measure(root: Path, repeat: int) -> dict[str, Any]:
    """Each case's private and public timings and the saving, interleaved round by round."""
    runs = cases()
    times: dict[str, dict[str, tuple[list[float], list[float]]]] = {
        name: {path: ([], []) for path in pair} for name, pair in runs.items()
    }
    for pair in runs.values():  # warm: the index is built, bytecode caches written
        for argv in pair.values():
            timed(argv, root)
    for _ in range(repeat):
        for name, pair in runs.items():
            for path, argv in pair.items():
                cpu, wall = timed(argv, root)
                times[name][path][0].append(cpu)
                times[name][path][1].append(wall)
    report: dict[str, Any] = {}
    for name, paths in times.items():
        private, public = summary(*paths["private"]), summary(*paths["public"])
        saved_wall = round(public["wall_s"] - private["wall_s"], 4)
        report[name] = {
            "private": private,
            "public": public,
            "saved_cpu_s": round(public["cpu_s"] - private["cpu_s"], 4),
            "saved_wall_s": saved_wall,
            "worth_it": public["cpu_s"] - private["cpu_s"] >= WORTH_S,
        }
    return report


def versions() -> dict[str, str]:
    """The versions the figures hold for."""
    out = {"python": platform.python_version()}
    for dist in ("duckdb", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module's docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000, help="models in the registry")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each path")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stemma-bench-private"))
    parser.add_argument("--clean", action="store_true", help="remove --work at the end")
    args = parser.parse_args(argv)
    root = registry(args.work, args.models)
    report = {
        "models": args.models,
        "repeat": args.repeat,
        "worth_s": WORTH_S,
        "versions": versions(),
        "cases": measure(root, args.repeat),
    }
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
