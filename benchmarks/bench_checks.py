"""Benchmark the checks: the time they add to a build, and their figures on the example registry.

Prints one JSON document:
- `overhead`: seconds to build small derived models of the example registry with their checks
  and with the checks replaced by a no-op (median of `--repeats` builds each), and the
  difference. digits-5to9-ft re-initialises its head, so its forgetting check fits linear
  probes; digits-rotated-ft keeps the source's head.
- `figures`: for every example model that has checks, the drift, forgetting and parameter
  figures and whether each check passed. Read from the manifests under zoo/ when the example
  registry has been built there; otherwise its datasets and models are built in a temporary
  copy (the working tree is never written).

    python benchmarks/bench_checks.py [--repeats 3] [--skip-mnist]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from stemma.migration import build as build_mod
from stemma.migration.build import build_dataset, build_model
from stemma.registry import Registry

REPO = Path(__file__).resolve().parent.parent
OVERHEAD_MODELS = ("digits-5to9-ft", "digits-rotated-ft")
MNIST = ("mnist5k", "digits-28", "mnist-base", "digits-from-mnist")


@contextmanager
def checks_disabled() -> Iterator[None]:
    """Replace the build's call to the checks by a no-op."""
    saved: Callable[..., Any] = build_mod.run_checks  # type: ignore[attr-defined]
    build_mod.run_checks = lambda *args, **kwargs: ({}, {})  # type: ignore[attr-defined]
    try:
        yield
    finally:
        build_mod.run_checks = saved  # type: ignore[attr-defined]


def copy_example(dest: Path) -> Registry:
    """stemma.yaml and the specs of the example registry, without built outputs."""
    shutil.copy2(REPO / "stemma.yaml", dest / "stemma.yaml")
    root = Registry.open(REPO).root
    for spec in root.glob("*/*/spec.yaml"):
        target = dest / spec.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(spec, target)
    return Registry.open(dest)


def build_all(reg: Registry, skip: set[str]) -> dict[str, float]:
    """Build every dataset, then every model parents first; seconds per model."""
    for name in reg.dataset_names():
        if name not in skip:
            build_dataset(reg, name)
    done: dict[str, float] = {}
    pending = [m for m in reg.model_names() if m not in skip]
    while pending:
        for name in list(pending):
            src = reg.model_spec(name).source
            if src is not None and src.model not in done:
                continue
            begin = time.perf_counter()
            build_model(Registry.open(reg.repo_root), name)
            done[name] = round(time.perf_counter() - begin, 3)
            pending.remove(name)
    return done


def figures(reg: Registry) -> dict[str, Any]:
    """The recorded checks of every model that has any, summarised."""
    out: dict[str, Any] = {}
    for name in reg.model_names():
        manifest = reg.model_manifest(name)
        if manifest is None or not manifest.raw.get("checks"):
            continue
        entry: dict[str, Any] = {}
        for check, result in sorted(manifest.raw["checks"].items()):
            figs = dict(result.get("figures") or {})
            figs.pop("per_tensor", None)
            entry[check] = {"passed": result["passed"], **figs}
            if "method" in result:
                entry[check]["method"] = result["method"]
            data = (result.get("inputs") or {}).get("data")
            if data:
                entry[check]["data"] = data["name"]
        out[name] = entry
    return out


def overhead(reg: Registry, repeats: int) -> dict[str, Any]:
    """Median build seconds of each model with and without its checks."""
    result: dict[str, Any] = {}
    for name in OVERHEAD_MODELS:
        timings: dict[str, list[float]] = {"with_checks": [], "without_checks": []}
        for _ in range(repeats):
            for label in ("with_checks", "without_checks"):
                begin = time.perf_counter()
                if label == "with_checks":
                    build_model(Registry.open(reg.repo_root), name)
                else:
                    with checks_disabled():
                        build_model(Registry.open(reg.repo_root), name)
                timings[label].append(time.perf_counter() - begin)
        with_s = statistics.median(timings["with_checks"])
        without_s = statistics.median(timings["without_checks"])
        result[name] = {
            "with_checks_s": round(with_s, 3),
            "without_checks_s": round(without_s, 3),
            "checks_s": round(with_s - without_s, 3),
            "checks_share": round((with_s - without_s) / with_s, 3) if with_s else None,
        }
    return result


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="builds per timing (median)")
    parser.add_argument("--skip-mnist", action="store_true", help="leave out the MNIST models")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    skip = set(MNIST) if args.skip_mnist else set()
    example = Registry.open(REPO)
    built = all(
        example.model_manifest(m) is not None for m in example.model_names() if m not in skip
    )
    report: dict[str, Any] = {"threads": torch.get_num_threads(), "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="stemma-bench-checks-") as tmp:
        reg = copy_example(Path(tmp))
        begin = time.perf_counter()
        report["build_s"] = build_all(reg, skip)
        report["build_total_s"] = round(time.perf_counter() - begin, 3)
        report["figures_from"] = "zoo manifests" if built else "temporary build"
        report["figures"] = figures(example if built else Registry.open(tmp))
        report["overhead"] = overhead(Registry.open(tmp), args.repeats)
    json.dump(report, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
