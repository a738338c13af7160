"""Lineage benchmark: graph build time and ancestors/descendants latency; prints JSON.

Two settings:
- `disk`: a synthetic registry of `--models` models written by `synth.generate` (specs and
  manifests on disk), read with `build_graph`, the way `stemma lineage` reads a registry;
- `memory`: `--nodes` nodes (models plus 16 datasets) as records made in memory, indexed with
  `LineageIndex.from_records` and, unless `--no-networkx`, also built as a networkx graph.

Latencies are per query over `--samples` random models (median, p95, max, in milliseconds),
plus the worst cases: the descendants of the largest family's root and an impact of a dataset.

    python benchmarks/bench_lineage.py --models 10000 --nodes 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stemma.lineage.graph import (
    DatasetRecord,
    ModelRecord,
    graph_from_records,
    read_records,
)
from stemma.lineage.query import LineageIndex, lineage_index
from stemma.registry import Registry
from synth import N_DATASETS, dataset_name, generate, model_name, parents

FAMILY = 10_000


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _latency(fn: Callable[[str], list[str]], keys: list[str]) -> dict[str, Any]:
    times, sizes = [], []
    for key in keys:
        t = time.perf_counter()
        out = fn(key)
        times.append(time.perf_counter() - t)
        sizes.append(len(out))
    times.sort()
    return {
        "median_ms": _ms(statistics.median(times)),
        "p95_ms": _ms(times[int(0.95 * (len(times) - 1))]),
        "max_ms": _ms(times[-1]),
        "mean_result": round(statistics.fmean(sizes), 1),
        "max_result": max(sizes),
    }


def _one(fn: Callable[[str], list[str]], key: str) -> dict[str, Any]:
    t = time.perf_counter()
    out = fn(key)
    return {"ms": _ms(time.perf_counter() - t), "result": len(out), "of": key}


def _queries(index: LineageIndex, n_models: int, samples: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    keys = [f"model:{model_name(rng.randrange(n_models))}" for _ in range(samples)]
    deepest = max(keys, key=lambda k: len(index.ancestors(k)))
    return {
        "ancestors": _latency(index.ancestors, keys),
        "descendants": _latency(index.descendants, keys),
        "worst": {
            "descendants_of_family_root": _one(index.descendants, f"model:{model_name(0)}"),
            "ancestors_of_deepest_sampled": _one(index.ancestors, deepest),
            "impact_of_family_root": _one(index.impact, f"model:{model_name(0)}"),
            "impact_of_dataset": _one(index.impact, f"dataset:{dataset_name(0, 'train')}"),
        },
    }


def bench_disk(n_models: int, samples: int, seed: int, root: Path | None) -> dict[str, Any]:
    """Generate a registry on disk, read it into a graph, time the queries."""
    tmp = root is None
    root = root or Path(tempfile.mkdtemp(prefix="stemma-bench-")) / "registry"
    t = time.perf_counter()
    if not (root / "stemma.yaml").exists():
        generate(root, n_models, shape="mixed", seed=seed, family_size=FAMILY)
    t_gen = time.perf_counter() - t
    try:
        gc.collect()
        t0 = time.perf_counter()
        reg = Registry.open(root)
        models, datasets = read_records(reg)
        t1 = time.perf_counter()
        g = graph_from_records(models, datasets)
        t2 = time.perf_counter()
        index = lineage_index(g)
        _ = index.rank  # the build order, computed on first use (impact needs it)
        t3 = time.perf_counter()
        return {
            "models": len(models),
            "nodes": g.number_of_nodes(),
            "edges": g.number_of_edges(),
            "generate_s": round(t_gen, 2),
            "read_records_s": round(t1 - t0, 2),
            "networkx_graph_s": round(t2 - t1, 2),
            "index_s": round(t3 - t2, 2),
            "build_graph_total_s": round(t3 - t0, 2),
            **_queries(index, n_models, samples, seed),
        }
    finally:
        if tmp:
            shutil.rmtree(root.parent, ignore_errors=True)


def records(n_models: int, seed: int) -> tuple[list[ModelRecord], list[DatasetRecord]]:
    """Spec-like records in memory: the lineage shape of `synth.generate` (mixed)."""
    rng = random.Random(seed)
    links = parents(n_models, "mixed", rng, FAMILY)
    models = []
    for i, parent in enumerate(links):
        data = i % N_DATASETS
        models.append(
            ModelRecord(
                model_name(i),
                None if parent is None else model_name(parent),
                None if parent is None else "finetune",
                None,
                dataset_name(data, "train"),
                dataset_name(data, "test"),
                id=None,
                status="unbuilt",
            )
        )
    datasets = [
        DatasetRecord(dataset_name(j, s)) for j in range(N_DATASETS) for s in ("train", "test")
    ]
    return models, datasets


def bench_memory(n_nodes: int, samples: int, seed: int, networkx: bool) -> dict[str, Any]:
    """Index a graph of `n_nodes` nodes made in memory, time the queries."""
    n_models = n_nodes - 2 * N_DATASETS
    t0 = time.perf_counter()
    models, datasets = records(n_models, seed)
    t1 = time.perf_counter()
    index = LineageIndex.from_records(models, datasets)
    t2 = time.perf_counter()
    _ = index.rank  # the build order, computed on first use (impact needs it): part of loading
    t_rank = time.perf_counter() - t2
    t2 = time.perf_counter()
    out: dict[str, Any] = {
        "nodes": len(index.nodes),
        "make_records_s": round(t1 - t0, 2),
        "index_from_records_s": round(t2 - t1 - t_rank, 2),
        "build_order_s": round(t_rank, 2),
    }
    if networkx:
        g = graph_from_records(models, datasets)
        t3 = time.perf_counter()
        lineage_index(g)
        t4 = time.perf_counter()
        out.update(
            {
                "edges": g.number_of_edges(),
                "networkx_graph_s": round(t3 - t2, 2),
                "index_from_graph_s": round(t4 - t3, 2),
            }
        )
        del g
    out.update(_queries(index, n_models, samples, seed))
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000, help="models on disk (0: skip)")
    parser.add_argument("--nodes", type=int, default=1_000_000, help="nodes in memory (0: skip)")
    parser.add_argument("--samples", type=int, default=1000, help="queries per measurement")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--root", type=Path, help="reuse or keep the on-disk registry here")
    parser.add_argument(
        "--no-networkx",
        action="store_true",
        help="in memory, index the records only (no networkx graph)",
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"python": sys.version.split()[0]}
    if args.models:
        result["disk"] = bench_disk(args.models, args.samples, args.seed, args.root)
    if args.nodes:
        result["memory"] = bench_memory(args.nodes, args.samples, args.seed, not args.no_networkx)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
