"""`--json` on the commands that change something, and `verify --rebuild`'s progress lines.

One tiny registry (a dataset and a one-epoch MLP) is built once for the module through the
real command line: pipeline, build dataset, build model, git commit, tag, promote, checkout,
register. Each command's stdout must be exactly one JSON document.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import git, new_registry
from typer.testing import CliRunner

SPECS = {
    "datasets/d04/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
        split: {eval: 0.25, seed: 0}
    """,
    "models/base/spec.yaml": """
        architecture: {family: mlp, hidden: [16]}
        data: {train: d04}
        training: {epochs: 1, batch_size: 64, optimizer: adam, lr: 0.01, seed: 0}
    """,
}


def _json(res: Any) -> Any:
    assert res.code == 0, (res.stdout, res.stderr)
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> dict[str, Any]:
    """The registry's root and what each building command printed."""
    import os

    from stemma.cli.app import app

    repo = new_registry(tmp_path_factory.mktemp("json") / "repo", registry_template, SPECS).root
    runner, out = CliRunner(), {}
    old = Path.cwd()
    os.chdir(repo)
    try:
        for key, args in (
            ("pipeline", ["pipeline", "--json"]),
            ("dataset", ["build", "dataset", "d04", "--json"]),
            ("model", ["build", "model", "base", "-q", "--json"]),
        ):
            res = runner.invoke(app, args)
            assert res.exit_code == 0, (args, res.stdout, res.stderr)
            out[key] = json.loads(res.stdout)
    finally:
        os.chdir(old)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    out["repo"] = repo
    return out


def test_pipeline_and_build_print_json(built: dict[str, Any]) -> None:
    assert "models/base/dvc.yaml" in built["pipeline"]["written"]
    assert built["pipeline"]["removed"] == [] and built["pipeline"]["locks_moved"] == 0
    data = built["dataset"]
    assert data["kind"] == "dataset" and data["id"].startswith("sha256:")
    assert data["classes"] == [0, 1, 2, 3, 4] and data["samples"]["train"] > 0
    model = built["model"]
    assert model["kind"] == "model" and model["name"] == "base"
    assert set(model["metrics"]) >= {"accuracy", "loss"} and model["failed_gates"] == []


def test_pipeline_check_json(built: dict[str, Any], cli: Any) -> None:
    repo = built["repo"]
    assert _json(cli(["pipeline", "--check", "--json"], repo)) == {"ok": True, "differences": []}
    (repo / "models" / "base" / "dvc.yaml").unlink()
    res = cli(["pipeline", "--check", "--json"], repo)
    assert res.code == 1
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["differences"][0]["path"] == "models/base/dvc.yaml"
    assert _json(cli(["pipeline", "--json"], repo))["written"] == ["models/base/dvc.yaml"]


def test_tag_promote_checkout_register_print_json(built: dict[str, Any], cli: Any) -> None:
    repo, ident = built["repo"], built["model"]["id"]
    tag = _json(cli(["tag", "base", "v1.0.0", "--json"], repo))
    assert tag["tag"] == "base@v1.0.0" and tag["id"] == ident and tag["kind"] == "version"
    stage = _json(cli(["promote", "base", "prod", "--json"], repo))
    assert stage["tag"] == "base#prod#1" and stage["stage"] == "prod" and stage["id"] == ident
    restored = _json(cli(["checkout", "base@v1.0.0", "--json"], repo))
    assert restored == {"ref": "base@v1.0.0", "path": "models/base/weights.safetensors"}
    weights = str(repo / "models" / "base" / "weights.safetensors")
    doc = _json(cli(["register", "copy", "--weights", weights, "--json"], repo))
    assert doc["kind"] == "model" and doc["name"] == "copy" and doc["family"] == "mlp"


def test_init_prints_json(cli: Any, tmp_path: Path, registry_template: Path) -> None:
    # git and DVC are already set up (dvc init is slow); stemma's own files are not
    shutil.copytree(registry_template, tmp_path / "new", symlinks=True)
    (tmp_path / "new" / "stemma.yaml").unlink()
    doc = _json(cli(["init", str(tmp_path / "new"), "--json"], tmp_path))
    assert doc == {"path": str((tmp_path / "new").resolve()), "root": "."}


def test_verify_rebuild_says_when_it_starts_and_ends(built: dict[str, Any], cli: Any) -> None:
    res = cli(["verify", "base", "--rebuild", "--json"], built["repo"])
    lines = res.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if "rebuilding base" in line)
    end = next(i for i, line in enumerate(lines) if "rebuilt and compared base in" in line)
    assert start < end and lines[end].rstrip().endswith(" s")
    assert json.loads(res.stdout)["model"] == "base"  # stdout is still one JSON document


# -- spec errors that say what to write ---------------------------------------------------------

BARE_BASE = "architecture: {family: mlp, hidden: [16]}\ndata: {train: d04}\n"
CHILD = """
    source: {model: base, relation: finetune}
    data: {train: d04}
"""


@pytest.mark.parametrize(
    ("spec", "said", "unsaid"),
    [
        ("training: {epocs: 3}\n", "unknown key 'epocs'; did you mean 'epochs'?", None),
        ("gates: {accuracy: '>=0.9x'}\n", "a comparison such as '>= 0.90'", "^\\s*"),
    ],
)
def test_spec_errors_suggest_the_fix(
    tmp_path: Path, registry_template: Path, cli: Any, spec: str, said: str, unsaid: str | None
) -> None:
    base = BARE_BASE + spec
    reg = new_registry(
        tmp_path / "repo", registry_template, {**SPECS, "models/base/spec.yaml": base}
    )
    res = cli(["validate"], reg.root)
    assert res.code == 1 and said in res.stderr, res.stderr
    assert unsaid is None or unsaid not in res.stderr


def test_a_child_of_an_invalid_spec_does_not_call_it_missing(
    tmp_path: Path, registry_template: Path, cli: Any
) -> None:
    specs = {
        **SPECS,
        "models/base/spec.yaml": BARE_BASE + "training: {epocs: 3}\n",
        "models/child/spec.yaml": CHILD,
    }
    reg = new_registry(tmp_path / "repo", registry_template, specs)
    res = cli(["validate"], reg.root)
    assert res.code == 1 and "models/base/spec.yaml" in res.stderr
    assert "does not exist" not in res.stderr, res.stderr
