"""Synthetic registries for benchmarks: realistic specs and schema-valid manifests, no weights.

    from synth import generate            # with benchmarks/ on sys.path
    generate(Path("/tmp/reg"), 10_000, shape="mixed", seed=0)

or from a shell: `python benchmarks/synth.py /tmp/reg 10000 --shape mixed`.

Shapes of the lineage:
- "mixed": families of `family_size` models; each family has one root trained from scratch and
  every other model derives either from the model just before it (deep chains) or from a random
  earlier model of its family (wide fan-outs).
- "chain": one root and a single chain, each model derived from the previous one.
- "fanout": one root; each model derives from a uniformly random earlier model (a random
  recursive tree: wide and shallow, every model a descendant of the root).

Manifests carry consistent ids: `spec_digest` is the digest of the spec written beside it,
`source.id` is the parent's manifest id and dataset ids are those of the dataset manifests,
so `stemma validate` and staleness checks see a registry that is entirely built and fresh.
Files are written directly (not through `Registry.write_model_manifest`, which validates each
document with jsonschema and would make a 10,000-model registry take a minute to generate).
With `locks`, each built model's folder also gets the dvc.lock `dvc repro` would leave (the
layout DVC writes, ~1.5 KB: the stage's deps, params and outs, the weights' md5 the one the
manifest records), as in a registry that DVC built.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

from stemma.registry.store.files import canonical_json, content_id, digest

SHAPES = ("mixed", "chain", "fanout")
N_DATASETS = 8
CLASSES = list(range(10))
RELATIONS = ("finetune", "finetune", "finetune", "adapter", "distill", "quantized")
OPTIMIZERS = ("adamw", "adam", "sgd")
HIDDEN = ([128, 64], [256, 128], [64], [128, 128, 64])


def timing_env() -> dict[str, str]:
    """The environment for timed child processes: Python may write bytecode caches, as an
    installed package has them (a shell with PYTHONDONTWRITEBYTECODE set would otherwise
    compile every stemma module from source in every timed process)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def model_name(i: int) -> str:
    """Name of the i-th synthetic model."""
    return f"m{i:06d}"


def dataset_name(j: int, split: str) -> str:
    """Name of a synthetic dataset (`split` is "train" or "test")."""
    return f"ds{j:02d}-{split}"


def parents(n: int, shape: str, rng: random.Random, family_size: int) -> list[int | None]:
    """For each model, the index of its source model (None for a root)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, not {shape!r}")
    out: list[int | None] = []
    for i in range(n):
        if i == 0:
            out.append(None)
        elif shape == "chain":
            out.append(i - 1)
        elif shape == "fanout":
            out.append(rng.randrange(i))
        else:
            start = (i // family_size) * family_size
            if i == start:
                out.append(None)
            elif rng.random() < 0.3:
                out.append(i - 1)
            else:
                out.append(rng.randrange(start, i))
    return out


def _yaml_list(items: list[Any]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"


def dataset_files(j: int, split: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(spec.yaml text, spec dict, manifest without id) of one synthetic dataset."""
    classes = CLASSES if j % 2 == 0 else CLASSES[:5] if j % 4 == 1 else CLASSES[5:]
    spec: dict[str, Any] = {
        "description": f"Synthetic digits variant {j}, {split} split.",
        "source": "sklearn:digits",
        "select": {"classes": classes},
        "transforms": [{"rotate": float(j * 5)}],
        "split": {"eval": 0.25, "seed": j},
        "tags": ["synthetic", split],
    }
    text = (
        f"description: {spec['description']}\n"
        "source: sklearn:digits\n"
        f"select: {{classes: {_yaml_list(classes)}}}\n"
        f"transforms: [{{rotate: {float(j * 5)!r}}}]\n"
        f"split: {{eval: 0.25, seed: {j}}}\n"
        f"tags: [synthetic, {split}]\n"
    )
    samples = 1347 if split == "train" else 450
    per = samples // len(classes)
    manifest: dict[str, Any] = {
        "kind": "dataset",
        "schema_version": 1,
        "name": dataset_name(j, split),
        "spec": spec,
        "spec_digest": digest(spec),
        "data": {
            "path": "data.npz",
            "md5": f"{j:032x}",
            "sha256": "sha256:" + f"{j:064x}",
            "bytes": samples * 260,
            "format": "npz",
        },
        "shape": [samples, 8, 8],
        "dtype": "float32",
        "classes": classes,
        "splits": {split: {"samples": samples, "class_counts": {str(c): per for c in classes}}},
        "stats": {
            "mean": [0.1] * 4,
            "std": [0.3] * 4,
            "cov_trace": 12.5,
            "cov_top_eigenvalues": [3.1, 2.2, 1.4],
        },
        "run": {"started": "2026-01-01T00:00:00Z", "duration_s": 0.2, "stemma": "0.1.0"},
    }
    return text, spec, manifest


