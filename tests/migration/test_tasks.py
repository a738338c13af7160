"""Task types end to end: regression, multi-label, string labels, image folders, transfer to
a regression target, through `stemma pipeline` and a real `dvc repro`; and the refusals of
losses and gates a task does not have, by `validate` and by the build alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import dvc, new_registry, write
from stemma.registry import Registry

TRAIN = "{epochs: %d, batch_size: 32, optimizer: adam, lr: %s, seed: 0}"
SPECS = {
    "datasets/diab/spec.yaml": "source: sklearn:diabetes\n",
    "datasets/tiers/spec.yaml": """
        source: file:data/tiers.csv
        target: tier
        features: [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9]
    """,
    "datasets/tags/spec.yaml": "source: file:data/tags.npz\ntask: multilabel\n",
    "datasets/imgs/spec.yaml": """
        source: imagefolder:data/imgs
        transforms: [{resize: [8, 8]}]
        split: {eval: 0.25, seed: 0}
    """,
    "models/reg/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [32]}}
        data: {{train: diab}}
        training: {TRAIN % (20, "0.1")}
        gates: {{r2: ">= 0.3"}}
    """,
    "models/tier-clf/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [32]}}
        data: {{train: tiers}}
        training: {TRAIN % (20, "0.02")}
        gates: {{accuracy: ">= 0.5"}}
    """,
    "models/reg-ft/spec.yaml": f"""
        source: {{model: tier-clf}}
        data: {{train: diab}}
        strategy: {{mapping: by-name, reinit: ["head.*"]}}
        training: {TRAIN % (20, "0.1")}
        gates: {{r2: ">= 0.2", rmse: "<= 80"}}
        checks: {{forgetting: {{data: tiers, max_drop: 1.0}}}}
    """,
    "models/tagger/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [16]}}
        data: {{train: tags}}
        training: {TRAIN % (30, "0.02")}
        gates: {{f1_micro: ">= 0.6", map: ">= 0.6"}}
    """,
    "models/img-clf/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [8]}}
        data: {{train: imgs}}
        training: {TRAIN % (10, "0.05")}
    """,
}


def _png(path: Path, level: int, seed: int) -> None:
    from PIL import Image

    noise = np.random.default_rng(seed).integers(0, 30, (10, 10))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(level + noise, 0, 255).astype(np.uint8), mode="L").save(path)


def _data_files(repo: Path) -> None:
    """A CSV with string labels (terciles of the diabetes target) and a string column the
    spec leaves out, a 0/1 label matrix, and PNGs in two class folders of 10x10 pixels."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    cut = np.quantile(y, [1 / 3, 2 / 3])
    tier = np.where(y < cut[0], "low", np.where(y < cut[1], "mid", "high"))
    header = ",".join([*(f"f{i}" for i in range(10)), "note", "tier"])
    rows = [
        ",".join([*(f"{v:.6f}" for v in row), "n/a", t]) for row, t in zip(x, tier, strict=True)
    ]
    write(repo / "data/tiers.csv", "\n".join([header, *rows]) + "\n")
    rng = np.random.default_rng(0)
    feats = rng.random((240, 6)).astype(np.float32)
    np.savez(repo / "data/tags.npz", x=feats, y=(feats[:, :3] > 0.5).astype(np.int64))
    for i in range(12):
        _png(repo / f"data/imgs/dark/{i}.png", 20, i)
        _png(repo / f"data/imgs/light/{i}.png", 200, 100 + i)


