"""The registry core: init, specs, validation, listing, and the ten bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git, write
from factories import dataset_manifest, model_manifest
from stemma.registry import Registry
from stemma.registry.check.consistency import check
from stemma.registry.errors import RegistryNotFound, SchemaError
from stemma.registry.query import listing
from stemma.registry.query.sql import query
from stemma.registry.store.files import canonical_json, content_id, digest


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (but .git internals) with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def test_init_creates_layout_and_repos(tmp_path: Path) -> None:
    reg = Registry.init(tmp_path / "r")
    for rel in ("stemma.yaml", "models", "datasets", ".git", ".dvc"):
        assert (reg.repo_root / rel).exists(), rel
    assert ".stemma" in (reg.repo_root / ".gitignore").read_text()
    assert Registry.open(reg.repo_root / "models").repo_root == reg.repo_root


def test_open_without_registry_fails(tmp_path: Path) -> None:
    with pytest.raises(RegistryNotFound, match="stemma init"):
        Registry.open(tmp_path)


def test_hand_written_registry_validates_and_lists(populated: Registry, cli) -> None:
    res = cli(["validate"], populated.root)
    assert res.code == 0, res.stderr
    res = cli(["ls", "--json"], populated.root)
    assert res.code == 0
    rows = json.loads(res.stdout)
    assert [(r["kind"], r["name"]) for r in rows] == [
        ("dataset", "digits-0to4"),
        ("dataset", "digits-5to9"),
        ("model", "base"),
        ("model", "ft"),
        ("model", "scratch"),
    ]
    assert {r["name"]: r["source"] for r in rows if r["kind"] == "model"}["ft"] == "base"
    assert all(r["status"] == "unbuilt" for r in rows)
    res = cli(["ls", "--kind", "dataset"], populated.root)
    assert "digits-0to4" in res.stdout and "scratch" not in res.stdout


def test_canonical_json_and_content_id() -> None:
    doc = {"b": 1, "a": {"d": [1, 2], "c": "x"}, "run": {"t": 1}, "id": "x"}
    text = canonical_json(doc)
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert content_id(doc) == content_id({**doc, "run": {"t": 2}, "id": "y"})
    assert content_id(doc) != content_id({**doc, "b": 2})


def test_manifest_round_trip_and_status(populated: Registry) -> None:
    for ds in ("digits-0to4", "digits-5to9"):
        dataset_manifest(populated, ds)
    base = model_manifest(populated, "base")
    model_manifest(populated, "ft")
    reg = Registry.open(populated.root)
    assert reg.model_manifest("base").id == base["id"] == content_id(base)
    assert check(reg) == []
    # Rebuilding the base with new content makes its descendant stale.
    model_manifest(reg, "base", accuracy=0.5)
    codes = {(v.code, v.subject) for v in check(Registry.open(reg.root))}
    assert codes == {("stale-manifest", "model:ft")}


def test_spec_error_names_file_pointer_and_line(populated: Registry) -> None:
    write(
        populated.root / "models/ft/spec.yaml",
        """
        source: {model: base}
        data:
          train: digits-5to9
        training:
          epochs: "many"
    """,
    )
    with pytest.raises(SchemaError) as info:
        Registry.open(populated.root).model_spec("ft")
    assert info.value.pointer == "/training/epochs"
    assert info.value.line == 5
    assert str(info.value).startswith("models/ft/spec.yaml:5 at /training/epochs:")


BAD_INPUTS = {
    "broken-yaml": (
        "models/ft/spec.yaml",
        "source: {model: base\ndata: [\n",
        "models/ft/spec.yaml:",
        "invalid YAML",
    ),
    "unknown-key": (
        "models/ft/spec.yaml",
        "source: {model: base}\ndata: {train: digits-5to9}\nlearning_rate: 3\n",
        "models/ft/spec.yaml:3 at /learning_rate",
        "unknown key",
    ),
    "wrong-type": (
        "models/ft/spec.yaml",
        "source: {model: base}\ndata: {train: digits-5to9}\ntraining: {lr: fast}\n",
        "models/ft/spec.yaml:3 at /training/lr",
        "not of type",
    ),
    "missing-field": (
        "models/ft/spec.yaml",
        "source: {model: base}\n",
        "models/ft/spec.yaml",
        "missing required field",
    ),
    "invalid-name": (
        "models/Bad Name/spec.yaml",
        "data: {train: digits-5to9}\n",
        "models/Bad Name/spec.yaml",
        "invalid model name",
    ),
    "missing-source": (
        "models/ft/spec.yaml",
        "source: {model: bsae}\ndata: {train: digits-5to9}\n",
        "models/ft/spec.yaml at /source/model",
        "did you mean 'base'",
    ),
    "cycle": (
        "models/base/spec.yaml",
        "source: {model: ft}\ndata: {train: digits-0to4}\n",
        "models/base/spec.yaml at /source/model",
        "lineage cycle: base -> ft -> base",
    ),
    "path-escape": (
        "datasets/digits-0to4/spec.yaml",
        "source: file:../../outside.npz\n",
        "datasets/digits-0to4/spec.yaml at /source",
        "escapes the registry root",
    ),
    "untrusted-entrypoint": (
        "datasets/digits-0to4/spec.yaml",
        "source: entrypoint:evil.module:load\n",
        "datasets/digits-0to4/spec.yaml at /source",
        "not listed",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_1_nothing_changed(populated: Registry, cli, case: str) -> None:
    rel, text, where, reason = BAD_INPUTS[case]
    write(populated.root / rel, text)
    before = snapshot(populated.root)
    res = cli(["validate"], populated.root)
    assert res.code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(where), lines[0]
    assert reason in lines[0]
    assert "Traceback" not in res.stderr
    assert snapshot(populated.root) == before


def test_tampered_manifest_is_reported(populated: Registry, cli) -> None:
    dataset_manifest(populated, "digits-0to4")
    model_manifest(populated, "base")
    path = populated.root / "models/base/manifest.json"
    doc = json.loads(path.read_text())
    doc["metrics"]["accuracy"] = 0.99  # edited by hand: content no longer matches the id
    path.write_text(canonical_json(doc))
    before = snapshot(populated.root)
    res = cli(["validate"], populated.root)
    assert res.code == 1
    assert res.stderr.strip().splitlines() == [
        "models/base/manifest.json at /id: content no longer matches its id"
        " (edited by hand?); rebuild with `dvc repro` [id-mismatch]"
    ]
    assert snapshot(populated.root) == before


def test_hand_edited_metric_files_fail_validate(populated: Registry, cli) -> None:
    """metrics.json and curve.json must say what the manifest says (the build writes all three
    from the same numbers)."""
    dataset_manifest(populated, "digits-0to4")
    model_manifest(populated, "base", accuracy=0.9)
    folder = populated.root / "models/base"
    metrics = json.loads((folder / "manifest.json").read_text())["metrics"]
    (folder / "metrics.json").write_text(canonical_json(metrics))
    curve = [{"epoch": 1, "eval_accuracy": 0.5}, {"epoch": 2, "eval_accuracy": 0.9}]
    (folder / "curve.json").write_text(canonical_json(curve))
    assert cli(["validate"], populated.root).code == 0
    (folder / "metrics.json").write_text(canonical_json({**metrics, "accuracy": 0.99}))
    curve[-1]["eval_accuracy"] = 0.98
    (folder / "curve.json").write_text(canonical_json(curve))
    res = cli(["validate"], populated.root)
    assert res.code == 1
    assert res.stderr.strip().splitlines() == [
        "models/base/metrics.json at /accuracy: accuracy is 0.99, the manifest says 0.9"
        " [metrics-mismatch]",
        "models/base/curve.json at /1/eval_accuracy: last epoch's eval_accuracy is 0.98,"
        " the manifest says 0.9 [metrics-mismatch]",
    ]
    (folder / "metrics.json").write_text("{not json")
    res = cli(["validate"], populated.root)
    assert "models/base/metrics.json: is not JSON [metrics-mismatch]" in res.stderr
    data = json.loads(cli(["validate", "--json"], populated.root).stdout)
    assert {v["code"] for v in data["violations"]} == {"metrics-mismatch"}


def test_cli_errors_are_one_line_and_usage_errors_exit_2(populated: Registry, cli) -> None:
    res = cli(["show", "nope"], populated.root)
    assert res.code == 1 and res.stderr.strip() == "error: no model named 'nope'"
    res = cli(["ls", "--kind", "widget"], populated.root)
    assert res.code == 2
    res = cli(["show", "ft", "--json"], populated.root)
    assert res.code == 0 and json.loads(res.stdout)["spec"]["source"]["model"] == "base"


def test_traceback_flag_shows_traceback(populated: Registry) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stemma.cli.app", "--traceback", "show", "nope"],
        cwd=populated.root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "stemma.cli.app", "show", "nope"],
        cwd=populated.root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and proc.stderr == "error: no model named 'nope'\n"


def test_read_commands_do_not_import_torch_or_dvc(populated: Registry) -> None:
    code = (
        "import sys; from stemma.cli.app import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'dvc'))\n"
        "print('IMPORTED', bad, file=sys.stderr)\n"
    )
    for args in (["--help"], ["ls"], ["validate"], ["show", "ft"]):
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=populated.root,
            capture_output=True,
            text=True,
            check=False,
        )
        assert "IMPORTED []" in proc.stderr, (args, proc.stderr)


def test_registered_model_lists_validates_and_sources(populated: Registry, cli) -> None:
    from stemma.registry.pipeline import render as pipeline

    for ds in ("digits-0to4", "digits-5to9"):
        dataset_manifest(populated, ds)
    doc = model_manifest(populated, "base")
    (populated.root / "models/base/spec.yaml").unlink()
    imported = {k: v for k, v in doc.items() if k != "id"}
    imported["spec"] = {"description": "Imported weights."}
    imported["spec_digest"] = digest(imported["spec"])
    reg = Registry.open(populated.root)
    reg.write_model_manifest("base", imported)
    model_manifest(reg, "ft")
    reg = Registry.open(populated.root)
    assert reg.model_spec("base").registered
    assert check(reg) == []
    rows = {r.name: r.status for r in listing.list_entries(reg, "model")}
    assert rows == {"base": "registered", "ft": "built", "scratch": "unbuilt"}
    stages = pipeline.render_dict(reg)["stages"]
    assert "model-base" not in stages and "model-ft" in stages
    assert "models/base/weights.safetensors" in stages["model-ft"]["deps"]


def test_listing_from_the_index_matches_reading_the_files(populated: Registry) -> None:
    for ds in ("digits-0to4", "digits-5to9"):
        dataset_manifest(populated, ds)
    model_manifest(populated, "base")
    model_manifest(populated, "ft")
    model_manifest(Registry.open(populated.root), "base", accuracy=0.5)  # ft is now stale
    git(populated.repo_root, "add", "-A")
    git(populated.repo_root, "commit", "-qm", "state")
    indexed = listing.list_entries(Registry.open(populated.root))
    from_git = listing.list_entries(Registry.at_revision(populated.root, "HEAD"))
    assert indexed == from_git
    status = {e.name: e.status for e in indexed}
    assert status["ft"] == "stale" and status["base"] == "built" and status["scratch"] == "unbuilt"
    rows = query(
        Registry.open(populated.root),
        "SELECT name, accuracy FROM models WHERE accuracy IS NOT NULL ORDER BY name",
    ).rows
    assert [tuple(r) for r in rows] == [("base", 0.5), ("ft", 0.9)]


def test_atomic_writes_keep_the_permissions_a_plain_write_would_give(tmp_path: Path) -> None:
    from stemma.registry.store.files import write_atomic

    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "new.json", "{}\n")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640  # the umask's
        (tmp_path / "shared.json").write_text("{}\n")
        os.chmod(tmp_path / "shared.json", 0o664)
        write_atomic(tmp_path / "shared.json", '{"a": 1}\n')
        assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o664  # as it was
        assert (tmp_path / "shared.json").read_text() == '{"a": 1}\n'
    finally:
        os.umask(old)
