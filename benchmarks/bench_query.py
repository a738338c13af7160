"""Query index benchmarks on synthetic registries; prints one JSON object.

    python benchmarks/bench_query.py [--models 10000] [--small 1000] [--cores 2]

Measures, against the DESIGN.md targets:
- cold index build of `--models` manifests (no .stemma/ yet; files in the page cache),
  in a fresh process pinned to `--cores` CPUs (target: under 2 s for 10,000 on 2 cores);
- refresh after one manifest changed (target: under 0.2 s), and with nothing changed;
- `stemma query` wall time on `--small` models as a subprocess, process start included
  (target: under 0.3 s), beside the time to import the CLI alone;
- latency of a metric filter, a join with `edges`, and `descendants()` of a root with
  10,000 descendants, on the large index: the SQL alone and through `query()`.
Registries are generated once under `--work` and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import generate, model_name, timing_env

FAMILY = 10_001  # each family root has 10,000 descendants
METRIC_FILTER = "SELECT name, accuracy FROM models WHERE accuracy > 0.97 AND status = 'built'"
EDGE_JOIN = """SELECT e.src, e.dst, c.accuracy - p.accuracy AS delta
FROM edges e JOIN models c ON c.name = e.src JOIN models p ON p.name = e.dst
WHERE e.kind = 'derived_from' AND c.accuracy < p.accuracy"""
DESCENDANTS = f"SELECT count(*), max(depth) FROM descendants('{model_name(0)}')"
CLI_QUERY = "SELECT name, accuracy FROM models ORDER BY accuracy DESC LIMIT 10"


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


def in_child(code: str, cwd: Path) -> dict[str, Any]:
    """Run Python `code` in a fresh process; it prints one JSON line last. Adds the process's
    wall time and its CPU time (its own children included), which varies less than wall time
    on a shared machine."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env=timing_env(),
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = round(wall, 3)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    out["process_cpu_s"] = round(cpu, 3)
    return out


REFRESH = """
import json, time
from stemma.registry import Registry
from stemma.registry.store.index import refresh
start = time.perf_counter()
stats = refresh(Registry.open("."))
print(json.dumps({"seconds": round(time.perf_counter() - start, 3), **stats.to_dict()}))
"""


# The floor under any refresh: listing the folders and stat-ing every spec and manifest.
STAT_ALL = """
import json, time
from pathlib import Path
from stemma.registry.store import _snapshot
start = time.perf_counter()
_snapshot.snapshot(Path("."))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def cold_builds(root: Path, repeat: int) -> dict[str, Any]:
    """Build the index from nothing `repeat` times (files in the page cache)."""
    for path in root.glob("*/*/*"):  # read every file once: the page cache is warm
        path.read_bytes()
    runs = []
    for _ in range(repeat):
        shutil.rmtree(root / ".stemma", ignore_errors=True)
        runs.append(in_child(REFRESH, root))
    return {
        "seconds": _summary([r["seconds"] for r in runs]),
        "process_wall_s": _summary([r["process_wall_s"] for r in runs]),
        "process_cpu_s": _summary([r["process_cpu_s"] for r in runs]),
        "files": runs[-1]["added"],
        "phases_of_last": runs[-1]["phases"],
    }


def change_one(root: Path, i: int) -> None:
    path = root / "models" / model_name(7) / "manifest.json"
    doc = json.loads(path.read_text())
    doc["metrics"]["accuracy"] = round(0.5 + i / 1000, 4)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def refreshes(root: Path, repeat: int) -> dict[str, Any]:
    one, none = [], []
    for i in range(repeat):
        change_one(root, i)
        one.append(in_child(REFRESH, root))
        time.sleep(2.1)  # let the changed file age past the racy window
        in_child(REFRESH, root)
        none.append(in_child(REFRESH, root))
    stats = [in_child(STAT_ALL, root) for _ in range(repeat)]
    return {
        "stat_every_file_s": _summary([r["seconds"] for r in stats]),
        "one_change_s": _summary([r["seconds"] for r in one]),
        "one_change_process_wall_s": _summary([r["process_wall_s"] for r in one]),
        "one_change_stats": {k: one[-1][k] for k in ("added", "changed", "removed")},
        "one_change_phases_of_last": one[-1]["phases"],
        "no_change_s": _summary([r["seconds"] for r in none]),
    }


def cli_wall(root: Path, repeat: int) -> dict[str, Any]:
    stemma = str(Path(sys.executable).with_name("stemma"))
    env = timing_env()  # the first run refreshes the index and writes bytecode caches
    subprocess.run([stemma, "query", CLI_QUERY], cwd=root, check=True, capture_output=True, env=env)
    library = (
        "from stemma.registry import Registry\nfrom stemma.registry.query.sql import query\n"
        f"query(Registry.open('.'), {CLI_QUERY!r})"
    )
    query_times, import_times, library_times = [], [], []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", library], cwd=root, check=True, env=env)
        library_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(
            [stemma, "query", CLI_QUERY], cwd=root, check=True, capture_output=True, env=env
        )
        query_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import stemma.cli.app"], check=True, env=env)
        import_times.append(time.perf_counter() - start)
    return {
        "stemma_query_wall_s": _summary(query_times),
        "import_cli_only_wall_s": _summary(import_times),
        "library_query_process_wall_s": _summary(library_times),
        "command": f"stemma query {CLI_QUERY!r}",
    }


def latencies(root: Path, repeat: int) -> dict[str, Any]:
    from stemma.registry import Registry
    from stemma.registry.query.sql import query
    from stemma.registry.store.index import open_index

    reg = Registry.open(root)
    out: dict[str, Any] = {}
    with open_index(reg) as index:
        for label, sql in (
            ("metric_filter", METRIC_FILTER),
            ("edges_join", EDGE_JOIN),
            ("descendants_10k", DESCENDANTS),
        ):
            times, rows = [], []
            for _ in range(repeat):
                start = time.perf_counter()
                rows = index.con.execute(sql).fetchall()
                times.append(time.perf_counter() - start)
            out[label] = {
                "sql_s": _summary(times),
                "rows": len(rows),
                "first_row": [str(v) for v in rows[0]] if rows else None,
            }
    for label, sql in (
        ("metric_filter", METRIC_FILTER),
        ("edges_join", EDGE_JOIN),
        ("descendants_10k", DESCENDANTS),
    ):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            query(reg, sql)
            times.append(time.perf_counter() - start)
        out[label]["query_api_s"] = _summary(times)
    return out


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "n": len(values),
    }


def main(argv: list[str] | None = None) -> None:
    """Run every measurement and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000, help="models in the large registry")
    parser.add_argument("--small", type=int, default=1000, help="models for `stemma query`")
    parser.add_argument("--cores", type=int, default=2, help="CPUs the measured processes get")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each timing")
    parser.add_argument("--cold-repeat", type=int, default=3, help="cold index builds")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/stemma-bench-query"),
        help="where the synthetic registries are kept between runs",
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    pin(args.cores)
    report: dict[str, Any] = {"cpus_visible": os.cpu_count(), "cores": args.cores}
    big, small = registry(args.work, args.models), registry(args.work, args.small)
    report["cold_index"] = {"models": args.models, **cold_builds(big, args.cold_repeat)}
    report["refresh"] = refreshes(big, max(3, args.repeat // 2))
    report["latency"] = latencies(big, args.repeat)
    report["cli"] = {"models": args.small, **cli_wall(small, args.repeat)}
    report["targets"] = {"cold_index_s": 2.0, "one_change_s": 0.2, "stemma_query_wall_s": 0.3}
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