def model_files(
    i: int,
    parent: int | None,
    rng: random.Random,
    hidden: list[int],
    relation: str,
    data: int,
) -> tuple[str, dict[str, Any]]:
    """(spec.yaml text, spec dict) of one synthetic model."""
    name = model_name(i)
    train, test = dataset_name(data, "train"), dataset_name(data, "test")
    epochs, lr, opt = (
        rng.choice((5, 10, 20)),
        rng.choice((0.001, 0.0005, 0.01)),
        rng.choice(OPTIMIZERS),
    )
    gate = rng.choice((0.75, 0.8))
    spec: dict[str, Any] = {"description": f"Synthetic model {name}."}
    lines = [f"description: Synthetic model {name}."]
    if parent is not None:
        spec["source"] = {"model": model_name(parent), "relation": relation}
        lines.append(f"source: {{model: {model_name(parent)}, relation: {relation}}}")
    else:
        spec["architecture"] = {"family": "mlp", "hidden": hidden}
        lines.append(f"architecture: {{family: mlp, hidden: {_yaml_list(hidden)}}}")
    spec["data"] = {"train": train, "eval": test}
    lines.append(f"data: {{train: {train}, eval: {test}}}")
    # a quantized model is its parent's weights quantized: no training, a quantize block
    quantized = parent is not None and relation == "quantized"
    if quantized:
        spec["quantize"] = {"method": "int8_weight_only"}
        lines.append("quantize: {method: int8_weight_only}")
    if parent is not None and not quantized:
        spec["strategy"] = {
            "mapping": "by-name",
            "freeze": ["body.0.*"],
            "reinit": ["head.*"],
            "features": "cached",
        }
        lines.append(
            'strategy: {mapping: by-name, freeze: ["body.0.*"], reinit: ["head.*"],'
            " features: cached}"
        )
    if not quantized:
        spec["training"] = {
            "epochs": epochs,
            "batch_size": 64,
            "optimizer": opt,
            "lr": lr,
            "seed": i % 7,
            "device": "auto",
        }
        lines.append(
            f"training: {{epochs: {epochs}, batch_size: 64, optimizer: {opt}, lr: {lr!r},"
            f" seed: {i % 7}, device: auto}}"
        )
    spec["gates"] = {"accuracy": f">= {gate}"}
    lines.append(f'gates: {{accuracy: ">= {gate}"}}')
    if parent is not None and not quantized:
        other = dataset_name((data + 1) % N_DATASETS, "test")
        spec["checks"] = {"forgetting": {"data": other, "max_drop": 0.1}}
        lines.append(f"checks: {{forgetting: {{data: {other}, max_drop: 0.1}}}}")
    tags = ["synthetic", f"family{i % 5}"]
    spec["tags"] = tags
    lines.append(f"tags: [{', '.join(tags)}]")
    return "\n".join(lines) + "\n", spec


def tensors(hidden: list[int], parent: bool, rng: random.Random) -> list[dict[str, Any]]:
    """Per-tensor rows of an MLP on 8x8 inputs with 10 outputs."""
    dims = [64, *hidden]
    rows: list[dict[str, Any]] = []
    for k in range(len(hidden)):
        for part, shape in (("weight", [dims[k + 1], dims[k]]), ("bias", [dims[k + 1]])):
            rows.append(
                {
                    "name": f"body.{k}.{part}",
                    "shape": shape,
                    "dtype": "float32",
                    "origin": "transferred" if parent else "new",
                    "frozen": parent and k == 0,
                    "source_name": f"body.{k}.{part}" if parent else None,
                }
            )
    for part, shape in (("weight", [10, dims[-1]]), ("bias", [10])):
        rows.append(
            {
                "name": f"head.{part}",
                "shape": shape,
                "dtype": "float32",
                "origin": "reinitialized" if parent else "new",
                "frozen": False,
                "source_name": None,
            }
        )
    return rows


