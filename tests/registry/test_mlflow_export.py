"""`stemma export mlflow`: every model version into a real MLflow SQLite store, read back with
`mlflow.MlflowClient`: metrics, parameters, lineage tags, stages as aliases, idempotent."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import git, write
from factories import dataset_manifest, model_manifest
from stemma.registry import Registry
from stemma.registry.errors import StemmaError
from stemma.registry.publish.mlflow_export import export, flat_params

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated MLflow database (creating its tables takes seconds), copied per test."""
    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(empty_store: Path, tmp_path: Path) -> str:
    path = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, path)
    return f"sqlite:///{path}"


@pytest.fixture
def history(populated: Registry, cli: Any) -> dict[str, Any]:
    """base, ft (from base), scratch; then base retrained and ft rebuilt; base@v1.0.0 and
    base#prod on the first base, ft#staging on the second ft."""
    reg = populated
    for ds in ("digits-0to4", "digits-5to9"):
        dataset_manifest(reg, ds)
    first = {n: model_manifest(Registry.open(reg.root), n) for n in ("base", "ft", "scratch")}
    git(reg.repo_root, "add", "-A")
    git(reg.repo_root, "commit", "-q", "-m", "three models")
    assert cli(["tag", "base", "v1.0.0"], reg.root).code == 0
    assert cli(["promote", "base", "prod"], reg.root).code == 0
    spec = reg.root / "models/base/spec.yaml"
    write(spec, spec.read_text().replace("epochs: 2", "epochs: 3"))
    second = {"base": model_manifest(Registry.open(reg.root), "base", accuracy=0.95)}
    second["ft"] = model_manifest(Registry.open(reg.root), "ft", accuracy=0.8)
    git(reg.repo_root, "add", "-A")
    git(reg.repo_root, "commit", "-q", "-m", "retrain base and ft")
    assert cli(["promote", "ft", "staging"], reg.root).code == 0
    return {"reg": Registry.open(reg.root), "first": first, "second": second}


def _state(client: Any) -> list[Any]:
    """Everything an export writes, with the store's own update times."""
    out: list[Any] = []
    for rm in client.search_registered_models():
        out.append((rm.name, rm.last_updated_timestamp, sorted(rm.aliases.items())))
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            out.append((mv.version, mv.last_updated_timestamp, sorted(mv.tags.items())))
    exp = client.get_experiment_by_name("stemma")
    out.append(sorted(r.info.run_id for r in client.search_runs([exp.experiment_id])))
    return out


def test_every_version_with_metrics_params_lineage_and_aliases(
    history: dict[str, Any], store: str, cli: Any
) -> None:
    reg = history["reg"]
    res = cli(["export", "mlflow", "--tracking-uri", store, "--json"], reg.root)
    assert res.code == 0, res.stderr
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    by_id: dict[str, Any] = {}
    for name in ("base", "ft", "scratch"):
        for mv in client.search_model_versions(f"name = '{name}'"):
            by_id[mv.tags["stemma.id"]] = mv
    builds = [*history["first"].values(), *history["second"].values()]
    assert set(by_id) == {d["id"] for d in builds}
    for doc in builds:
        mv = by_id[doc["id"]]
        run = client.get_run(mv.run_id)
        assert run.data.metrics == doc["metrics"]
        assert run.data.params == flat_params(doc["spec"])
        assert run.info.status == "FINISHED"
        inputs = {d.dataset.name for d in run.inputs.dataset_inputs}
        assert inputs == {ref["name"] for ref in doc["datasets"].values()}
        if doc["source"]:
            parent = by_id[doc["source"]["id"]]
            assert mv.tags["stemma.parent"] == "base"
            assert mv.tags["stemma.parent_version"] == str(parent.version)
            assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    # the first ft derives from the first base: version 1 of base, not the retrained 2
    assert by_id[history["first"]["ft"]["id"]].tags["stemma.parent_version"] == "1"
    assert by_id[history["second"]["ft"]["id"]].tags["stemma.parent_version"] == "2"
    assert by_id[history["first"]["ft"]["id"]].run_id != by_id[history["second"]["ft"]["id"]].run_id
    retrained = client.get_run(by_id[history["second"]["base"]["id"]].run_id)
    assert retrained.data.params["training.epochs"] == "3"
    assert retrained.data.params["training.optimizer"] == "adam"
    prod = client.get_model_version_by_alias("base", "prod")
    assert prod.tags["stemma.id"] == history["first"]["base"]["id"]
    assert prod.tags["stemma.version"] == "v1.0.0"
    staging = client.get_model_version_by_alias("ft", "staging")
    assert staging.tags["stemma.id"] == history["second"]["ft"]["id"]
    # idempotent: a second export creates and changes nothing
    before = _state(client)
    again = export(reg, store)
    assert again.created == [] and again.changed == [] and again.unchanged == len(builds)
    assert _state(client) == before
    # a stage moved in stemma moves the alias, and only that
    assert cli(["promote", "base", "prod"], reg.root).code == 0  # now the retrained base
    moved = export(reg, store)
    assert moved.created == [] and moved.changed == ["base#prod -> 2"]
    assert str(client.get_model_version_by_alias("base", "prod").version) == "2"


def test_cli_errors_are_one_line(history: dict[str, Any], cli: Any, tmp_path: Path) -> None:
    reg = history["reg"]
    res = cli(["export", "mlflow"], reg.root)
    assert res.code == 2 and "--tracking-uri" in res.stderr
    garbage = tmp_path / "m.db"
    garbage.write_text("not a database, only text " * 10)
    res = cli(["export", "mlflow", "--tracking-uri", f"sqlite:///{garbage}"], reg.root)
    assert res.code == 1 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"error: MLflow store sqlite:///{garbage}: "), res.stderr
    assert garbage.read_text() == "not a database, only text " * 10
    with pytest.raises(StemmaError):
        export(reg, "nosuchscheme://x")


def test_flat_params() -> None:
    spec = {"training": {"epochs": 2, "optim": {"lr": 0.1}, "aug": ["flip"]}, "strategy": {}}
    assert flat_params(spec) == {
        "training.aug": '["flip"]',
        "training.epochs": "2",
        "training.optim.lr": "0.1",
        "strategy": "{}",
    }
    assert len(flat_params({"training": {"note": "x" * 9000}})["training.note"]) == 6000
