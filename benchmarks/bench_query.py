"""Query index benchmarks on synthetic registries of several sizes; prints one JSON object.

    python benchmarks/bench_query.py [--models 1000 10000 30000] [--cores 2] [--repeat 5]

At each size, beside `stemma ls` on the same registry, against the DESIGN.md targets:
- cold index build (no .stemma/ yet; files in the page cache) in a fresh process pinned to
  `--cores` CPUs (target: under 2 s for 10,000 on 2 cores);
- refresh after one manifest changed (target: under 0.2 s), and with nothing changed, and
  the floor under any refresh (stat-ing every spec and manifest);
- `stemma query` as a user runs it (target: under 0.3 s at 1,000 models), the same query
  through the library in a fresh process, and the import of the CLI alone;
- latency of a metric filter, a join with `edges`, and `descendants()` of a family root
  (every model of a 10,001-model family), the SQL alone and through `query()`.
Every timing gives median CPU seconds (user + system of the measured process and its
children; in this process for the latencies: every thread of it) beside median wall seconds,
and its ratio of each to `stemma ls`. With several sizes, `growth` gives each timing's
exponent of growth between consecutive sizes (1.0: linear in the registry) and `flagged`
lists the timings whose ratio to `ls` rises with N and those growing faster than linear.
Registries are generated once under `--work` and reused; `--clean` removes them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import child_json, clock, flagged, growth, stemma, summary, timed, with_ratios
from stemma.registry import Registry
from stemma.registry.query.sql import query
from stemma.registry.store.index import open_index
from synth import generate, model_name

FAMILY = 10_001  # each family root has up to 10,000 descendants
METRIC_FILTER = "SELECT name, accuracy FROM models WHERE accuracy > 0.97 AND status = 'built'"
EDGE_JOIN = """SELECT e.src, e.dst, c.accuracy - p.accuracy AS delta
FROM edges e JOIN models c ON c.name = e.src JOIN models p ON p.name = e.dst
WHERE e.kind = 'derived_from' AND c.accuracy < p.accuracy"""
DESCENDANTS = f"SELECT count(*), max(depth) FROM descendants('{model_name(0)}')"
SQL = {"metric_filter": METRIC_FILTER, "edges_join": EDGE_JOIN, "descendants": DESCENDANTS}
CLI_QUERY = "SELECT name, accuracy FROM models ORDER BY accuracy DESC LIMIT 10"
LIBRARY_QUERY = (
    "from stemma.registry import Registry\nfrom stemma.registry.query.sql import query\n"
    f"query(Registry.open('.'), {CLI_QUERY!r})"
)
TARGETS = {"cold_index_10k_s": 2.0, "refresh_one_change_s": 0.2, "stemma_query_1k_s": 0.3}


def registry(work: Path, n: int) -> Path:
    """A synthetic registry of `n` models (mixed shape), generated on first use."""
    root = work / f"mixed-{n}"
    marker = root / ".generated"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        generate(root, n, shape="mixed", seed=0, family_size=FAMILY)
        marker.write_text("ok\n")
    return root


def pin(cores: int) -> None:
    """Run this process and its children on the first `cores` CPUs (when the OS allows)."""
    if hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[:cores])


REFRESH = """
import json, time
from stemma.registry import Registry
from stemma.registry.store.index import refresh
start = time.perf_counter()
stats = refresh(Registry.open("."))
print(json.dumps({"seconds": round(time.perf_counter() - start, 4), **stats.to_dict()}))
"""


# The floor under any refresh: listing the folders and stat-ing every spec and manifest.
STAT_ALL = """
import json, time
from pathlib import Path
from stemma.registry.store import _snapshot
start = time.perf_counter()
_snapshot.snapshot(Path("."))
print(json.dumps({"seconds": round(time.perf_counter() - start, 4)}))
"""


class Timings:
    """CPU and wall seconds of every named timing at one size (and the in-process seconds a
    child reported, where it did)."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[float]] = {}
        self.wall: dict[str, list[float]] = {}
        self.inner: dict[str, list[float]] = {}
        self.extra: dict[str, dict[str, Any]] = {}

    def add(self, name: str, cpu: float, wall: float, inner: float | None = None) -> None:
        self.cpu.setdefault(name, []).append(cpu)
        self.wall.setdefault(name, []).append(wall)
        if inner is not None:
            self.inner.setdefault(name, []).append(inner)

    def child(self, name: str, code: str, root: Path) -> dict[str, Any]:
        out = child_json(code, root)
        self.add(name, out["process_cpu_s"], out["process_wall_s"], out["seconds"])
        return out

    def report(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in self.cpu:
            out[name] = summary(self.cpu[name], self.wall[name])
            if name in self.inner:
                out[name]["in_process_s"] = round(statistics.median(self.inner[name]), 4)
            out[name] |= self.extra.get(name, {})
        return with_ratios(out)


def cold_builds(t: Timings, root: Path, repeat: int) -> None:
    """Build the index from nothing `repeat` times (files in the page cache)."""
    for path in root.glob("*/*/*"):  # read every file once: the page cache is warm
        path.read_bytes()
    for _ in range(repeat):
        shutil.rmtree(root / ".stemma", ignore_errors=True)
        last = t.child("cold_index", REFRESH, root)
    t.extra["cold_index"] = {"files": last["added"], "phases_of_last": last["phases"]}


def change_one(root: Path, i: int) -> None:
    path = root / "models" / model_name(7) / "manifest.json"
    doc = json.loads(path.read_text())
    doc["metrics"]["accuracy"] = round(0.5 + i / 1000, 4)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def refreshes(t: Timings, root: Path, repeat: int) -> None:
    """Refresh after one manifest changed, and with nothing changed; the stat floor."""
    for i in range(repeat):
        change_one(root, i)
        one = t.child("refresh_one_change", REFRESH, root)
        time.sleep(2.1)  # let the changed file age past the racy window
        child_json(REFRESH, root)
        t.child("refresh_no_change", REFRESH, root)
    t.extra["refresh_one_change"] = {
        "stats": {k: one[k] for k in ("added", "changed", "removed")},
        "phases_of_last": one["phases"],
    }
    for _ in range(repeat):
        t.child("stat_every_file", STAT_ALL, root)


def commands(t: Timings, root: Path, repeat: int) -> None:
    """`stemma ls`, `stemma query`, the library query and the CLI import, interleaved."""
    python = sys.executable
    runs = {
        "ls": lambda: stemma(["ls"], root),
        "stemma_query": lambda: stemma(["query", CLI_QUERY], root),
        "library_query_process": lambda: timed([python, "-c", LIBRARY_QUERY], root),
        "import_cli_only": lambda: timed([python, "-c", "import stemma.cli.app"], root),
    }
    for run in runs.values():  # warm: the index is fresh, bytecode caches written
        run()
    for _ in range(repeat):
        for name, run in runs.items():
            t.add(name, *run())
    t.extra["stemma_query"] = {"command": f"stemma query {CLI_QUERY!r}"}


def latencies(t: Timings, root: Path, repeat: int) -> None:
    """Each query's SQL alone on the open index, and through `query()` (in this process)."""
    reg = Registry.open(root)
    with open_index(reg) as index:
        for label, sql in SQL.items():
            rows: list[Any] = []
            for _ in range(repeat):
                with clock() as took:
                    rows = index.con.execute(sql).fetchall()
                t.add(f"{label}_sql", took["cpu_s"], took["wall_s"])
            t.extra[f"{label}_sql"] = {
                "rows": len(rows),
                "first_row": [str(v) for v in rows[0]] if rows else None,
            }
    for label, sql in SQL.items():
        for _ in range(repeat):
            with clock() as took:
                query(reg, sql)
            t.add(f"{label}_query_api", took["cpu_s"], took["wall_s"])


def measure(work: Path, n: int, repeat: int, cold_repeat: int) -> dict[str, Any]:
    """Every timing at `n` models, with its ratios to `stemma ls`."""
    root = registry(work, n)
    t = Timings()
    cold_builds(t, root, cold_repeat)
    refreshes(t, root, max(3, repeat // 2))
    commands(t, root, repeat)
    latencies(t, root, repeat)
    return t.report()


def main(argv: list[str] | None = None) -> None:
    """Run every measurement at every size and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--cores", type=int, default=2, help="CPUs the measured processes get")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each timing")
    parser.add_argument("--cold-repeat", type=int, default=3, help="cold index builds")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/stemma-bench-query"),
        help="where the synthetic registries are kept between runs",
    )
    parser.add_argument("--clean", action="store_true", help="remove --work at the end")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    pin(args.cores)
    sizes = sorted(set(args.models))
    report: dict[str, Any] = {
        "cpus_visible": os.cpu_count(),
        "cores": args.cores,
        "models": sizes,
        "repeat": args.repeat,
        "targets": TARGETS,
    }
    by_size = {n: measure(args.work, n, args.repeat, args.cold_repeat) for n in sizes}
    report |= {str(n): by_size[n] for n in sizes}
    if len(sizes) > 1:
        report["growth"] = growth(sizes, by_size)
        report["flagged"] = flagged(report["growth"])
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