@pytest.mark.slow
def test_every_task_builds_through_dvc_repro(registry: Registry, cli) -> None:
    reg = new_registry(registry.repo_root.parent / "tasks", registry.repo_root, SPECS)
    repo = reg.repo_root
    _data_files(repo)
    assert cli(["pipeline"], repo).code == 0
    plots = {
        n: s["plots"][0]
        for m in ("reg", "tagger")
        for n, s in yaml.safe_load((repo / f"models/{m}/dvc.yaml").read_text())["stages"].items()
    }
    assert plots["model-reg"]["models/reg/curve.json"]["y"] == "eval_r2"
    assert plots["model-tagger"]["models/tagger/curve.json"]["y"] == "eval_map"
    dvc(repo, "repro")
    reg = Registry.open(repo)
    res = cli(["validate"], repo)
    assert res.code == 0, res.stderr

    def manifest(name: str) -> dict[str, object]:
        found = reg.model_manifest(name)
        assert found is not None
        return dict(found.raw)

    reg_m = manifest("reg")
    assert reg_m["task"] == "regression"
    assert set(reg_m["metrics"]) == {"mse", "mae", "rmse", "r2", "loss"}  # type: ignore[arg-type]
    assert reg_m["gates"][0]["metric"] == "r2" and reg_m["gates"][0]["passed"]  # type: ignore[index]
    assert reg.dataset_manifest("diab").raw["task"] == "regression"  # type: ignore[union-attr]

    clf = manifest("tier-clf")
    assert "task" not in clf  # classification manifests keep their former shape
    assert clf["class_names"] == ["high", "low", "mid"]
    assert reg.dataset_manifest("tiers").raw["class_names"] == ["high", "low", "mid"]  # type: ignore[union-attr]
    shown = cli(["show", "tier-clf"], repo).stdout
    assert (
        "class 0 high" in shown and "classes: high, low, mid" in cli(["show", "tiers"], repo).stdout
    )

    ft = manifest("reg-ft")
    assert ft["task"] == "regression" and all(g["passed"] for g in ft["gates"])  # type: ignore[attr-defined]
    head = {r["name"]: r for r in ft["architecture"]["tensors"] if r["name"].startswith("head.")}  # type: ignore[index]
    assert head["head.weight"]["shape"][0] == 1 and head["head.weight"]["origin"] != "transferred"
    body = [r for r in ft["architecture"]["tensors"] if r["name"].startswith("body.")]  # type: ignore[index]
    assert body and all(r["origin"] == "transferred" for r in body)
    assert ft["checks"]["forgetting"]["method"] == "linear-probe"  # type: ignore[index]

    tagger = manifest("tagger")
    assert tagger["task"] == "multilabel"
    assert set(tagger["metrics"]) == {"f1_micro", "f1_macro", "map", "subset_accuracy", "loss"}  # type: ignore[arg-type]
    assert all(g["passed"] for g in tagger["gates"])  # type: ignore[attr-defined]
    assert set(tagger["per_class"]) == {"0", "1", "2"}  # type: ignore[arg-type]

    imgs = reg.dataset_manifest("imgs").raw  # type: ignore[union-attr]
    assert imgs["class_names"] == ["dark", "light"] and imgs["shape"] == [1, 8, 8]
    assert manifest("img-clf")["metrics"]["accuracy"] == 1.0  # type: ignore[index]
    print(json.dumps({n: manifest(n)["metrics"] for n in ("reg", "tier-clf", "reg-ft", "tagger")}))

    listed = {r["name"]: r for r in json.loads(cli(["ls", "--json"], repo).stdout)}
    assert listed["tiers"]["class_names"] == ["high", "low", "mid"]
    assert listed["diab"]["class_names"] == [] and "dark, light" in cli(["ls"], repo).stdout
    report = cli(["report", "tier-clf"], repo).stdout
    assert "per class: 0 high" in report and "task: classification" in report
    assert "eval r2" in cli(["report", "reg"], repo).stdout

    # exploration ranks sources for a regression target by LogME's regression form
    res = cli(["explore", "diab", "--score", "all", "--candidates", "tier-clf", "--json"], repo)
    assert res.code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["scores"] == ["logme"] and doc["selected"] == "tier-clf"
    assert isinstance(doc["ranking"][0]["scores"]["logme"], float)
    assert sorted(doc["not_applicable"]) == ["hscore", "knn", "leep", "nce"]
    res = cli(["explore", "diab", "--score", "leep"], repo)
    assert res.code == 1 and "'leep' does not apply to the regression dataset" in res.stderr

    # a new image makes the image folder's dataset stage (and only the data stages) stale
    assert "changed" not in dvc(repo, "status")
    _png(repo / "data/imgs/light/new.png", 210, 999)
    status = dvc(repo, "status")
    assert "dataset-imgs" in status and "dataset-diab" not in status


REFUSED = {
    "models/gate/spec.yaml": """
        architecture: {family: mlp, hidden: [8]}
        data: {train: diab}
        gates: {accuracy: ">= 0.5"}
    """,
    "models/lossy/spec.yaml": """
        architecture: {family: mlp, hidden: [8]}
        data: {train: digits}
        training: {loss: mse, epochs: 1}
    """,
}


def test_a_loss_or_gate_of_another_task_is_refused_by_validate(registry: Registry, cli) -> None:
    specs = {
        "datasets/diab/spec.yaml": "source: sklearn:diabetes\n",
        "datasets/digits/spec.yaml": "source: sklearn:digits\n",
        **REFUSED,
    }
    reg = new_registry(registry.repo_root.parent / "bad", registry.repo_root, specs)
    res = cli(["validate"], reg.repo_root)
    assert res.code == 1
    lines = res.stderr.strip().splitlines()
    assert lines == [
        "models/gate/spec.yaml at /gates/accuracy: a regression model has no metric"
        " 'accuracy'; gate one of mse, mae, rmse, r2, loss, per_output_r2 [schema]",
        "models/lossy/spec.yaml at /training/loss: loss 'mse' does not apply to a"
        " classification target; use one of cross_entropy [schema]",
    ]


@pytest.mark.slow
def test_the_build_refuses_what_validate_refuses(registry: Registry, cli) -> None:
    specs = {"datasets/digits/spec.yaml": "source: sklearn:digits\nselect: {limit: 60}\n"}
    specs["models/lossy/spec.yaml"] = REFUSED["models/lossy/spec.yaml"]
    reg = new_registry(registry.repo_root.parent / "bad", registry.repo_root, specs)
    assert cli(["build", "dataset", "digits"], reg.repo_root).code == 0
    before = sorted(p.name for p in reg.model_dir("lossy").iterdir())
    res = cli(["build", "model", "lossy"], reg.repo_root)
    assert res.code == 1
    assert res.stderr.strip() == (
        "error: models/lossy/spec.yaml at /training/loss: loss 'mse' does not apply to a"
        " classification target; use one of cross_entropy [schema]"
    )
    assert sorted(p.name for p in reg.model_dir("lossy").iterdir()) == before


def test_a_string_feature_column_is_one_error_naming_it(registry: Registry, cli) -> None:
    specs = {"datasets/t/spec.yaml": "source: file:t.csv\ntarget: kind\n"}
    reg = new_registry(registry.repo_root.parent / "str", registry.repo_root, specs)
    write(reg.root / "t.csv", "a,colour,kind\n" + "".join(f"{i},red,x{i % 2}\n" for i in range(8)))
    res = cli(["build", "dataset", "t"], reg.repo_root)
    assert res.code == 1
    assert len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("error: datasets/t/spec.yaml at /source: feature column 'colour'")
    assert not (reg.dataset_dir("t") / "data.npz").exists()
    assert not (reg.dataset_dir("t") / "manifest.json").exists()