def model_manifest(
    i: int,
    spec: dict[str, Any],
    hidden: list[int],
    source: dict[str, Any] | None,
    dataset_ids: dict[str, str],
    rng: random.Random,
) -> dict[str, Any]:
    """A schema-valid model manifest consistent with `spec`, with its id filled in."""
    rows = tensors(hidden, source is not None, rng)
    total = sum(_numel(r["shape"]) for r in rows)
    frozen = sum(_numel(r["shape"]) for r in rows if r["frozen"])
    transferred = sum(_numel(r["shape"]) for r in rows if r["origin"] == "transferred")
    acc = round(rng.uniform(0.8, 0.99), 4)
    gate = float(spec["gates"]["accuracy"].split()[1])
    datasets = {
        "train": {"name": spec["data"]["train"], "id": dataset_ids[spec["data"]["train"]]},
        "eval": {"name": spec["data"]["eval"], "id": dataset_ids[spec["data"]["eval"]]},
    }
    checks: dict[str, Any] = {}
    if "checks" in spec:
        ds = spec["checks"]["forgetting"]["data"]
        datasets["forgetting"] = {"name": ds, "id": dataset_ids[ds]}
        drop = round(rng.uniform(0.0, 0.11), 4)
        checks["forgetting"] = {"passed": drop <= 0.1, "threshold": 0.1, "drop": drop}
    doc: dict[str, Any] = {
        "kind": "model",
        "schema_version": 1,
        "name": model_name(i),
        "spec": spec,
        "spec_digest": digest(spec),
        "source": source,
        "datasets": datasets,
        "weights": {
            "path": "weights.safetensors",
            "md5": f"{i:032x}",
            "sha256": "sha256:" + f"{i:064x}",
            "bytes": total * 4 + 512,
            "format": "safetensors",
        },
        "architecture": {
            "config": {"family": "mlp", "hidden": hidden, "in_features": 64, "classes": 10},
            "tensors": rows,
        },
        "parameters": {"total": total, "trainable": total - frozen, "transferred": transferred},
        "transfer": {
            "mapping": "by-name" if source else None,
            "mode": "finetune" if source else "scratch",
            "unused_source": [],
            "features_cached": source is not None,
        },
        "metrics": {
            "accuracy": acc,
            "loss": round(1.2 * (1 - acc), 4),
            "f1_macro": round(acc - 0.01, 4),
        },
        "per_class": {str(c): round(min(1.0, acc + rng.uniform(-0.05, 0.05)), 4) for c in CLASSES},
        "gates": [
            {
                "metric": "accuracy",
                "op": ">=",
                "threshold": gate,
                "value": acc,
                "passed": acc >= gate,
            }
        ],
        "checks": checks,
        "run": {
            "started": f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            "duration_s": round(rng.uniform(1, 60), 2),
            "device": "cpu",
            "torch": "2.13.0",
            "stemma": "0.1.0",
            "seed": i % 7,
            "deterministic": True,
        },
    }
    doc["id"] = content_id(doc)
    return doc


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def lock_text(name: str, parent: str | None, datasets: list[str], weights_md5: str) -> str:
    """The dvc.lock `dvc repro` leaves for model `name`'s stage (md5s other than the
    weights' are made up)."""

    def out(path: str, size: int) -> str:
        md5 = digest(path)[7:39]
        return f"    - path: {path}\n      hash: md5\n      md5: {md5}\n      size: {size}\n"

    deps = [out(f"datasets/{d}/{f}", 3600) for d in datasets for f in ("data.npz", "manifest.json")]
    deps.append(out(f"models/{name}/spec.yaml", 450))
    if parent is not None:
        deps += [
            out(f"models/{parent}/{f}", 6000) for f in ("manifest.json", "weights.safetensors")
        ]
    outs = [
        out(f"models/{name}/manifest.json", 6000),
        out(f"models/{name}/metrics.json", 60),
        f"    - path: models/{name}/weights.safetensors\n      hash: md5\n"
        f"      md5: {weights_md5}\n      size: 69416\n",
    ]
    return (
        f"schema: '2.0'\nstages:\n  model-{name}:\n    cmd: stemma build model {name}\n"
        "    deps:\n" + "".join(sorted(deps)) + "    params:\n      stemma.yaml:\n"
        "        entrypoints: []\n        root: .\n        version: 1\n"
        "    outs:\n" + "".join(outs)
    )


