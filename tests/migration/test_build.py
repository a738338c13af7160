"""Builds on a real registry: manifests, transfer, reproducibility, bad inputs, register, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from conftest import new_registry, write
from stemma.cli import build as build_cli
from stemma.cli._common import FunnelGroup
from stemma.migration.build import build_dataset, build_model, load_model, register_model
from stemma.migration.weights import load_weights
from stemma.registry import Registry
from stemma.registry.errors import BuildError
from stemma.registry.store.files import file_hashes
from typer.testing import CliRunner

SEEDS = (0, 1, 2)
TRAIN = "{epochs: 2, batch_size: 64, optimizer: adamw, lr: 1.0e-3, seed: %d}"
SPECS = {
    "datasets/d04/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
        split: {eval: 0.25, seed: 0}
    """,
    "datasets/d59/spec.yaml": """
        source: sklearn:digits
        select: {classes: [5, 6, 7, 8, 9], relabel: contiguous}
    """,
    "models/base/spec.yaml": """
        architecture: {family: cnn, channels: [16, 32]}
        data: {train: d04}
        training: {epochs: 10, batch_size: 64, optimizer: adamw, lr: 3.0e-3, seed: 0}
        gates: {accuracy: ">= 0.9", per_class_accuracy: ">= 0.8"}
    """,
    "models/probe/spec.yaml": """
        source: {model: base}
        data: {train: d59}
        strategy: {mode: linear-probe, reinit: ["head.*"]}
        training: {epochs: 3, batch_size: 64, optimizer: adamw, lr: 1.0e-2, seed: 0}
        checks: {forgetting: {data: d04}}
    """,
    **{
        f"models/ft-{s}/spec.yaml": f"""
            source: {{model: base, relation: finetune}}
            data: {{train: d59}}
            strategy: {{mapping: by-name, reinit: ["head.*"]}}
            training: {TRAIN % s}
        """
        for s in SEEDS
    },
    **{
        f"models/scratch-{s}/spec.yaml": f"""
            architecture: {{family: cnn, channels: [16, 32]}}
            data: {{train: d59}}
            training: {TRAIN % s}
        """
        for s in SEEDS
    },
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """A registry with every spec above built once (shared, never modified by tests)."""
    torch.set_num_threads(1)
    reg = new_registry(tmp_path_factory.mktemp("built") / "repo", registry_template, SPECS)
    repo = reg.repo_root
    for name in ("d04", "d59"):
        build_dataset(reg, name)
    for name in ("base", "probe", *(f"{k}-{s}" for k in ("ft", "scratch") for s in SEEDS)):
        build_model(Registry.open(repo), name)
    return repo


@pytest.fixture
def copy(built: Path, tmp_path: Path) -> Registry:
    """A private copy of the built registry, free to change."""
    shutil.copytree(built, tmp_path / "repo", symlinks=True)
    return Registry.open(tmp_path / "repo")


def manifest(repo: Path, name: str) -> dict[str, Any]:
    found = Registry.open(repo).model_manifest(name)  # validates against the schema
    assert found is not None
    assert found.id == found.computed_id
    return dict(found.raw)


# -- manifests --------------------------------------------------------------------------------


def test_dataset_manifest(built: Path) -> None:
    found = Registry.open(built).dataset_manifest("d59")
    assert found is not None and found.id == found.computed_id
    doc = found.raw
    assert doc["shape"] == [1, 8, 8] and doc["classes"] == [0, 1, 2, 3, 4]
    assert doc["dtype"] == "float32" and doc["spec"]["select"]["relabel"] == "contiguous"
    train, held = doc["splits"]["train"], doc["splits"]["eval"]
    assert train["samples"] + held["samples"] == 896  # digits has 896 fives to nines
    assert sum(held["class_counts"].values()) == held["samples"]
    hashes = file_hashes(built / "datasets" / "d59" / "data.npz")
    assert doc["data"] == {**hashes, "path": "data.npz", "format": "npz"}
    assert len(doc["stats"]["mean"]) == 64 and len(doc["stats"]["cov_top_eigenvalues"]) == 10


