"""stemma's query index beside MLflow's model registry on the same model versions; JSON out.

    python benchmarks/bench_mlflow.py [--models 1000,10000,30000] [--mlflow-python PATH]

Both sides hold the same model versions of a synthetic registry (one version per model,
with its relation, source model and family as MLflow tags), for each size of `--models`.
MLflow uses its SQLite backend and `MlflowClient.search_model_versions` with a filter
equivalent to stemma's SQL. Each question reports, per side, the wall and CPU time (median
of `--repeat`): stemma's `query()` in-process, its freshness check of the files included;
the SQL alone on an open index; and the `stemma query` command as a fresh process (wall,
and the CPU of the child), beside one MLflow search in a fresh process (import, client,
search: `mlflow_process_...`). Across sizes, each stemma time gets the exponent of its growth
(t ~ N^k between consecutive sizes), and a stemma/MLflow ratio that rises with N is flagged.

stemma's `query()` is timed on a kept-open handle (after its first query, and its second,
which places the file monitor's watches and copies the index: both reported apart), and on
a new handle for each query (the full check every time) beside it; then the new handle and
the command again while a monitor daemon (`stemma monitor start`) watches the registry, so
that a new handle asks the daemon instead of stat-ing every file (`..._daemon_...`).

Generating registries and filling MLflow (its ingest runs ~40 versions a second here) take
long at 30,000: both are kept under `--work/N/` and reused by later runs (`--fresh` starts
over). MLflow is not a dependency of stemma (it is in the `bench` extra): when it cannot be
imported here and no interpreter that has it is given with `--mlflow-python`, the script
prints {"skipped": "..."}.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import generate, model_name, timing_env

# (label, stemma SQL, MLflow filter string): the same question asked of each registry.
FILTERS = [
    (
        "by_relation",
        "SELECT name, id FROM models WHERE relation = 'adapter'",
        "tags.relation = 'adapter'",
    ),
    (
        "children_of",
        f"SELECT name, id FROM models WHERE source = '{model_name(0)}'",
        f"tags.source_model = '{model_name(0)}'",
    ),
    (
        "one_name",
        f"SELECT name, id FROM models WHERE name = '{model_name(4321)}'",
        f"name = '{model_name(4321)}'",
    ),
]

# Both MLflow scripts start with this: quiet MLflow, and one search read page by page.
MLFLOW_SEARCH = r"""
import sys, warnings
warnings.filterwarnings("ignore")
import logging
logging.disable(logging.WARNING)
from mlflow.tracking import MlflowClient


def search(client, flt):
    found, token = [], None
    while True:
        page = client.search_model_versions(flt, max_results=10000, page_token=token)
        found += page
        token = page.token
        if not token:
            return found
"""
# One search in a fresh process (import, client, query): MLflow's counterpart of `stemma query`.
MLFLOW_ONE = (
    MLFLOW_SEARCH
    + r"""
db, flt = sys.argv[1], sys.argv[2]
client = MlflowClient(tracking_uri="sqlite:///" + db, registry_uri="sqlite:///" + db)
print(len(search(client, flt)))
"""
)

MLFLOW_SIDE = (
    MLFLOW_SEARCH
    + r"""
import json, resource, statistics, subprocess, time
db, versions_file, filters_file, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
one = sys.argv[5]
versions = json.load(open(versions_file))
filters = json.load(open(filters_file))
import os
client = MlflowClient(tracking_uri="sqlite:///" + db, registry_uri="sqlite:///" + db)
start = time.perf_counter()
done = db + ".ingested"
if not os.path.exists(done):  # filled once, reused by later runs
    for v in versions:
        client.create_registered_model(v["name"])
        client.create_model_version(
            v["name"], source="file:///synthetic/models/" + v["name"],
            tags={"relation": v["relation"] or "", "source_model": v["source"] or "",
                  "family": v["family"] or "", "stemma_id": v["id"]})
    open(done, "w").write(str(len(versions)))
