"""`stemma audit --base HEAD~1` side by side with `stemma ls`, one spec changed; prints JSON.

    python benchmarks/bench_audit.py [--models 1000,10000,30000] [--repeat 3]

The registry is a synthetic one (`synth.generate`, one family, dvc.yaml written by
`stemma pipeline`) committed to a real git repository; a second commit changes one spec's
learning rate, so the audit compares two states that differ in one file (and reports that
model's manifest as stale). A third commit changes another spec, so that `audit_past`
(HEAD~2 against HEAD~1) reads a head revision that is not the working tree. Each command runs
as a user runs it, in a fresh process, interleaved with `stemma ls` in each round so the
machine's drift hits both alike. Reported: median and minimum wall time, CPU, peak memory of
the audit process, and the ratio of the medians (target, DESIGN.md / the scale targets:
within 10x of `stemma ls`), and beside them `stemma pipeline --check`, the check of the
pipeline files that the audit runs on the head.

`--cold` removes `.stemma/` before every audit: the first audit after a checkout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import generate, model_name, timing_env

TARGET_RATIO = 10.0
MEMORY_TARGET_MIB = 300.0  # peak resident memory of an audit
CHANGED = model_name(7)
LATER = model_name(8)  # changed by a later commit: HEAD~1 is not the working tree


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def registry(work: Path, n: int) -> Path:
    """A synthetic registry of `n` models in git: all of it, then one spec changed."""
    root = work / f"audit-{n}"
    if (root / ".generated").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    generate(root, n, shape="mixed", seed=0, family_size=n + 1)
    stemma = str(Path(sys.executable).with_name("stemma"))
    subprocess.run([stemma, "pipeline"], cwd=root, check=True, capture_output=True)
    _git(root, "init", "-q")
    for key, value in (("user.name", "bench"), ("user.email", "bench@example.com")):
        _git(root, "config", key, value)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "registry")
    spec = root / "models" / CHANGED / "spec.yaml"
    spec.write_text(re.sub(r"lr: [0-9.e-]+", "lr: 0.0123", spec.read_text(), count=1))
    _git(root, "commit", "-qam", f"change {CHANGED}")
    (root / ".generated").write_text("ok\n")
    return root


def past_registry(work: Path, n: int) -> Path:
    """The registry of `registry` with one more commit that changes another spec, so that
    HEAD~1 differs from the working tree: an audit of HEAD~2..HEAD~1 reads its head from git."""
    root = registry(work, n)
    if (root / ".generated-past").exists():
        return root
    spec = root / "models" / LATER / "spec.yaml"
    spec.write_text(re.sub(r"lr: [0-9.e-]+", "lr: 0.0456", spec.read_text(), count=1))
    _git(root, "commit", "-qam", f"change {LATER}")
    (root / ".generated-past").write_text("ok\n")
    return root


def run(root: Path, args: list[str]) -> tuple[float, int, float]:
    """(wall seconds, peak resident kilobytes, CPU seconds) of one `stemma ARGS` in `root`."""
    stemma = str(Path(sys.executable).with_name("stemma"))
    start = time.perf_counter()
    proc = subprocess.Popen(
        [stemma, *args],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=timing_env(),
    )
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped here; keep Popen from waiting again
    cpu = usage.ru_utime + usage.ru_stime
    return time.perf_counter() - start, int(usage.ru_maxrss), cpu


def one_size(work: Path, n: int, repeat: int, cold: bool) -> dict[str, Any]:
    """Every command at `n` models, interleaved with `stemma ls`."""
    root = past_registry(work, n)
    commands = {
        "ls": ["ls"],
        "audit": ["audit", "--base", "HEAD~1", "--format", "json"],
        # Both states named as revisions: the head, whose files are the working tree's, is
        # read from it (and its caches); the base from git, only the files that differ.
        "audit_revisions": ["audit", "--base", "HEAD~1", "--head", "HEAD", "--format", "json"],
        # Both revisions from git, the head not the working tree's: the head is read from
        # the working tree where git finds its files the same, the base where they are the
        # head's.
        "audit_past": ["audit", "--base", "HEAD~2", "--head", "HEAD~1", "--format", "json"],
        # The audit checks the head's pipeline files as `pipeline --check` does: its share.
        "pipeline_check": ["pipeline", "--check"],
    }
    for name in commands:  # warm: the index, bytecode caches, the check's cache
        run(root, commands[name])
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    memory: dict[str, list[int]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            if cold and name == "audit":
                shutil.rmtree(root / ".stemma", ignore_errors=True)
            seconds, kilobytes, cpu = run(root, command)
            times[name].append(seconds)
            memory[name].append(kilobytes)
            cpus[name].append(cpu)
    ls, ls_cpu = statistics.median(times["ls"]), statistics.median(cpus["ls"])
    report: dict[str, Any] = {
        "models": n,
        "repeat": repeat,
        "cold": cold,
        "changed": f"models/{CHANGED}/spec.yaml",
    }
    for name, command in commands.items():
        median, cpu = statistics.median(times[name]), statistics.median(cpus[name])
        report[name] = {
            "command": "stemma " + " ".join(command),
            "median_s": round(median, 3),
            "min_s": round(min(times[name]), 3),
            "cpu_s": round(cpu, 3),
            "peak_mib": round(max(memory[name]) / 1024, 1),
            "ratio_to_ls": round(median / ls, 2),
            "cpu_ratio_to_ls": round(cpu / ls_cpu, 2),
            "target_ratio": TARGET_RATIO if name.startswith("audit") else None,
            "memory_target_mib": MEMORY_TARGET_MIB if name.startswith("audit") else None,
        }
    return report


def growth(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Exponent k of t ~ N^k between consecutive sizes, and the ratios to `ls` that rise."""
    exponents: dict[str, Any] = {}
    flags = []
    for lo, hi in itertools.pairwise(sizes):
        span = f"{lo['models']}->{hi['models']}"
        scale = math.log(hi["models"] / lo["models"])
        for name in ("ls", "audit", "audit_revisions", "audit_past", "pipeline_check"):
            for key in ("median_s", "cpu_s"):
                if lo[name][key] > 0 and hi[name][key] > 0:
                    k = math.log(hi[name][key] / lo[name][key]) / scale
                    exponents.setdefault(name, {}).setdefault(key, {})[span] = round(k, 2)
            for key in ("ratio_to_ls", "cpu_ratio_to_ls"):
                if hi[name][key] > lo[name][key] * 1.1:
                    flags.append(f"{name}: {key} rises {lo[name][key]} -> {hi[name][key]} ({span})")
    return {"exponent": exponents, "rising_ratio_flags": flags}


def main(argv: list[str] | None = None) -> None:
    """Time the audit beside `stemma ls` at each size and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="10000", help="one size or a comma-separated list")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="remove .stemma/ before each audit")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stemma-bench-audit"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    counts = sorted(int(x) for x in str(args.models).split(","))
    sizes = [one_size(args.work, n, args.repeat, args.cold) for n in counts]
    report = sizes[0] if len(sizes) == 1 else {"sizes": sizes, **growth(sizes)}
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