def test_base_model_outputs(built: Path) -> None:
    doc = manifest(built, "base")
    folder = built / "models" / "base"
    assert doc["source"] is None and doc["transfer"]["mapping"] is None
    assert {t["origin"] for t in doc["architecture"]["tensors"]} == {"new"}
    assert doc["architecture"]["config"] == {
        "family": "cnn",
        "in_shape": [1, 8, 8],
        "num_classes": 5,
        "channels": [16, 32],
    }
    assert doc["weights"] == {
        **file_hashes(folder / "weights.safetensors"),
        "path": "weights.safetensors",
        "format": "safetensors",
    }
    assert json.loads((folder / "metrics.json").read_text()) == doc["metrics"]
    curve = json.loads((folder / "curve.json").read_text())
    assert [row["epoch"] for row in curve] == list(range(1, 11))
    assert curve[-1]["eval_accuracy"] == pytest.approx(doc["metrics"]["accuracy"], abs=1e-6)
    assert doc["metrics"]["accuracy"] > 0.9
    assert [(g["metric"], g["passed"]) for g in doc["gates"]] == [
        ("accuracy", True),
        ("per_class_accuracy", True),
    ]
    assert doc["gates"][1]["value"] == min(doc["per_class"].values())
    assert doc["run"]["device"] == "cpu" and doc["run"]["deterministic"] is True
    assert doc["parameters"]["total"] == doc["parameters"]["trainable"] > 0
    reloaded = load_model(Registry.open(built), "base")
    assert all(
        torch.equal(v, load_weights(folder / "weights.safetensors")[k])
        for k, v in reloaded.state_dict().items()
    )


def test_finetune_manifest_reports_the_transfer(built: Path) -> None:
    doc, base = manifest(built, "ft-0"), manifest(built, "base")
    assert doc["source"] == {"model": "base", "relation": "finetune", "id": base["id"]}
    d59 = Registry.open(built).dataset_manifest("d59")
    assert d59 is not None
    assert doc["datasets"] == {
        "train": {"name": "d59", "id": d59.id},
        "eval": {"name": "d59", "id": d59.id},
    }
    origins = {t["name"]: t["origin"] for t in doc["architecture"]["tensors"]}
    assert origins["body.0.weight"] == origins["body.3.bias"] == "transferred"
    assert origins["head.weight"] == origins["head.bias"] == "reinitialized"
    assert doc["transfer"]["unused_source"] == ["head.bias", "head.weight"]
    assert doc["transfer"]["mapping"] == "by-name" and not doc["transfer"]["features_cached"]
    head = sum(
        t["shape"][0] * (t["shape"][1] if len(t["shape"]) > 1 else 1)
        for t in doc["architecture"]["tensors"]
        if t["name"].startswith("head.")
    )
    assert doc["parameters"]["transferred"] == doc["parameters"]["total"] - head
    # inherited from the source, with the target's classes and shape
    assert doc["architecture"]["config"]["channels"] == [16, 32]


def test_linear_probe_caches_features_and_trains_only_the_head(built: Path) -> None:
    doc = manifest(built, "probe")
    assert doc["transfer"]["mode"] == "linear-probe" and doc["transfer"]["features_cached"]
    frozen = {t["name"] for t in doc["architecture"]["tensors"] if t["frozen"]}
    assert frozen == {t["name"] for t in doc["architecture"]["tensors"]} - {
        "head.weight",
        "head.bias",
    }
    assert doc["parameters"]["trainable"] == 512 * 5 + 5
    d04 = Registry.open(built).dataset_manifest("d04")
    assert d04 is not None and doc["datasets"]["forgetting"] == {"name": "d04", "id": d04.id}
    base = load_weights(built / "models" / "base" / "weights.safetensors")
    probe = load_weights(built / "models" / "probe" / "weights.safetensors")
    assert torch.equal(base["body.0.weight"], probe["body.0.weight"])  # frozen: unchanged


