"""The review audit: one crafted repository per violation code, clean changes, golden reports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent

import pytest
import yaml
from conftest import SPECS, git, write
from factories import Fact, dataset_manifest, model_manifest
from stemma.lineage import audit as lib
from stemma.registry import Registry
from stemma.registry.check import consistency as cons
from stemma.registry.pipeline import pipefiles
from stemma.registry.pipeline import render as pipeline
from stemma.registry.store import _checkcache
from stemma.registry.store.files import canonical_json

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "audit"
UPDATE = os.environ.get("STEMMA_UPDATE_GOLDEN") == "1"


def write_lock(reg: Registry, override: dict[str, str] | None = None) -> None:
    """The dvc.lock beside each model's dvc.yaml as `dvc repro` writes it, with the model's
    weights md5 (or an override)."""
    for name in reg.model_names():
        stages = {}
        manifest = reg.model_manifest(name)
        if manifest is None:
            continue
        weights = manifest.raw["weights"]
        md5 = (override or {}).get(name, weights["md5"])
        stages[pipeline.stage_name("model", name)] = {
            "cmd": f"stemma build model {name}",
            "deps": [
                {
                    "path": reg.rel("models", name, "spec.yaml"),
                    "hash": "md5",
                    "md5": "3" * 32,
                    "size": 10,
                }
            ],
            "outs": [
                {
                    "path": reg.rel("models", name, "weights.safetensors"),
                    "hash": "md5",
                    "md5": md5,
                    "size": weights["bytes"],
                },
                {
                    "path": reg.rel("models", name, "manifest.json"),
                    "hash": "md5",
                    "md5": "4" * 32,
                    "size": 10,
                },
            ],
        }
        lock = reg.repo_root / pipeline.stage_file(reg, "model", name)
        write(lock.with_name("dvc.lock"), yaml.safe_dump({"schema": "2.0", "stages": stages}))


def commit(repo: Path, message: str) -> None:
    """Stage everything and commit."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def fresh(reg: Registry) -> Registry:
    """Reopen (drops the read cache after files changed)."""
    return Registry.open(reg.repo_root)


def rebuild(reg: Registry, *names: str, **extra: object) -> Registry:
    """Write manifests for `names` (parents first), then dvc.yaml and dvc.lock."""
    for name in names:
        reg = fresh(reg)
        model_manifest(reg, name, **extra)  # type: ignore[arg-type]
    reg = fresh(reg)
    pipefiles.write(reg)
    write_lock(reg)
    return fresh(reg)


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """A committed, valid registry: two datasets, `base`, `ft` (from base) and `scratch`."""
    repo = tmp_path_factory.mktemp("audit") / "repo"
    shutil.copytree(registry_template, repo, symlinks=True)
    reg = Registry.open(repo)
    for rel, text in SPECS.items():
        write(reg.root / rel, text)
    reg = fresh(reg)
    for name in reg.dataset_names():
        dataset_manifest(reg, name)
    rebuild(reg, "base", "ft", "scratch")
    assert cons.check(fresh(reg)) == []
    commit(repo, "base registry")
    return repo


