"""`stemma repro` against `dvc repro` on a large registry with one changed base; prints JSON.

    python benchmarks/bench_repro.py [--models 10000] [--repeat 1]

The registry: `--models` synthetic models (benchmarks/synth.py) whose outputs are stand-in
files recorded by `dvc commit` (so DVC finds every synthetic stage up to date), plus one
small real family (a dataset and three tiny models: a base, a fine-tune, a probe) that is
really built. Each round changes the base's learning rate, which makes the base and its two
descendants stale, and rebuilds them once with `stemma repro` and once (after changing it
back) with `dvc repro`: the same three builds, so the difference is what each command costs
besides them. The report gives each command's median wall time; `builds_s` is the sum of
the three `stemma build` commands run directly, the work both must do. The setup (about
`dvc commit` of every stage) is kept in --work and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import generate, timing_env

BIN = Path(sys.executable).parent
FAMILY = ("real-base", "real-ft", "real-probe")
LR = ("lr: 1.0e-2", "lr: 3.0e-3")
REAL = {
    "datasets/real-d04/spec.yaml": (
        "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4], limit: 200}\n"
    ),
    "models/real-base/spec.yaml": (
        "architecture: {family: mlp, hidden: [16]}\ndata: {train: real-d04}\n"
        "training: {epochs: 1, batch_size: 64, optimizer: adam, lr: 1.0e-2, seed: 0}\n"
    ),
    "models/real-ft/spec.yaml": (
        "source: {model: real-base}\ndata: {train: real-d04}\nstrategy: {reinit: ['head.*']}\n"
        "training: {epochs: 1, batch_size: 64, optimizer: adam, lr: 1.0e-2, seed: 0}\n"
    ),
    "models/real-probe/spec.yaml": (
        "source: {model: real-ft}\ndata: {train: real-d04}\nstrategy: {mode: linear-probe}\n"
        "training: {epochs: 1, batch_size: 64, optimizer: adam, lr: 1.0e-2, seed: 0}\n"
    ),
}


def _run(args: list[str], cwd: Path, check: bool = True) -> float:
    env = {**timing_env(), "PATH": f"{BIN}:{timing_env().get('PATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{tail}")
    return time.perf_counter() - start


def setup(root: Path, n: int) -> dict[str, float]:
    """The registry: synthetic models recorded by DVC, and the real family built."""
    shutil.rmtree(root, ignore_errors=True)
    generate(root, n, shape="mixed", seed=0, family_size=100)
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    took: dict[str, float] = {"pipeline_s": _run([str(BIN / "stemma"), "pipeline"], root)}
    for folder in sorted((root / "datasets").iterdir()):
        (folder / "data.npz").write_bytes(b"stand-in " + folder.name.encode())
    for folder in sorted((root / "models").iterdir()):
        (folder / "weights.safetensors").write_bytes(b"stand-in " + folder.name.encode())
        (folder / "metrics.json").write_text('{"accuracy": 0.9}\n')
        (folder / "curve.json").write_text('[{"epoch": 1, "eval_accuracy": 0.9}]\n')
    took["dvc_commit_s"] = _run([str(BIN / "dvc"), "commit", "--force", "--quiet"], root)
    for rel, text in REAL.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _run([str(BIN / "stemma"), "pipeline"], root)
    took["first_real_build_s"] = _run([str(BIN / "stemma"), "repro"], root)
    (root / ".ready").write_text("ok\n")
    return took


def _set_lr(root: Path, lr: str) -> None:
    spec = root / "models/real-base/spec.yaml"
    text = spec.read_text()
    for old in LR:
        text = text.replace(old, lr)
    spec.write_text(text)


def main(argv: list[str] | None = None) -> None:
    """Set up (once), then time both commands round by round and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stemma-bench-repro"))
    args = parser.parse_args(argv)
    root = args.work / f"repro-{args.models}"
    report: dict[str, Any] = {"models": args.models, "repeat": args.repeat}
    if not (root / ".ready").exists():
        report["setup"] = {k: round(v, 2) for k, v in setup(root, args.models).items()}
    times: dict[str, list[float]] = {"stemma_repro": [], "dvc_repro": [], "builds": []}
    plan = json.loads(
        subprocess.run(
            [str(BIN / "stemma"), "repro", "--json"], cwd=root, capture_output=True, text=True
        ).stdout
    )
    assert plan["targets"] == [], f"the registry is not up to date: {plan}"
    for _ in range(args.repeat):
        _set_lr(root, LR[1])
        times["stemma_repro"].append(_run([str(BIN / "stemma"), "repro"], root))
        _set_lr(root, LR[0])
        times["dvc_repro"].append(_run([str(BIN / "dvc"), "repro"], root))
        _set_lr(root, LR[1])  # the same builds by hand, then recorded as they stand
        builds = sum(_run([str(BIN / "stemma"), "build", "model", m], root) for m in FAMILY)
        times["builds"].append(builds)
        _set_lr(root, LR[0])
        _run([str(BIN / "stemma"), "repro"], root)
    report["status_s"] = round(_run([str(BIN / "dvc"), "status"], root, check=False), 2)
    for name, values in times.items():
        report[f"{name}_s"] = round(statistics.median(values), 2)
    report["stemma_repro_over_builds"] = round(report["stemma_repro_s"] / report["builds_s"], 2)
    report["dvc_repro_over_builds"] = round(report["dvc_repro_s"] / report["builds_s"], 2)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