def test_finetuning_beats_training_from_scratch_on_the_same_budget(built: Path) -> None:
    margins = [
        manifest(built, f"ft-{s}")["metrics"]["accuracy"]
        - manifest(built, f"scratch-{s}")["metrics"]["accuracy"]
        for s in SEEDS
    ]
    assert min(margins) > 0.03, margins
    assert sum(margins) / len(margins) > 0.05, margins


def test_auto_source_uses_the_exploration_selection(copy: Registry) -> None:
    write(
        copy.model_dir("picked") / "spec.yaml",
        """
        source: {model: auto, candidates: "b*"}
        data: {train: d59}
        strategy: {mode: linear-probe, reinit: ["head.*"]}
        training: {epochs: 1}
    """,
    )
    with pytest.raises(BuildError, match=r"at /source/model: source is auto but .*exploration"):
        build_model(Registry.open(copy.repo_root), "picked")
    ranking = {"selected": "base", "ranking": [{"model": "base", "score": 1.5}]}
    (copy.model_dir("picked") / "exploration.json").write_text(json.dumps(ranking))
    doc = build_model(Registry.open(copy.repo_root), "picked")
    assert doc["source"]["model"] == "base" and doc["exploration"] == ranking


# -- reproducibility and atomicity ------------------------------------------------------------


def test_rebuild_gives_identical_weights_and_id(copy: Registry) -> None:
    folder = copy.model_dir("ft-1")
    before = (folder / "weights.safetensors").read_bytes()
    old = manifest(copy.repo_root, "ft-1")
    new = build_model(copy, "ft-1")
    assert (folder / "weights.safetensors").read_bytes() == before
    assert new["id"] == old["id"] and new["run"]["started"] >= old["run"]["started"]


def test_interrupted_build_leaves_previous_outputs(copy: Registry) -> None:
    folder = copy.model_dir("ft-1")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    write(folder / "spec.yaml", (folder / "spec.yaml").read_text().replace("seed: 1", "seed: 7"))

    def interrupt(epoch: int, total: int, info: Any) -> None:
        if epoch == total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_model(Registry.open(copy.repo_root), "ft-1", progress=interrupt)
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "spec.yaml"}
    assert after == {k: v for k, v in before.items() if k != "spec.yaml"}


# -- bad inputs -------------------------------------------------------------------------------