@pytest.fixture
def repo(base_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the base repository."""
    target = tmp_path / "repo"
    shutil.copytree(base_repo, target, symlinks=True)
    return target


def edit_spec(reg: Registry, name: str, text: str, kind: str = "models") -> None:
    write(reg.root / kind / name / "spec.yaml", text)


FT = dedent(SPECS["models/ft/spec.yaml"]).strip() + "\n"
BASE = dedent(SPECS["models/base/spec.yaml"]).strip() + "\n"
SCRATCH = dedent(SPECS["models/scratch/spec.yaml"]).strip() + "\n"


def _schema(reg: Registry) -> None:
    edit_spec(reg, "ft", FT + "colour: blue\n")


def _invalid_name(reg: Registry) -> None:
    edit_spec(reg, "Bad_Name", "data: {train: digits-0to4}\n")


def _dangling_source(reg: Registry) -> None:
    edit_spec(reg, "ft", FT.replace("model: base", "model: bsae"))
    pipefiles.write(fresh(reg))


def _dangling_dataset(reg: Registry) -> None:
    edit_spec(reg, "extra", "architecture: {family: mlp}\ndata: {train: nowhere}\n")
    pipefiles.write(fresh(reg))


def _cycle(reg: Registry) -> None:
    edit_spec(reg, "base", BASE + "source: {model: ft}\n")


def _path_escape(reg: Registry) -> None:
    edit_spec(reg, "outside", "source: file:../../../elsewhere.npz\n", kind="datasets")


def _untrusted_entrypoint(reg: Registry) -> None:
    edit_spec(
        reg,
        "custom",
        "architecture: {family: entrypoint, entrypoint: 'zoo.nets:build'}\n"
        "data: {train: digits-0to4}\n",
    )
    pipefiles.write(fresh(reg))


def _stale_manifest(reg: Registry) -> None:
    edit_spec(reg, "base", BASE.replace("epochs: 2", "epochs: 3"))


def _id_mismatch(reg: Registry) -> None:
    path = reg.root / "models" / "scratch" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["metrics"]["accuracy"] = 0.99  # edited by hand: the id no longer matches
    path.write_text(canonical_json(doc))
    write_lock(fresh(reg))


def _failed_gate(reg: Registry) -> None:
    gate = {"metric": "accuracy", "op": ">=", "threshold": 0.5, "value": 0.4, "passed": False}
    rebuild(reg, "scratch", accuracy=0.4, gates=[gate])


def _failed_check(reg: Registry) -> None:
    rebuild(reg, "scratch", checks={"forgetting": {"passed": False, "drop": 0.3}})


def _metrics_mismatch(reg: Registry) -> None:
    # the file `dvc metrics show` reports, edited by hand: the manifest still says 0.9
    (reg.root / "models" / "scratch" / "metrics.json").write_text('{"accuracy": 0.99}\n')


def _lock_mismatch(reg: Registry) -> None:
    write_lock(reg, override={"scratch": "9" * 32})


def _pipeline_out_of_sync(reg: Registry) -> None:
    path = reg.repo_root / pipeline.stage_file(reg, "model", "scratch")
    path.write_text(path.read_text().replace("persist: true", "persist: false", 1))


def _tagged_version_changed(reg: Registry) -> None:
    mid = reg.model_manifest("scratch").id  # type: ignore[union-attr]
    message = json.dumps({"id": mid, "source": None})
    git(reg.repo_root, "tag", "-a", "scratch@v1.0.0", "-m", message)
    rebuild(reg, "scratch", accuracy=0.95)  # same spec and data, different content


def _new_entrypoint(reg: Registry) -> None:
    path = reg.repo_root / "stemma.yaml"
    settings = yaml.safe_load(path.read_text())
    settings["entrypoints"] = ["zoo.nets:build"]
    path.write_text(yaml.safe_dump(settings))


def _removed_with_descendants(reg: Registry) -> None:
    shutil.rmtree(reg.root / "models" / "base")
    pipefiles.write(fresh(reg))
    write_lock(fresh(reg))


CASES: dict[str, Callable[[Registry], None]] = {
    cons.SCHEMA: _schema,
    cons.INVALID_NAME: _invalid_name,
    cons.DANGLING_SOURCE: _dangling_source,
    cons.DANGLING_DATASET: _dangling_dataset,
    cons.CYCLE: _cycle,
    cons.PATH_ESCAPE: _path_escape,
    cons.UNTRUSTED_ENTRYPOINT: _untrusted_entrypoint,
    cons.STALE_MANIFEST: _stale_manifest,
    cons.ID_MISMATCH: _id_mismatch,
    cons.FAILED_GATE: _failed_gate,
    cons.FAILED_CHECK: _failed_check,
    cons.METRICS_MISMATCH: _metrics_mismatch,
    lib.LOCK_MISMATCH: _lock_mismatch,
    lib.PIPELINE_OUT_OF_SYNC: _pipeline_out_of_sync,
    lib.TAGGED_VERSION_CHANGED: _tagged_version_changed,
    lib.NEW_ENTRYPOINT: _new_entrypoint,
    lib.REMOVED_WITH_DESCENDANTS: _removed_with_descendants,
}


def test_every_code_has_a_case() -> None:
    assert sorted(CASES) == sorted(lib.CODES)
    assert len(set(lib.CODES)) == len(lib.CODES)


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_violation_is_reported_with_its_code(code: str, repo: Path, cli) -> None:
    CASES[code](Registry.open(repo))
    commit(repo, f"introduce {code}")
    res = cli(["audit", "--base", "HEAD~1", "--format", "json"], repo)
    assert res.code == 1, res.stdout + res.stderr
    report = json.loads(res.stdout)
    codes = {v["code"] for v in report["violations"]}
    assert code in codes
    hit = next(v for v in report["violations"] if v["code"] == code)
    assert hit["new"] is True and hit["message"] and "\n" not in hit["message"]
    md = cli(["audit", "--base", "HEAD~1"], repo)
    assert md.code == 1
    assert f"`{code}`" in md.stdout


def test_a_lock_edited_after_a_kept_check_is_read_again(
    repo: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_checkcache, "RACY_NS", 0)  # the test's files count as old enough
    assert cli(["audit", "--base", "HEAD"], repo).code == 0
    kept = zlib.decompress(Fact(repo, _checkcache.FACT).read_bytes()).decode().split("\n")
    # the head's facts were stored, the lock's md5 among them
    assert any(line.startswith("scratch\t") for line in kept)
    _lock_mismatch(Registry.open(repo))
    res = cli(["audit", "--base", "HEAD", "--format", "json"], repo)
    assert res.code == 1
    hits = [v for v in json.loads(res.stdout)["violations"] if v["code"] == lib.LOCK_MISMATCH]
    assert [v["subject"] for v in hits] == ["model:scratch"] and hits[0]["new"] is True


def test_clean_change_exits_zero_and_matches_golden(repo: Path, cli) -> None:
    reg = Registry.open(repo)
    edit_spec(reg, "base", BASE.replace("epochs: 2", "epochs: 3"))
    rebuild(reg, "base", "ft", accuracy=0.93)
    commit(repo, "retrain base for longer")
    res = cli(["audit", "--base", "HEAD~1"], repo)
    assert res.code == 0, res.stdout
    check_golden("clean.md", res.stdout)
    data = json.loads(cli(["audit", "--base", "HEAD~1", "--format", "json"], repo).stdout)
    assert data["ok"] is True and data["violations"] == []
    assert {c["pointer"] for c in data["spec_changes"]} == {"/training/epochs"}
    assert [r["subject"] for r in data["rebuilt"]] == ["model:base", "model:ft"]
    deltas = {(d["model"], d["metric"]): d for d in data["metric_deltas"]}
    assert deltas[("base", "accuracy")]["delta"] == pytest.approx(0.03)
    assert data["marks"] == {"model:base": "changed", "model:ft": "changed"}


def test_messy_change_matches_golden(repo: Path, cli) -> None:
    reg = Registry.open(repo)
    # Re-parent ft onto scratch without rebuilding, add a model, remove nothing.
    edit_spec(reg, "ft", FT.replace("model: base", "model: scratch"))
    edit_spec(reg, "ft2", "source: {model: ft, relation: distill}\ndata: {train: digits-0to4}\n")
    commit(repo, "re-parent ft, add ft2")
    res = cli(["audit", "--base", "HEAD~1"], repo)
    assert res.code == 1
    check_golden("messy.md", res.stdout)
    assert "```mermaid\nflowchart TD" in res.stdout


def test_removed_model_golden(repo: Path, cli) -> None:
    _removed_with_descendants(Registry.open(repo))
    commit(repo, "remove base")
    res = cli(["audit", "--base", "HEAD~1"], repo)
    assert res.code == 1
    check_golden("removed.md", res.stdout)


def test_preexisting_violations_are_marked(repo: Path, cli) -> None:
    _failed_gate(Registry.open(repo))
    commit(repo, "a failing gate")
    edit_spec(Registry.open(repo), "scratch", SCRATCH)
    res = cli(["audit", "--base", "HEAD"], repo)  # working tree: nothing new
    assert res.code == 1
    data = json.loads(cli(["audit", "--base", "HEAD", "--format", "json"], repo).stdout)
    gate = [v for v in data["violations"] if v["code"] == cons.FAILED_GATE]
    assert gate and gate[0]["new"] is False
    assert "| pre-existing | `failed-gate` |" in res.stdout


def test_head_revision_and_library_api(repo: Path) -> None:
    _stale_manifest(Registry.open(repo))
    commit(repo, "stale")
    # Undo in the working tree: --head reads the commit, not the files on disk.
    edit_spec(Registry.open(repo), "base", BASE)
    at_head = lib.audit(repo, "HEAD~1", "HEAD")
    assert at_head.head == "HEAD" and not at_head.ok
    assert [v.code for v in at_head.violations] == [cons.STALE_MANIFEST]
    assert lib.audit(repo, "HEAD~1").ok  # the working tree is back to the base
    assert at_head.marks["model:base"] == "changed"
    assert at_head.marks["model:ft"] == "affected"


def test_tag_on_a_rebuilt_version_is_fine(repo: Path) -> None:
    # A retrain after a spec change is a new version, not a rewrite of the tagged one.
    reg = Registry.open(repo)
    mid = reg.model_manifest("scratch").id  # type: ignore[union-attr]
    git(repo, "tag", "-a", "scratch@v1.0.0", "-m", json.dumps({"id": mid, "source": None}))
    edit_spec(reg, "scratch", SCRATCH + "training: {epochs: 9}\n")
    rebuild(reg, "scratch", accuracy=0.97)
    commit(repo, "retrain scratch")
    report = lib.audit(repo, "HEAD~1")
    assert report.ok, report.to_json()


def test_entrypoint_code_change_is_flagged(repo: Path) -> None:
    _new_entrypoint(Registry.open(repo))
    write(repo / "zoo" / "nets.py", "def build():\n    return None\n")
    commit(repo, "trust zoo.nets")
    write(repo / "zoo" / "nets.py", "import os\ndef build():\n    return os.system('true')\n")
    report = lib.audit(repo, "HEAD")
    assert [(v.code, v.path) for v in report.violations] == [(lib.NEW_ENTRYPOINT, "zoo/nets.py")]


def test_registry_created_in_the_change(repo: Path, tmp_path: Path) -> None:
    empty = tmp_path / "plain"
    empty.mkdir()
    git(empty, "init", "-q")
    write(empty / "README.md", "hello\n")
    commit(empty, "before the registry")
    for item in ("stemma.yaml", "models", "datasets", "dvc.yaml"):
        src = repo / item
        if src.is_dir():
            shutil.copytree(src, empty / item)
        else:
            shutil.copy(src, empty / item)
    report = lib.audit(empty, "HEAD")
    assert report.models_added == ("base", "ft", "scratch")
    assert report.ok, report.to_json()


def test_bad_revision_is_one_line_error(repo: Path, cli) -> None:
    res = cli(["audit", "--base", "no-such-rev"], repo)
    assert res.code == 1
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_json_diff_pointers() -> None:
    a = {"x": 1, "a/b": {"c": [1, 2]}, "gone": True, "f": 1}
    b = {"x": 1, "a/b": {"c": [1, 3]}, "new": "y", "f": 1.0}
    assert lib.json_diff(a, b) == [
        ("/a~1b/c", "changed", [1, 2], [1, 3]),
        ("/f", "changed", 1, 1.0),
        ("/gone", "removed", True, None),
        ("/new", "added", None, "y"),
    ]


def check_golden(name: str, text: str) -> None:
    """Compare with tests/data/audit/NAME (STEMMA_UPDATE_GOLDEN=1 rewrites it)."""
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def test_markdown_is_deterministic(repo: Path) -> None:
    _removed_with_descendants(Registry.open(repo))
    first = lib.audit(repo, "HEAD").to_markdown()
    assert first == lib.audit(repo, "HEAD").to_markdown()
    assert subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()  # read-only: changes remain


def test_precommit_hooks_and_ci_example(cli, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    hooks = yaml.safe_load((root / ".pre-commit-hooks.yaml").read_text())
    entries = {h["id"]: h["entry"] for h in hooks}
    assert entries == {
        "stemma-validate": "stemma validate",
        "stemma-pipeline-check": "stemma pipeline --check",
        "stemma-audit": "stemma audit --base HEAD",
    }
    files = {h["id"]: re.compile(h["files"]) for h in hooks}
    for hook in ("stemma-validate", "stemma-audit"):
        for path in ("models/a/metrics.json", "models/a/curve.json", "models/a/manifest.json"):
            assert files[hook].search(path), (hook, path)
    assert all(
        h["pass_filenames"] is False and h["language"] in ("python", "system") for h in hooks
    )
    for entry in entries.values():  # each hook is a real command
        assert cli([*entry.split()[1:], "--help"], tmp_path).code == 0
    workflow = (root / "examples" / "github-audit.yml").read_text()
    assert 'stemma audit --base "origin/${{ github.base_ref }}" --format md' in workflow
    paths = yaml.safe_load(workflow)[True]["pull_request"]["paths"]  # YAML 1.1 reads `on` as True
    assert {"**/metrics.json", "**/curve.json", "**/manifest.json"} <= set(paths)
    doc = yaml.safe_load(workflow)
    # the job that runs the pull request's code never holds a writable token (a fork's is
    # read-only anyway); only the comment job, which runs none of it, may write, on branches
    # of this repository
    assert doc["permissions"] == {"contents": "read"} and "pull_request_target" not in doc[True]
    assert doc["jobs"]["comment"]["permissions"] == {"pull-requests": "write"}
    assert "head.repo.full_name == github.repository" in doc["jobs"]["comment"]["if"]
    assert "$GITHUB_STEP_SUMMARY" in workflow and "actions/upload-artifact" in workflow
    assert "pip install stemma-ml" not in workflow  # no such package on the public index


def test_audit_hook_fails_on_a_staged_metrics_edit(repo: Path, cli) -> None:
    """pre-commit runs the hook with only the staged change in the working tree."""
    _metrics_mismatch(Registry.open(repo))
    git(repo, "add", "-A")
    res = cli(["audit", "--base", "HEAD", "--json"], repo)
    assert res.code == 1
    assert cons.METRICS_MISMATCH in {v["code"] for v in json.loads(res.stdout)["violations"]}


def test_broken_settings_at_head_is_a_schema_violation(repo: Path) -> None:
    write(repo / "stemma.yaml", "version: 2\n")
    report = lib.audit(repo, "HEAD")
    assert [(v.code, v.subject, v.path) for v in report.violations] == [
        (cons.SCHEMA, "settings", "stemma.yaml")
    ]
    assert "`schema`" in report.to_markdown()
    assert report.models_removed == () and report.spec_changes == ()


def test_conflict_markers_in_a_lock_are_new_only_where_the_base_lacks_them(repo: Path, cli) -> None:
    """A pipeline file of the base that is the head's (read from the working tree in one
    pass) reports what the head's does: markers the base has too are not new."""
    lock = Registry.open(repo).root / "models" / "scratch" / "dvc.lock"
    lock.write_text("<<<<<<< ours\n" + lock.read_text() + "=======\n>>>>>>> theirs\n")
    commit(repo, "a lock with merge conflict markers")

    def conflicts(base: str) -> list[tuple[str, bool]]:
        res = cli(["audit", "--base", base, "--format", "json"], repo)
        found = json.loads(res.stdout)["violations"]
        return [(v["path"], v["new"]) for v in found if "merge conflict" in v["message"]]

    path = str(lock.relative_to(repo))
    assert conflicts("HEAD~1") == [(path, True)]
    assert conflicts("HEAD") == [(path, False)]
