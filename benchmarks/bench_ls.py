"""`stemma ls` and the other light commands on synthetic registries of several sizes; prints JSON.

    python benchmarks/bench_ls.py [--models 1000 10000 30000] [--repeat 5] [--work DIR]

Each timing is a fresh process (interpreter start included), as a user would see it, run
interleaved with `stemma ls` in the same round so the machine's drift hits both alike. Every
command gets its median CPU time (user + system of the child: steadier than wall on a shared
machine) beside its median wall time, and its ratio of each to `stemma ls`. With several
sizes, `growth` gives each command's exponent of growth between consecutive sizes (1.0:
linear in the registry) and `flagged` lists the commands whose ratio to `ls` rises with N
and those growing faster than linear. The script also reports whether `ls` imported torch
or dvc (it must not).
Registries are generated once under `--work` and reused; `--clean` removes them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import flagged, growth, stemma, summary, with_ratios
from synth import generate, timing_env

PROBE = (
    "import sys; from stemma.cli.app import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'dvc'}), file=sys.stderr)"
)
COMMANDS = {
    "ls": ["ls"],
    "version": ["--version"],
    "help": ["--help"],
    "ls_json": ["ls", "--json"],
    "validate": ["validate"],  # exits 1 on the synthetic registry's failed checks: timed anyway
}
TARGET_S = 0.3  # DESIGN.md: `stemma ls` on 1,000 models


def registry(work: Path, n: int) -> Path:
    """A synthetic registry of `n` models (mixed shape), generated on first use."""
    root = work / f"ls-{n}"
    if not (root / ".generated").exists():
        shutil.rmtree(root, ignore_errors=True)
        generate(root, n, shape="mixed", seed=0)
        # Files written within the last two seconds are read again by every refresh (their
        # mtime cannot be trusted yet); a registry is not usually listed that soon.
        for path in root.glob("*/*/*"):
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))
        (root / ".generated").write_text("ok\n")
    return root


def heavy_modules(root: Path) -> list[str]:
    """The heavy libraries `stemma ls` imported (the first run also builds the index)."""
    found = subprocess.run(
        [sys.executable, "-c", PROBE, "ls"],
        cwd=root,
        env=timing_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stderr.strip()
    # the probe's line is the last one (a failed `ls` reports its error before it)
    modules: list[str] = json.loads(found.splitlines()[-1].replace("'", '"'))
    return modules


def measure(root: Path, repeat: int) -> dict[str, Any]:
    """Median CPU and wall time of each command, and their ratios to `ls`."""
    for args in COMMANDS.values():  # warm: the index, bytecode caches
        stemma(args, root)
    cpu: dict[str, list[float]] = {name: [] for name in COMMANDS}
    wall: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeat):
        for name, args in COMMANDS.items():
            c, w = stemma(args, root)
            cpu[name].append(c)
            wall[name].append(w)
    report = {name: summary(cpu[name], wall[name]) for name in COMMANDS}
    for name, args in COMMANDS.items():
        report[name] = {"command": "stemma " + " ".join(args), **report[name]}
    return with_ratios(report)


def main(argv: list[str] | None = None) -> None:
    """Generate the registries, time the commands, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stemma-bench-ls"))
    parser.add_argument("--clean", action="store_true", help="remove --work at the end")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = sorted(set(args.models))
    report: dict[str, Any] = {"models": sizes, "repeat": args.repeat, "target_ls_1k_s": TARGET_S}
    by_size: dict[int, dict[str, Any]] = {}
    for n in sizes:
        root = registry(args.work, n)
        imported = heavy_modules(root)
        by_size[n] = measure(root, args.repeat)
        report[str(n)] = {**by_size[n], "heavy_modules_imported_by_ls": imported}
    if len(sizes) > 1:
        report["growth"] = growth(sizes, by_size)
        report["flagged"] = flagged(report["growth"])
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
