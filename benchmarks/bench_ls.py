"""`stemma ls` and `stemma --help` wall time on a synthetic registry; prints JSON.

    python benchmarks/bench_ls.py [--models 1000] [--repeat 5]

Each timing is a fresh process (interpreter start included), as a user would see it. The
script also reports whether torch or dvc was imported (it must not be).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from synth import generate, timing_env

PROBE = (
    "import sys; from stemma.cli.app import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'dvc'}), file=sys.stderr)"
)


# The console script, as a user runs it.
STEMMA = str(Path(sys.executable).with_name("stemma"))


def wall(args: list[str], cwd: Path, repeat: int) -> dict[str, float]:
    """Median and best wall time of `stemma ARGS` over `repeat` fresh processes."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        # validate exits 1 when the synthetic registry holds failed checks: time it anyway.
        subprocess.run([STEMMA, *args], cwd=cwd, capture_output=True, check=False, env=timing_env())
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "best_s": round(min(times), 4)}


def main() -> None:
    """Generate the registry, time the commands, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "reg"
        generate(root, opts.models, shape="mixed", seed=0)
        # Files written within the last two seconds are read again by every refresh (their
        # mtime cannot be trusted yet); a registry is not usually listed that soon.
        for path in root.glob("*/*/*"):
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))
        # The first run builds the index and writes bytecode caches; it is not timed.
        imported = subprocess.run(
            [sys.executable, "-c", PROBE, "ls"],
            cwd=root,
            env=timing_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stderr.strip()
        result = {
            "models": opts.models,
            "version": wall(["--version"], root, opts.repeat),
            "help": wall(["--help"], root, opts.repeat),
            "ls": wall(["ls"], root, opts.repeat),
            "ls_json": wall(["ls", "--json"], root, opts.repeat),
            "validate": wall(["validate"], root, opts.repeat),
            "heavy_modules_imported_by_ls": json.loads(imported.replace("'", '"')),
            "target_s": 0.3,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