ingest = time.perf_counter() - start
out = {"ingest_s": round(ingest, 3), "mlflow": __import__("mlflow").__version__, "filters": {}}
for label, flt in filters:
    times, cpus, n = [], [], 0
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        found = search(client, flt)
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        n = len(found)
    out["filters"][label] = {"median_s": statistics.median(times), "min_s": min(times),
                             "cpu_median_s": statistics.median(cpus), "rows": n}
    walls, child_cpus = [], []
    for _ in range(max(1, repeat // 2)):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", one, db, flt], check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    out["filters"][label]["process_median_s"] = statistics.median(walls)
    out["filters"][label]["process_cpu_median_s"] = statistics.median(child_cpus)
print(json.dumps(out))
"""
)


def mlflow_python(explicit: str | None) -> str | None:
    """An interpreter that can import mlflow: this one, or the one given."""
    if importlib.util.find_spec("mlflow") is not None:
        return sys.executable
    if explicit:
        ok = subprocess.run([explicit, "-c", "import mlflow"], capture_output=True, check=False)
        if ok.returncode == 0:
            return explicit
    return None


def _timed(run: Any, repeat: int) -> tuple[float, float, Any]:
    """Median wall and CPU seconds of `run()` over `repeat` calls, and its last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        out = run()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), out


def _cli(root: Path, sql: str, repeat: int) -> tuple[float, float]:
    """Median wall and child CPU seconds of `stemma query SQL` as a fresh process."""
    import resource

    stemma = str(Path(sys.executable).with_name("stemma"))
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [stemma, "query", sql, "-f", "json"],
            cwd=root,
            capture_output=True,
            check=True,
            env=timing_env(),
        )
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def stemma_side(root: Path, repeat: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Cold index, then each question in-process, as SQL alone, and as a command."""
    from stemma.registry import Registry
    from stemma.registry.query.sql import query
    from stemma.registry.store.index import open_index, refresh

    reg = Registry.open(root)
    shutil.rmtree(root / ".stemma", ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    refresh(reg)
    out: dict[str, Any] = {
        "index_cold_s": round(time.perf_counter() - start, 3),
        "index_cold_cpu_s": round(time.process_time() - cpu, 3),
        "filters": {},
    }
    # A handle's first query checks every file; its second places the monitor's watches,
    # checks, and copies the index; from then on a query is its SQL while nothing changes.
    for step in ("first_query", "watch_setup"):
        start, cpu = time.perf_counter(), time.process_time()
        query(reg, "SELECT 1")
        out[f"handle_{step}_s"] = round(time.perf_counter() - start, 4)
        out[f"handle_{step}_cpu_s"] = round(time.process_time() - cpu, 4)
    for label, sql, _flt in FILTERS:
        wall, cpu_s, rows = _timed(lambda sql=sql: query(reg, sql), repeat)
        out["filters"][label] = {"median_s": wall, "cpu_median_s": cpu_s, "rows": len(rows)}
        # A new handle for each query: the full check every time (no monitor).
        wall, cpu_s, _ = _timed(lambda sql=sql: query(Registry.open(root), sql), repeat)
        out["filters"][label]["new_handle_median_s"] = wall
        out["filters"][label]["new_handle_cpu_median_s"] = cpu_s
    with open_index(reg) as index:  # the SQL alone, without the freshness check of the files
        for label, sql, _flt in FILTERS:
            wall, cpu_s, _ = _timed(lambda sql=sql: index.con.execute(sql).fetchall(), repeat)
            out["filters"][label]["sql_only_median_s"] = wall
            out["filters"][label]["sql_only_cpu_median_s"] = cpu_s
    for label, sql, _flt in FILTERS:
        wall, cpu_s = _cli(root, sql, max(1, repeat // 2))
        out["filters"][label]["cli_median_s"] = wall
        out["filters"][label]["cli_cpu_median_s"] = cpu_s
    stemma = str(Path(sys.executable).with_name("stemma"))
    subprocess.run([stemma, "monitor", "start"], cwd=root, check=True, capture_output=True)
    try:
        query(Registry.open(root), "SELECT 1")  # the index records the daemon's token
        for label, sql, _flt in FILTERS:
            wall, cpu_s, _ = _timed(lambda sql=sql: query(Registry.open(root), sql), repeat)
            out["filters"][label]["daemon_new_handle_median_s"] = wall
            out["filters"][label]["daemon_new_handle_cpu_median_s"] = cpu_s
            wall, cpu_s = _cli(root, sql, max(1, repeat // 2))
            out["filters"][label]["daemon_cli_median_s"] = wall
            out["filters"][label]["daemon_cli_cpu_median_s"] = cpu_s
    finally:
        subprocess.run([stemma, "monitor", "stop"], cwd=root, check=False, capture_output=True)
    versions = query(
        reg,
        "SELECT name, id, source, relation, family FROM models WHERE id IS NOT NULL ORDER BY name",
    ).to_dicts()
    return out, versions


def one_size(n: int, work: Path, python: str, repeat: int) -> dict[str, Any]:
    """Both sides at `n` versions (registry and MLflow database kept under `work`)."""
    root = work / "registry"
    if not (work / "generated").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        generate(root, n, shape="mixed", seed=0, family_size=1000)
        time.sleep(2.5)  # files younger than ~2 s are re-read by every refresh (racy mtimes)
        (work / "generated").write_text(str(n))
    ours, versions = stemma_side(root, repeat)
    (work / "versions.json").write_text(json.dumps(versions))
    (work / "filters.json").write_text(json.dumps([(lab, flt) for lab, _s, flt in FILTERS]))
    proc = subprocess.run(
        [
            python,
            "-c",
            MLFLOW_SIDE,
            str(work / "mlflow.db"),
            str(work / "versions.json"),
            str(work / "filters.json"),
            str(repeat),
            MLFLOW_ONE,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"MLflow side failed: {proc.stderr.strip().splitlines()[-1:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    comparison = {}
    for label, sql, flt in FILTERS:
        a, b = ours["filters"][label], theirs["filters"][label]
        comparison[label] = {
            "stemma_sql": sql,
            "mlflow_filter": flt,
            "rows": [a["rows"], b["rows"]],
            "stemma_query_wall_s": round(a["median_s"], 4),
            "stemma_query_cpu_s": round(a["cpu_median_s"], 4),
            "stemma_new_handle_wall_s": round(a["new_handle_median_s"], 4),
            "stemma_new_handle_cpu_s": round(a["new_handle_cpu_median_s"], 4),
            "stemma_sql_only_wall_s": round(a["sql_only_median_s"], 4),
            "stemma_sql_only_cpu_s": round(a["sql_only_cpu_median_s"], 4),
            "stemma_cli_wall_s": round(a["cli_median_s"], 4),
            "stemma_cli_cpu_s": round(a["cli_cpu_median_s"], 4),
            "stemma_daemon_new_handle_wall_s": round(a["daemon_new_handle_median_s"], 4),
            "stemma_daemon_new_handle_cpu_s": round(a["daemon_new_handle_cpu_median_s"], 4),
            "stemma_daemon_cli_wall_s": round(a["daemon_cli_median_s"], 4),
            "stemma_daemon_cli_cpu_s": round(a["daemon_cli_cpu_median_s"], 4),
            "new_handle_over_mlflow_wall": round(a["new_handle_median_s"] / b["median_s"], 2),
            "daemon_new_handle_over_mlflow_wall": round(
                a["daemon_new_handle_median_s"] / b["median_s"], 2
            ),
            "mlflow_wall_s": round(b["median_s"], 4),
            "mlflow_cpu_s": round(b["cpu_median_s"], 4),
            "mlflow_process_wall_s": round(b["process_median_s"], 4),
            "mlflow_process_cpu_s": round(b["process_cpu_median_s"], 4),
            "cli_over_mlflow_process_wall": round(a["cli_median_s"] / b["process_median_s"], 2),
            "stemma_over_mlflow_wall": round(a["median_s"] / b["median_s"], 2),
            "stemma_over_mlflow_cpu": round(a["cpu_median_s"] / max(b["cpu_median_s"], 1e-9), 2),
            "target_met": a["median_s"] * 2 <= b["median_s"],
        }
    return {
        "versions": len(versions),
        "mlflow_version": theirs["mlflow"],
        "stemma_index_cold_s": ours["index_cold_s"],
        "stemma_index_cold_cpu_s": ours["index_cold_cpu_s"],
        **{k: v for k, v in ours.items() if k.startswith("handle_")},
        "mlflow_ingest_s": theirs["ingest_s"],
        "filters": comparison,
    }


def growth(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Exponent k of t ~ N^k between consecutive sizes for each stemma time, and flags
    where stemma's ratio to MLflow rises with N."""
    out: dict[str, Any] = {}
    flags = []
    for lo, hi in itertools.pairwise(sizes):
        span = f"{lo['versions']}->{hi['versions']}"
        scale = math.log(hi["versions"] / lo["versions"])
        for label in lo["filters"]:
            a, b = lo["filters"][label], hi["filters"][label]
            for key in ("stemma_query_wall_s", "stemma_query_cpu_s", "stemma_cli_wall_s"):
                if a[key] > 0 and b[key] > 0:
                    k = math.log(b[key] / a[key]) / scale
                    out.setdefault(label, {}).setdefault(key, {})[span] = round(k, 2)
            for key in ("stemma_over_mlflow_wall", "stemma_over_mlflow_cpu"):
                if b[key] > a[key] * 1.1:
                    flags.append(f"{label}: {key} rises {a[key]} -> {b[key]} over {span}")
    return {"exponent": out, "rising_ratio_flags": flags}


def main(argv: list[str] | None = None) -> None:
    """Run both sides at each size and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="10000", help="model versions: one size or a comma-separated list"
    )
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each search")
    parser.add_argument(
        "--mlflow-python",
        default=None,
        help="a Python interpreter that has mlflow, when this one does not",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/stemma-bench-mlflow"),
        help="scratch folder: registries and MLflow databases, kept per size and reused",
    )
    parser.add_argument("--fresh", action="store_true", help="generate and ingest anew")
    args = parser.parse_args(argv)
    python = mlflow_python(args.mlflow_python)
    if python is None:
        reason = "mlflow is not importable: pip install '.[bench]' or pass --mlflow-python"
        sys.stdout.write(json.dumps({"skipped": reason}) + "\n")
        return
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    sizes = []
    for n in sorted(int(x) for x in str(args.models).split(",")):
        try:
            sizes.append(one_size(n, args.work / str(n), python, args.repeat))
        except RuntimeError as exc:
            sys.stdout.write(json.dumps({"error": str(exc)}) + "\n")
            sys.exit(1)
    report = {"sizes": sizes, **growth(sizes)}
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