def _write(path: Path, text: str) -> None:
    # Plain writes: the generator fills an empty folder, nothing reads it meanwhile.
    with open(path, "w") as fh:
        fh.write(text)


def generate(
    root: Path,
    n_models: int,
    *,
    shape: str = "mixed",
    seed: int = 0,
    family_size: int = 10_000,
    unbuilt: float = 0.0,
    locks: bool = False,
) -> None:
    """Write stemma.yaml, datasets and `n_models` models (spec + manifest) under `root`.

    `unbuilt` is the share of models (never a root) that get a spec but no manifest; their
    descendants then stay unbuilt too. With `locks`, each built model gets its dvc.lock.
    """
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "stemma.yaml", "version: 1\nroot: .\nentrypoints: []\n")
    _write(root / ".gitignore", "/.stemma/\n")
    dataset_ids: dict[str, str] = {}
    for j in range(N_DATASETS):
        for split in ("train", "test"):
            text, _spec, manifest = dataset_files(j, split)
            manifest["id"] = content_id(manifest)
            folder = root / "datasets" / dataset_name(j, split)
            folder.mkdir(parents=True, exist_ok=True)
            _write(folder / "spec.yaml", text)
            _write(folder / "manifest.json", canonical_json(manifest))
            dataset_ids[dataset_name(j, split)] = manifest["id"]
    links = parents(n_models, shape, rng, family_size)
    hidden_of: list[list[int]] = []
    ids: list[str | None] = []
    models = root / "models"
    models.mkdir(exist_ok=True)
    for i, parent in enumerate(links):
        hidden = HIDDEN[i % len(HIDDEN)] if parent is None else hidden_of[parent]
        hidden_of.append(hidden)
        relation = rng.choice(RELATIONS)
        text, spec = model_files(i, parent, rng, hidden, relation, rng.randrange(N_DATASETS))
        folder = models / model_name(i)
        os.mkdir(folder)
        _write(folder / "spec.yaml", text)
        parent_id = None if parent is None else ids[parent]
        if (parent is not None and parent_id is None) or (
            parent is not None and rng.random() < unbuilt
        ):
            ids.append(None)
            continue
        source = (
            None
            if parent is None
            else {"model": model_name(parent), "relation": relation, "id": parent_id}
        )
        doc = model_manifest(i, spec, hidden, source, dataset_ids, rng)
        _write(folder / "manifest.json", canonical_json(doc))
        ids.append(doc["id"])
        if locks:
            data = sorted({d["name"] for d in doc["datasets"].values()})
            parent_name = None if parent is None else model_name(parent)
            text = lock_text(model_name(i), parent_name, data, doc["weights"]["md5"])
            _write(folder / "dvc.lock", text)


def main(argv: list[str] | None = None) -> None:
    """Command line: python benchmarks/synth.py ROOT N [--shape S] [--seed K]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder to write the registry into")
    parser.add_argument("n", type=int, help="number of models")
    parser.add_argument("--shape", choices=SHAPES, default="mixed", help="lineage shape")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--family-size", type=int, default=10_000, help="models per family")
    parser.add_argument("--unbuilt", type=float, default=0.0, help="share of unbuilt models")
    args = parser.parse_args(argv)
    generate(
        args.root,
        args.n,
        shape=args.shape,
        seed=args.seed,
        family_size=args.family_size,
        unbuilt=args.unbuilt,
    )
    sys.stdout.write(json.dumps({"root": str(args.root), "models": args.n}) + "\n")


if __name__ == "__main__":
    main()