BAD = {
    "missing-source": (
        """
        source: {model: ghost}
        data: {train: d59}
        """,
        "models/missing-source/spec.yaml at /source/model: source model 'ghost' does not"
        " exist [dangling-source]",
    ),
    "exact-mismatch": (
        """
        source: {model: base}
        architecture: {family: cnn, channels: [16, 24]}
        data: {train: d59}
        strategy: {mapping: exact}
        """,
        "models/exact-mismatch/spec.yaml at /strategy/mapping: mapping exact: shape mismatch"
        " for body.3.weight: target [24, 16, 3, 3], source 'base' [32, 16, 3, 3]",
    ),
    "freeze-nothing": (
        """
        source: {model: base}
        data: {train: d59}
        strategy: {freeze: ["body.*", "encoder.*"]}
        """,
        "models/freeze-nothing/spec.yaml at /strategy/freeze/1: pattern 'encoder.*' matches"
        " no tensor",
    ),
    "bad-optimizer": (
        """
        architecture: {family: mlp}
        data: {train: d59}
        training: {optimizer: lbfgs}
        """,
        "models/bad-optimizer/spec.yaml at /training/optimizer: unknown optimizer 'lbfgs'",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_model_specs_fail_with_one_clear_line(copy: Registry, name: str) -> None:
    text, expected = BAD[name]
    write(copy.model_dir(name) / "spec.yaml", text)
    with pytest.raises(BuildError) as err:
        build_model(Registry.open(copy.repo_root), name)
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)
    assert [p.name for p in copy.model_dir(name).iterdir()] == ["spec.yaml"]


def test_absent_class_fails_the_dataset_build(copy: Registry) -> None:
    write(
        copy.dataset_dir("bad") / "spec.yaml",
        "source: sklearn:digits\nselect: {classes: [3, 12]}\n",
    )
    with pytest.raises(
        BuildError,
        match=r"^datasets/bad/spec.yaml at /select/classes/1: class"
        r" 12 is absent from sklearn:digits",
    ):
        build_dataset(Registry.open(copy.repo_root), "bad")
    assert [p.name for p in copy.dataset_dir("bad").iterdir()] == ["spec.yaml"]


def test_unbuilt_dataset_is_named(copy: Registry) -> None:
    write(copy.dataset_dir("later") / "spec.yaml", "source: sklearn:digits\n")
    write(
        copy.model_dir("early") / "spec.yaml",
        "architecture: {family: mlp}\ndata: {train: d59, eval: later}\n",
    )
    with pytest.raises(
        BuildError,
        match=r"^models/early/spec.yaml at /data/eval: dataset"
        r" 'later' has not been built",
    ):
        build_model(Registry.open(copy.repo_root), "early")


# -- register ---------------------------------------------------------------------------------


def test_register_a_pt_state_dict(copy: Registry, tmp_path: Path) -> None:
    state = load_weights(copy.model_dir("base") / "weights.safetensors")
    torch.save(state, tmp_path / "outside.pt")
    doc = register_model(copy, "imported", tmp_path / "outside.pt", eval_dataset="d04")
    base = manifest(copy.repo_root, "base")
    assert doc["architecture"]["config"] == base["architecture"]["config"]  # inferred
    assert doc["metrics"] == base["metrics"]
    assert {t["origin"] for t in doc["architecture"]["tensors"]} == {"new"}
    assert doc["weights"]["sha256"] == base["weights"]["sha256"]  # same tensors, same bytes
    assert manifest(copy.repo_root, "imported")["id"] == doc["id"]


def test_register_refuses_what_it_cannot_check(copy: Registry, tmp_path: Path) -> None:
    weights = copy.model_dir("base") / "weights.safetensors"
    with pytest.raises(BuildError, match="in-shape"):
        register_model(copy, "nosize", weights)
    with pytest.raises(BuildError, match="declared by a spec"):
        register_model(copy, "base", weights, in_shape=[1, 8, 8])
    with pytest.raises(BuildError, match=r"mapping exact: shape mismatch for body\.0\.weight"):
        register_model(
            copy, "wrong", weights, {"family": "cnn", "channels": [8, 32]}, in_shape=[1, 8, 8]
        )
    doc = register_model(copy, "sized", weights, in_shape=[1, 8, 8])
    assert doc["metrics"] == {} and doc["datasets"] == {}


# -- CLI --------------------------------------------------------------------------------------


def cli_app() -> typer.Typer:
    app = typer.Typer(cls=FunnelGroup)
    app.add_typer(build_cli.app, name="build")
    app.command("register")(build_cli.register)
    return app


def test_cli_builds_and_reports_errors_in_one_line(copy: Registry, tmp_path: Path) -> None:
    runner, app, repo = CliRunner(), cli_app(), str(copy.repo_root)
    res = runner.invoke(app, ["build", "dataset", "d04", "-C", repo])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("built dataset d04: 676 train / 225 eval samples of shape 1x8x8")
    res = runner.invoke(app, ["build", "model", "probe", "-C", repo])
    assert res.exit_code == 0 and res.stdout.startswith("built model probe: accuracy ")
    write(
        copy.model_dir("bad") / "spec.yaml",
        "architecture: {family: mlp}\ndata: {train: d59}\ntraining: {optimizer: lbfgs}\n",
    )
    res = runner.invoke(app, ["build", "model", "bad", "-q", "-C", repo])
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "error: models/bad/spec.yaml at /training/optimizer: unknown optimizer 'lbfgs';"
        " use one of sgd, adam, adamw"
    ]
    torch.save(load_weights(copy.model_dir("base") / "weights.safetensors"), tmp_path / "w.pt")
    res = runner.invoke(
        app,
        [
            "register",
            "ext",
            "--weights",
            str(tmp_path / "w.pt"),
            "--family",
            "cnn",
            "--channels",
            "16,32",
            "--eval",
            "d04",
            "-C",
            repo,
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("registered model ext: ") and "(cnn), accuracy" in res.stdout
