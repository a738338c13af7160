"""stemma's query index beside MLflow's model registry on the same model versions; JSON out.

    python benchmarks/bench_mlflow.py [--models 10000] [--mlflow-python PATH]

Both sides hold the same `--models` versions of a synthetic registry (one version per model,
with its relation, source model and family as MLflow tags). MLflow uses its SQLite backend and
`MlflowClient.search_model_versions` with a filter equivalent to stemma's SQL; the report gives
each side's latency (median of `--repeat`) and their ratio. MLflow is not a dependency of
stemma (it is in the `bench` extra): when it cannot be imported here and no interpreter that
has it is given with `--mlflow-python`, the script prints {"skipped": "..."}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import generate, model_name

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

MLFLOW_SIDE = r"""
import json, statistics, sys, time, warnings
warnings.filterwarnings("ignore")
import logging
logging.disable(logging.WARNING)
from mlflow.tracking import MlflowClient
db, versions_file, filters_file, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
versions = json.load(open(versions_file))
filters = json.load(open(filters_file))
client = MlflowClient(tracking_uri="sqlite:///" + db, registry_uri="sqlite:///" + db)
start = time.perf_counter()
for v in versions:
    client.create_registered_model(v["name"])
    client.create_model_version(
        v["name"], source="file:///synthetic/models/" + v["name"],
        tags={"relation": v["relation"] or "", "source_model": v["source"] or "",
              "family": v["family"] or "", "stemma_id": v["id"]})
ingest = time.perf_counter() - start
out = {"ingest_s": round(ingest, 3), "mlflow": __import__("mlflow").__version__, "filters": {}}
for label, flt in filters:
    times, n = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        found, token = [], None
        while True:
            page = client.search_model_versions(flt, max_results=10000, page_token=token)
            found += page
            token = page.token
            if not token:
                break
        times.append(time.perf_counter() - start)
        n = len(found)
    out["filters"][label] = {"median_s": statistics.median(times), "min_s": min(times),
                             "rows": n}
print(json.dumps(out))
"""


def mlflow_python(explicit: str | None) -> str | None:
    """An interpreter that can import mlflow: this one, or the one given."""
    if importlib.util.find_spec("mlflow") is not None:
        return sys.executable
    if explicit:
        ok = subprocess.run([explicit, "-c", "import mlflow"], capture_output=True, check=False)
        if ok.returncode == 0:
            return explicit
    return None


def stemma_side(root: Path, repeat: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from stemma.registry import Registry
    from stemma.registry.index import open_index, refresh
    from stemma.registry.query import query

    reg = Registry.open(root)
    shutil.rmtree(root / ".stemma", ignore_errors=True)
    start = time.perf_counter()
    refresh(reg)
    out: dict[str, Any] = {"index_cold_s": round(time.perf_counter() - start, 3), "filters": {}}
    for label, sql, _flt in FILTERS:
        times, rows = [], 0
        for _ in range(repeat):
            start = time.perf_counter()
            rows = len(query(reg, sql))
            times.append(time.perf_counter() - start)
        out["filters"][label] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "rows": rows,
        }
    with open_index(reg) as index:  # the SQL alone, without the freshness check of the files
        for label, sql, _flt in FILTERS:
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                index.con.execute(sql).fetchall()
                times.append(time.perf_counter() - start)
            out["filters"][label]["sql_only_median_s"] = statistics.median(times)
    versions = query(
        reg,
        "SELECT name, id, source, relation, family FROM models WHERE id IS NOT NULL ORDER BY name",
    ).to_dicts()
    return out, versions


def main(argv: list[str] | None = None) -> None:
    """Run both sides on the same versions and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000, help="model versions")
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
        help="scratch folder for the registry and the MLflow database",
    )
    args = parser.parse_args(argv)
    python = mlflow_python(args.mlflow_python)
    if python is None:
        reason = "mlflow is not importable: pip install '.[bench]' or pass --mlflow-python"
        sys.stdout.write(json.dumps({"skipped": reason}) + "\n")
        return
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    root = args.work / "registry"
    generate(root, args.models, shape="mixed", seed=0, family_size=1000)
    time.sleep(2.5)  # files younger than ~2 s are re-read by every refresh (racy mtimes)
    ours, versions = stemma_side(root, args.repeat)
    (args.work / "versions.json").write_text(json.dumps(versions))
    (args.work / "filters.json").write_text(json.dumps([(lab, flt) for lab, _s, flt in FILTERS]))
    proc = subprocess.run(
        [
            python,
            "-c",
            MLFLOW_SIDE,
            str(args.work / "mlflow.db"),
            str(args.work / "versions.json"),
            str(args.work / "filters.json"),
            str(args.repeat),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.stdout.write(json.dumps({"error": proc.stderr.strip().splitlines()[-1:]}) + "\n")
        sys.exit(1)
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    comparison = {}
    for label, sql, flt in FILTERS:
        a, b = ours["filters"][label], theirs["filters"][label]
        comparison[label] = {
            "stemma_sql": sql,
            "mlflow_filter": flt,
            "rows": [a["rows"], b["rows"]],
            "stemma_median_s": round(a["median_s"], 4),
            "stemma_sql_only_median_s": round(a["sql_only_median_s"], 4),
            "mlflow_median_s": round(b["median_s"], 4),
            "mlflow_over_stemma": round(b["median_s"] / a["median_s"], 2),
            "mlflow_over_stemma_sql_only": round(b["median_s"] / a["sql_only_median_s"], 2),
        }
    report = {
        "versions": len(versions),
        "mlflow_version": theirs["mlflow"],
        "stemma_index_cold_s": ours["index_cold_s"],
        "mlflow_ingest_s": theirs["ingest_s"],
        "filters": comparison,
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
