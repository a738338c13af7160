"""What `verify`, `ls`, `query` and `repro` call verified, built or up to date is true:
every file a manifest records is checked, an interrupted commit is never read as a build,
and a build that DVC did not record is not up to date."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import new_registry
from stemma.migration.build import build_dataset, build_model
from stemma.registry import Registry

SPECS = {
    "datasets/d04/spec.yaml": "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n",
    "datasets/d59/spec.yaml": "source: sklearn:digits\n"
    "select: {classes: [5, 6, 7, 8, 9], relabel: contiguous}\n",
    "models/mb/spec.yaml": "architecture: {family: mlp, hidden: [16]}\ndata: {train: d04}\n"
    "training: {epochs: 1, lr: 1.0e-2, seed: 0}\n",
    "models/ma/spec.yaml": "source: {model: mb, relation: adapter}\ndata: {train: d59}\n"
    "strategy: {mode: lora, lora: {r: 2, alpha: 4, target_modules: [body.0]}}\n"
    "training: {epochs: 1, lr: 1.0e-2, seed: 0}\n",
}
CONFIG = "models/ma/adapter/adapter_config.json"


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """A base and a LoRA adapter on it, built once (tests that change it copy it)."""
    reg = new_registry(tmp_path_factory.mktemp("trust") / "repo", registry_template, SPECS)
    for name in ("d04", "d59"):
        build_dataset(reg, name)
    for name in ("mb", "ma"):
        build_model(Registry.open(reg.repo_root), name)
    return reg.repo_root


@pytest.fixture
def copy(lora: Path, tmp_path: Path) -> Path:
    """A private copy of the built registry, free to change."""
    shutil.copytree(lora, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


# -- every file a manifest records is checked, the adapter config included -------------------


def _edit(key: str, value: Any) -> Any:
    def tamper(path: Path) -> None:
        doc = json.loads(path.read_text())
        doc[key] = value
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    return tamper


def _replace(text: str) -> Any:
    return lambda path: path.write_text(text)


def _link(target: str) -> Any:
    def tamper(path: Path) -> None:
        path.unlink()
        path.symlink_to(target)

    return tamper


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _reformat(path: Path) -> None:  # the same JSON value, other bytes
    path.write_text(json.dumps(json.loads(path.read_text())))


def _outside_copy(path: Path) -> None:  # the same bytes, linked from outside the repository
    outside = path.parents[4] / "outside.json"
    shutil.copy(path, outside)
    path.unlink()
    path.symlink_to(outside)


TAMPERS = {
    "not-json": _replace("{not json"),
    "empty": _replace(""),
    "r-1e9": _edit("r", 1e9),
    "r-huge-int": _edit("r", 10**9),
    "r-zero": _edit("r", 0),
    "r-string": _edit("r", "2"),
    "alpha-negative": _edit("lora_alpha", -4),
    "peft-type-path": _edit("peft_type", "../../os"),
    "peft-type-other": _edit("peft_type", "PROMPT_TUNING"),
    "targets-not-strings": _edit("target_modules", [1]),
    "dev-zero-link": _link("/dev/zero"),
    "folder": _folder,
    "oversized": _replace("{" + " " * (3 << 20) + "}"),
    "deleted": lambda path: path.unlink(),
    "reformatted": _reformat,
    "linked-outside": _outside_copy,
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_verify_fails_a_tampered_adapter_config(copy: Path, case: str, cli: Any) -> None:
    TAMPERS[case](copy / CONFIG)
    res = cli(["verify", "ma"], copy)
    assert res.code == 1, res.stdout
    assert "ok: ma verified" not in res.stdout
    errors = res.stderr.strip().splitlines()
    assert errors and all(e.startswith("error: ma: adapter: ") for e in errors), res.stderr
    assert CONFIG in errors[0]
    assert "Traceback" not in res.stdout + res.stderr


def test_verify_fails_a_manifest_that_records_no_adapter_config_hash(copy: Path) -> None:
    from stemma.migration.verify import verify_model

    path = copy / "models/ma/manifest.json"
    doc = json.loads(path.read_text())
    del doc["adapter"]["config"]
    path.write_text(json.dumps(doc))
    result = verify_model(Registry.open(copy), "ma")
    assert not result.ok


def test_a_config_that_passes_the_hash_is_still_checked_before_peft(copy: Path) -> None:
    """A config tampered together with its manifest's hashes: peft never sees it; every
    reader (load_model, a child's source, explore) gets one line naming the file and field."""
    from stemma.migration.build import load_model
    from stemma.registry.errors import StemmaError

    _edit("peft_type", "../../os")(copy / CONFIG)
    with pytest.raises(StemmaError) as caught:
        load_model(Registry.open(copy), "ma")
    assert caught.value.message.startswith(f"{CONFIG} at /peft_type: '../../os'")
    _edit("peft_type", "LORA")(copy / CONFIG)
    _edit("r", 10**9)(copy / CONFIG)
    with pytest.raises(StemmaError, match=r"adapter_config.json at /r: must be an integer"):
        load_model(Registry.open(copy), "ma")


def test_verify_of_a_device_in_place_of_the_config_ends(copy: Path) -> None:
    """The adapter config replaced by a link to /dev/zero or a FIFO: refused, never read."""
    (copy / CONFIG).unlink()
    os.mkfifo(copy / CONFIG)
    code = "from stemma.cli.app import main; main(['verify', 'ma', '-C', sys.argv[1]])"
    done = subprocess.run(
        [sys.executable, "-c", "import sys; " + code, str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: ma: adapter: " in done.stderr and "Traceback" not in done.stderr


# -- a build killed between moving its weights and its manifest is never read as built --------


def _torn(repo: Path) -> str:
    """Leave model mb as a build killed mid-switch leaves it: the new weights, metrics and
    curve in place, the new manifest still in the commit folder, the old one in place (the
    state `migration.commit` has after its commit point). The spec is back as the old
    manifest records it, so the old manifest alone reads as a healthy build. Returns the id
    of the committed (new) manifest."""
    from stemma.migration.commit import COMMITTING

    folder = repo / "models/mb"
    old_spec, old_manifest = (folder / "spec.yaml").read_text(), (folder / "manifest.json")
    kept = old_manifest.read_bytes()
    (folder / "spec.yaml").write_text(old_spec.replace("seed: 0", "seed: 1"))
    new = build_model(Registry.open(repo), "mb")
    (folder / COMMITTING).mkdir()
    os.replace(old_manifest, folder / COMMITTING / "manifest.json")
    old_manifest.write_bytes(kept)
    (folder / "spec.yaml").write_text(old_spec)
    return str(new["id"])


def test_ls_and_query_finish_an_interrupted_commit(copy: Path, cli: Any) -> None:
    new_id = _torn(copy)
    res = cli(["ls", "--json"], copy)
    assert res.code == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["mb"]["id"] == new_id  # the committed build, whole
    assert rows["mb"]["status"] == "stale"  # built from the spec with seed 1
    assert rows["ma"]["status"] == "stale"  # its base's weights are not the ones it was built on
    assert not (copy / "models/mb/.stemma-commit").exists()
    res = cli(["query", "SELECT name, id FROM models WHERE name = 'mb'", "-f", "json"], copy)
    assert json.loads(res.stdout) == [{"name": "mb", "id": new_id}]


def test_verify_finishes_an_interrupted_commit(copy: Path) -> None:
    from stemma.migration.verify import verify_model

    new_id = _torn(copy)
    result = verify_model(Registry.open(copy), "mb")
    found = {f.item: f.status for f in result.findings}
    assert found["weights"] == "pass" and found["id"] == "pass"  # never new weights, old manifest
    assert found["spec"] == "fail"  # the committed build was made from another spec
    assert json.loads((copy / "models/mb/manifest.json").read_text())["id"] == new_id
    assert not verify_model(Registry.open(copy), "ma").ok  # its base changed under it


# -- a build DVC did not record is not up to date ------------------------------------------


def _dvc(repo: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_build_dvc_did_not_lock_is_stale_and_repro_records_it(
    registry: Registry, cli: Any
) -> None:
    """The state a `stemma repro` killed after the build switched its outputs in but before
    DVC wrote dvc.lock leaves, made for real: the stage's own command (`stemma build`) run
    without DVC after a spec change."""
    specs = {
        k: v for k, v in SPECS.items() if k in ("datasets/d04/spec.yaml", "models/mb/spec.yaml")
    }
    reg = new_registry(registry.repo_root.parent / "locked", registry.repo_root, specs)
    repo = reg.repo_root
    assert cli(["pipeline"], repo).code == 0
    _dvc(repo, "repro")
    spec = repo / "models/mb/spec.yaml"
    spec.write_text(spec.read_text().replace("seed: 0", "seed: 1"))
    build_model(Registry.open(repo), "mb")  # what `dvc repro` runs, with no lock written after it
    manifest_md5 = json.loads((repo / "models/mb/manifest.json").read_text())["weights"]["md5"]
    assert "changed" in _dvc(repo, "status")

    res = cli(["repro", "--dry"], repo)
    assert res.stdout.splitlines() == ["models/mb/dvc.yaml:model-mb"], res.stdout
    res = cli(["ls", "--json"], repo)
    assert {r["name"]: r["status"] for r in json.loads(res.stdout)}["mb"] == "stale"
    # the index judges the lock case: SQL says what `ls` says
    sql = "SELECT status FROM models WHERE name = 'mb'"
    assert json.loads(cli(["query", sql, "--json"], repo).stdout) == [{"status": "stale"}]

    assert cli(["repro"], repo).code == 0  # DVC runs the stage: it locks and caches the weights
    assert json.loads(cli(["query", sql, "--json"], repo).stdout) == [{"status": "built"}]
    assert "up to date" in _dvc(repo, "status")
    lock = (repo / "models/mb/dvc.lock").read_text()
    assert manifest_md5 in lock
    cached = repo / ".dvc/cache/files/md5" / manifest_md5[:2] / manifest_md5[2:]
    assert cached.is_file()
    assert cli(["repro", "--dry"], repo).stdout.startswith("nothing to reproduce")


# -- one rule for exploration candidates: never the model itself nor its descendants ---------


def test_repro_takes_exploration_candidates_by_the_pipeline_rule(
    registry: Registry, cli: Any
) -> None:
    from stemma.registry.pipeline import repro
    from stemma.registry.pipeline.render import candidates

    specs = {
        "datasets/d04/spec.yaml": SPECS["datasets/d04/spec.yaml"],
        "models/base/spec.yaml": SPECS["models/mb/spec.yaml"],
        "models/explorer/spec.yaml": "source: {model: auto, candidates: '*'}\ndata: {train: d04}\n",
        "models/kid/spec.yaml": "source: {model: explorer}\ndata: {train: d04}\n",
    }
    reg = new_registry(registry.repo_root.parent / "auto", registry.repo_root, specs)
    assert candidates(reg, "explorer", reg.model_spec("explorer")) == ["base"]
    plan = repro.plan(reg)
    assert plan.models == ["base", "explorer", "kid"]  # the explorer before what derives from it
    assert plan.targets[-3:] == [
        "models/explorer/dvc.yaml:explore-explorer",
        "models/explorer/dvc.yaml:model-explorer",
        "models/kid/dvc.yaml:model-kid",
    ]
    assert repro.plan(reg, ["kid"]).models == ["base", "explorer", "kid"]
    assert repro.plan(reg, ["explorer"], downstream=True).models == ["explorer", "kid"]


def test_verify_and_ls_agree_on_a_model_whose_source_has_no_manifest(copy: Path, cli: Any) -> None:
    (copy / "models/mb/manifest.json").unlink()
    rows = {r["name"]: r["status"] for r in json.loads(cli(["ls", "--json"], copy).stdout)}
    res = cli(["verify", "ma"], copy)
    assert (rows["ma"] == "built") == (res.code == 0), (rows, res.stdout)
