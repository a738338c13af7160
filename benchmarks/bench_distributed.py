"""One process against two: the same small build with `training.distributed` on CPU (gloo).

Builds an MLP on the bundled digits twice per repeat, as `dvc repro` would (`stemma build
model` in a fresh process), once with one process and once with `distributed: {processes: 2,
backend: gloo}` (stemma starts itself under torchrun), alternating, and prints one JSON
document: wall seconds of each command, the build's own `run.duration_s`, accuracy and loss,
and the ratio two/one. On a 2-core machine the two ranks share the cores with torchrun's
agent, so this measures the overhead of the distributed path more than its speed-up.

    python benchmarks/bench_distributed.py [--repeat 3] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = "source: sklearn:digits\n"
SPEC = (
    "architecture: {{family: mlp, hidden: [256, 128]}}\n"
    "data: {{train: digits}}\n"
    "training: {{epochs: {epochs}, batch_size: 64, lr: 1.0e-3, seed: 0{extra}}}\n"
)


def _build(repo: Path, name: str) -> dict[str, float]:
    stemma = str(Path(sys.executable).parent / "stemma")
    begin = time.perf_counter()
    args = [stemma, "build", "model", name, "-q"]
    subprocess.run(args, cwd=repo, check=True, capture_output=True)
    wall = time.perf_counter() - begin
    doc = json.loads((repo / "models" / name / "manifest.json").read_text())
    return {
        "wall_s": round(wall, 3),
        "duration_s": doc["run"]["duration_s"],
        "accuracy": doc["metrics"]["accuracy"],
        "loss": doc["metrics"]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    from stemma.registry import Registry

    with tempfile.TemporaryDirectory(prefix="stemma-dist-") as tmp:
        repo = Path(tmp)
        reg = Registry.init(repo)
        (reg.root / "datasets" / "digits").mkdir(parents=True)
        (reg.root / "datasets" / "digits" / "spec.yaml").write_text(DATA)
        dist = ", distributed: {processes: 2, backend: gloo}"
        for name, extra in (("one", ""), ("two", dist)):
            (reg.root / "models" / name).mkdir(parents=True)
            spec = SPEC.format(epochs=args.epochs, extra=extra)
            (reg.root / "models" / name / "spec.yaml").write_text(spec)
        stemma = str(Path(sys.executable).parent / "stemma")
        subprocess.run([stemma, "build", "dataset", "digits"], cwd=repo, check=True)
        runs: dict[str, list[dict[str, float]]] = {"one": [], "two": []}
        for i in range(args.repeat):
            for name in ("one", "two") if i % 2 == 0 else ("two", "one"):
                for stale in reg.root.glob(f"models/{name}/manifest.json"):
                    stale.unlink()  # a rebuild from nothing, not an identical-id no-op
                runs[name].append(_build(repo, name))
        med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
        print(
            json.dumps(
                {
                    "epochs": args.epochs,
                    "runs": runs,
                    "median_wall_s": med,
                    "two_over_one_wall": round(med["two"] / med["one"], 3),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
