"""DVC's own cost per stage under three pipeline layouts; prints one JSON object.

    python benchmarks/bench_pipeline_layout.py [--stages 30 100 300] [--layouts root family model]

Each layout holds the same lineage: families of `--family-size` models, each model derived
from a random earlier model of its family, every stage depending on its source's output and
on one shared settings file (as every stemma stage depends on stemma.yaml). The stage's
command is a `cat` of two small files, so the wall time is DVC's own work. Layouts:

- `root`: one dvc.yaml (and one dvc.lock) at the repository root, one stage per model;
- `family`: one dvc.yaml per family, in the family's base folder;
- `model`: one dvc.yaml per model folder (`models/NAME/dvc.yaml`, `wdir` at the root so
  commands and paths read as from the root).

For each size and layout: a first `dvc repro` from the root (every stage runs), then a
re-derive of every model after the shared settings change (every stage runs again), and a
`dvc status` of the built pipeline. `per_stage_s` is wall time over the number of stages: it
stays flat where DVC's cost per stage is constant, and grows with the size where DVC rewrites
a lock file that holds every stage after each one.

With `--rederive-family N`, also a real family in the layout `stemma pipeline` writes: a tiny
base and N-1 models derived from it (chains and fan-outs), built for real. After a change of
the base, `dvc repro` re-derives the family; the same N `stemma build model` commands run
directly give the builds' own work; `rederive_over_builds` is the ratio (target: 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

LAYOUTS = ("root", "family", "model")


def _dvc() -> str:
    return str(Path(sys.executable).with_name("dvc"))


def _sh(args: list[str], cwd: Path) -> float:
    # The stages run `stemma build` and `cat`: the venv's console scripts come first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - start


def lineage(n: int, family_size: int, seed: int = 0) -> list[int | None]:
    """For each model, its source's index (None for a family's base)."""
    rng = random.Random(seed)
    out: list[int | None] = []
    for i in range(n):
        start = (i // family_size) * family_size
        out.append(None if i == start else rng.randrange(start, i))
    return out


def _stage(i: int, parent: int | None) -> dict[str, Any]:
    me = f"models/m{i:04d}"
    deps = [f"{me}/spec.txt", "settings.txt"]
    inputs = f"{me}/spec.txt settings.txt"
    if parent is not None:
        deps.append(f"models/m{parent:04d}/out.txt")
        inputs += f" models/m{parent:04d}/out.txt"
    return {
        "cmd": f"cat {inputs} > {me}/out.txt",
        "deps": deps,
        "outs": [{f"{me}/out.txt": {"persist": True}}],
    }


def make_repo(root: Path, n: int, family_size: int, layout: str) -> None:
    """A git + DVC repository with `n` stages in `layout`."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    _sh(["git", "init", "-q"], root)
    _sh([_dvc(), "init", "-q"], root)
    (root / "settings.txt").write_text("v1\n")
    parents = lineage(n, family_size)
    files: dict[str, dict[str, Any]] = {}
    for i, parent in enumerate(parents):
        folder = root / "models" / f"m{i:04d}"
        folder.mkdir(parents=True)
        (folder / "spec.txt").write_text(f"model {i}\n")
        stage = _stage(i, parent)
        if layout == "root":
            where, depth = "dvc.yaml", 0
        elif layout == "family":
            base = (i // family_size) * family_size
            where, depth = f"models/m{base:04d}/dvc.yaml", 2
        else:
            where, depth = f"models/m{i:04d}/dvc.yaml", 2
        if depth:
            stage = {"wdir": "/".join([".."] * depth), **stage}
        files.setdefault(where, {"stages": {}})["stages"][f"model-m{i:04d}"] = stage
    if "dvc.yaml" not in files:
        files["dvc.yaml"] = {"stages": {}}  # `dvc repro` needs a root dvc.yaml to start from
    for where, doc in files.items():
        (root / where).write_text(yaml.safe_dump(doc, sort_keys=False))


def measure(work: Path, n: int, family_size: int, layout: str) -> dict[str, Any]:
    """First build, re-derive and status of one layout at `n` stages."""
    root = work / f"{layout}-{n}"
    make_repo(root, n, family_size, layout)
    first = _sh([_dvc(), "repro"], root)
    status = _sh([_dvc(), "status"], root)
    (root / "settings.txt").write_text("v2\n")
    rederive = _sh([_dvc(), "repro"], root)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "first_build_s": round(first, 2),
        "first_per_stage_s": round(first / n, 4),
        "rederive_s": round(rederive, 2),
        "rederive_per_stage_s": round(rederive / n, 4),
        "status_s": round(status, 2),
    }


TINY = "training: {epochs: 1, batch_size: 64, optimizer: adam, lr: 1.0e-2, seed: 0}\n"


def rederive_family(work: Path, n: int) -> dict[str, Any]:
    """Re-derive a real family of `n` models with `dvc repro`, against its builds' own work."""
    bin_ = Path(sys.executable).parent
    stemma, dvc = str(bin_ / "stemma"), _dvc()
    root = work / f"family-{n}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    _sh(["git", "init", "-q"], root)
    _sh([dvc, "init", "-q"], root)
    (root / "stemma.yaml").write_text("version: 1\nroot: .\nentrypoints: []\n")
    data = root / "datasets/d04"
    data.mkdir(parents=True)
    (data / "spec.yaml").write_text(
        "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4], limit: 200}\n"
    )
    names = [f"f{i:03d}" for i in range(n)]
    for name, parent in zip(names, lineage(n, n, seed=1), strict=True):
        folder = root / "models" / name
        folder.mkdir(parents=True)
        head = (
            "architecture: {family: mlp, hidden: [16]}\n"
            if parent is None
            else f"source: {{model: {names[parent]}}}\nstrategy: {{reinit: ['head.*']}}\n"
        )
        (folder / "spec.yaml").write_text(head + "data: {train: d04}\n" + TINY)
    base = root / "models" / names[0] / "spec.yaml"
    _sh([stemma, "pipeline"], root)
    first = _sh([dvc, "repro"], root)
    rounds = []
    for old, new in (("1.0e-2", "3.0e-3"), ("3.0e-3", "1.0e-2")):
        base.write_text(base.read_text().replace(f"lr: {old}", f"lr: {new}"))
        rederive = _sh([dvc, "repro"], root)
        builds = sum(_sh([stemma, "build", "model", m], root) for m in names)
        rounds.append((rederive, builds))
    rederive = min(r for r, _ in rounds)
    builds = min(b for _, b in rounds)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "models": n,
        "first_build_s": round(first, 2),
        "rederive_s": round(rederive, 2),
        "builds_s": round(builds, 2),
        "rederive_over_builds": round(rederive / builds, 3),
        "target": 1.3,
    }


def main(argv: list[str] | None = None) -> None:
    """Measure every size and layout and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="*", default=[30, 100, 300])
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--family-size", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stemma-bench-layout"))
    parser.add_argument("--rederive-family", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"family_size": args.family_size, "results": {}}
    if args.rederive_family:
        report["rederive_family"] = rederive_family(args.work, args.rederive_family)
    for n in args.stages:
        for layout in args.layouts:
            report["results"].setdefault(layout, {})[str(n)] = measure(
                args.work, n, args.family_size, layout
            )
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
