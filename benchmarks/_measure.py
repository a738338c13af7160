"""Timing helpers shared by the read-path benchmarks (bench_read_paths, bench_ls, bench_query).

Every timing is a pair: CPU seconds (user + system of the measured process and its children,
steadier than wall time on a shared machine) beside wall seconds. Across registry sizes,
`growth` gives each timing's exponent of growth between consecutive sizes (1.0: linear in the
registry) and flags a ratio to `stemma ls` that rises with N (a path growing faster than `ls`)
and a growth faster than linear between any two sizes (`superlinear`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import timing_env

# An exponent of CPU growth above this, between two sizes, is flagged: a path that grows faster
# than the registry (a little above 1.0: timings at two sizes each carry some noise).
SUPERLINEAR = 1.2

# The console script, as a user runs it.
STEMMA = str(Path(sys.executable).with_name("stemma"))


def timed(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one fresh process `argv` in `cwd`, output discarded, any
    exit status (`validate` may fail on a synthetic registry)."""
    start = time.perf_counter()
    child = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=timing_env() if env is None else env,
    )
    _pid, _status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = 0  # reaped by wait4
    return usage.ru_utime + usage.ru_stime, wall


def stemma(args: list[str], cwd: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one `stemma ARGS` as a user runs it."""
    return timed([STEMMA, *args], cwd)


def child_json(code: str, cwd: Path) -> dict[str, Any]:
    """Run Python `code` in a fresh process; it prints one JSON object on its last line. Adds
    the process's `process_wall_s` and `process_cpu_s` (its own children included)."""
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
    out["process_wall_s"] = wall
    out["process_cpu_s"] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return out


@contextmanager
def clock() -> Iterator[dict[str, float]]:
    """Times the block in this process: yields a dict that gets `cpu_s` (process CPU time,
    every thread) and `wall_s` when the block ends."""
    got: dict[str, float] = {}
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield got
    finally:
        got["cpu_s"] = time.process_time() - cpu
        got["wall_s"] = time.perf_counter() - wall


def pairs(run: Callable[[], tuple[float, float]], repeat: int) -> tuple[list[float], list[float]]:
    """CPU and wall seconds of `repeat` calls of `run`."""
    cpu, wall = [], []
    for _ in range(repeat):
        c, w = run()
        cpu.append(c)
        wall.append(w)
    return cpu, wall


def summary(cpu: list[float], wall: list[float]) -> dict[str, Any]:
    """Median CPU and wall seconds (and the least CPU) of several timings of one thing."""
    return {
        "cpu_s": round(statistics.median(cpu), 4),
        "wall_s": round(statistics.median(wall), 4),
        "min_cpu_s": round(min(cpu), 4),
        "n": len(cpu),
    }


def with_ratios(report: dict[str, dict[str, Any]], base: str = "ls") -> dict[str, dict[str, Any]]:
    """Each timing of `report` (name -> summary) with its CPU and wall ratio to `base`'s."""
    ref = report[base]
    for entry in report.values():
        entry["cpu_ratio_to_ls"] = round(entry["cpu_s"] / ref["cpu_s"], 3)
        entry["wall_ratio_to_ls"] = round(entry["wall_s"] / ref["wall_s"], 3)
    return report


def growth(
    sizes: list[int], by_size: dict[int, dict[str, dict[str, Any]]], base: str = "ls"
) -> dict[str, Any]:
    """Each timing's exponent of growth in CPU (and wall) time between consecutive sizes,
    whether its CPU ratio to `base` rises with N (each step more than 5%: flagged), and
    whether its CPU time grows faster than linear between two sizes (flagged too)."""
    out: dict[str, Any] = {}
    for name in by_size[sizes[0]]:
        if not all(name in by_size[n] for n in sizes):
            continue

        def exponent(key: str, a: int, b: int, name: str = name) -> float | None:
            lo, hi = by_size[a][name][key], by_size[b][name][key]
            if lo <= 0 or hi <= 0:
                return None  # too small to time
            return round(math.log(hi / lo) / math.log(b / a), 2)

        ratios = [by_size[n][name]["cpu_ratio_to_ls"] for n in sizes]
        rising = name != base and all(y > x * 1.05 for x, y in itertools.pairwise(ratios))
        cpu = [exponent("cpu_s", a, b) for a, b in itertools.pairwise(sizes)]
        out[name] = {
            "cpu_exponent": cpu,
            "wall_exponent": [exponent("wall_s", a, b) for a, b in itertools.pairwise(sizes)],
            "cpu_ratio_to_ls": ratios,
            "ratio_rises": rising,
            "superlinear": any(e is not None and e > SUPERLINEAR for e in cpu),
        }
    return out


def flagged(growth_report: dict[str, Any]) -> dict[str, list[str]]:
    """The timings whose ratio to `ls` rises with N, and those that grow faster than linear."""
    return {
        "ratio_rises": [name for name, g in growth_report.items() if g["ratio_rises"]],
        "superlinear": [name for name, g in growth_report.items() if g["superlinear"]],
    }
