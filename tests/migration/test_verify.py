"""`stemma verify` (files, frozen tensors, rebuild) and `stemma report` on a real registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import new_registry, write
from safetensors.torch import load_file, save_file
from stemma.migration.build import build_dataset, build_model
from stemma.migration.verify import (
    GPU_ABS_TOLERANCE,
    compare_builds,
    stage_copy,
    verify_model,
)
from stemma.registry import Registry
from stemma.registry.publish.report import model_report, render_text
from stemma.registry.records.manifest import ModelManifest

ZOO_MODEL = Path(__file__).parents[2] / "zoo" / "models" / "digits-5to9-ft"

SPECS = {
    "datasets/d04/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4]}
    """,
    "datasets/d59/spec.yaml": """
        source: sklearn:digits
        select: {classes: [5, 6, 7, 8, 9], relabel: contiguous}
    """,
    "models/base/spec.yaml": """
        description: Base <digits> 0-4 & friends.
        architecture: {family: mlp, hidden: [32]}
        data: {train: d04}
        training: {epochs: 2, optimizer: adam, lr: 0.01, seed: 0}
        gates: {accuracy: ">= 0.5"}
    """,
    "models/mid/spec.yaml": """
        source: {model: base}
        data: {train: d04}
        strategy: {mapping: exact}
        training: {epochs: 1, optimizer: adam, lr: 0.001, seed: 0}
    """,
    "models/ft/spec.yaml": """
        description: Fine-tuned <b>5-9</b>.
        source: {model: mid, relation: finetune}
        data: {train: d59}
        strategy: {freeze: ["body.0.*"], reinit: ["head.*"]}
        training: {epochs: 2, optimizer: adam, lr: 0.01, seed: 0}
        gates: {per_class_accuracy: ">= 0.1"}
        checks: {forgetting: {data: d04}, drift: {permutations: 20}}
    """,
}
WEIGHTS = "weights.safetensors"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """A three-generation lineage built once (shared; tests that change it copy it)."""
    reg = new_registry(tmp_path_factory.mktemp("verify") / "repo", registry_template, SPECS)
    repo = reg.repo_root
    for name in ("d04", "d59"):
        build_dataset(reg, name)
    for name in ("base", "mid", "ft"):
        build_model(Registry.open(repo), name)
    return repo


@pytest.fixture
def copy(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built registry, free to change."""
    shutil.copytree(built, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


def snapshot(repo: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.parts and ".dvc" not in p.parts
    }


# -- verify -----------------------------------------------------------------------------------


def test_verify_passes_on_a_clean_model(built: Path, cli: Any) -> None:
    res = cli(["verify", "ft"], built)
    assert res.code == 0, res.stderr
    assert "ok: ft verified" in res.stdout
    statuses = {line.split()[1]: line.split()[0] for line in res.stdout.splitlines()[:-1]}
    assert statuses["frozen"] == "pass" and statuses["weights"] == "pass"
    assert statuses["checks"] == "pass" and statuses["source"] == "pass"
    assert res.stderr == ""


def test_frozen_tensor_changed_by_hand_is_caught(copy: Path, cli: Any) -> None:
    path = copy / "models" / "ft" / WEIGHTS
    state = load_file(path)
    state["body.0.weight"][0, 0] += 1e-3
    save_file(state, path)
    res = cli(["verify", "ft"], copy)
    assert res.code == 1
    frozen = [line for line in res.stderr.splitlines() if ": frozen:" in line]
    assert len(frozen) == 1
    assert "body.0.weight" in frozen[0] and "source mid" in frozen[0]
    assert "body.0.bias" not in frozen[0]
    # the hashes disagree with the manifest too, each failure on its own line
    assert any(": weights:" in line for line in res.stderr.splitlines())


def test_frozen_tensor_changed_with_matching_hashes_is_still_caught(copy: Path) -> None:
    """Re-hashing the edited file into the manifest hides it from the hashes, not from verify."""
    from stemma.registry.store.files import file_hashes

    folder = copy / "models" / "ft"
    state = load_file(folder / WEIGHTS)
    state["body.0.bias"] = torch.zeros_like(state["body.0.bias"])
    save_file(state, folder / WEIGHTS)
    doc = json.loads((folder / "manifest.json").read_text())
    doc["weights"].update(file_hashes(folder / WEIGHTS))
    Registry.open(copy).write_model_manifest("ft", doc)
    result = verify_model(Registry.open(copy), "ft")
    assert not result.ok
    assert [f.item for f in result.failures] == ["frozen"]
    assert "body.0.bias" in result.failures[0].message


def test_verify_reports_stale_source_and_edited_metrics(copy: Path, cli: Any) -> None:
    (copy / "models" / "ft" / "metrics.json").write_text('{"accuracy": 1.0}\n')
    write(
        copy / "models" / "mid" / "spec.yaml",
        SPECS["models/mid/spec.yaml"].replace("lr: 0.001", "lr: 0.002"),
    )
    build_model(Registry.open(copy), "mid")
    res = cli(["verify", "ft", "--json"], copy)
    assert res.code == 1
    doc = json.loads(res.stdout)
    failed = {f["item"] for f in doc["findings"] if f["status"] == "fail"}
    assert failed == {"metrics", "source", "frozen"}
    assert doc["ok"] is False


def test_verify_rebuild_matches_on_cpu_and_leaves_the_tree_alone(built: Path, cli: Any) -> None:
    before = snapshot(built)
    res = cli(["verify", "ft", "--rebuild"], built)
    assert res.code == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if line.split()[1] == "rebuild")
    assert line.startswith("pass") and "rebuild identical" in line
    assert snapshot(built) == before


def test_stage_copy_holds_only_what_the_build_reads(built: Path, tmp_path: Path) -> None:
    copy = stage_copy(Registry.open(built), "ft", tmp_path / "stage")
    files = sorted(str(p.relative_to(tmp_path / "stage")) for p in copy.root.rglob("*.*"))
    assert "models/ft/manifest.json" not in files and "models/ft/weights.safetensors" not in files
    assert "models/mid/weights.safetensors" in files and "models/base/spec.yaml" not in files
    assert "datasets/d04/data.npz" in files and "datasets/d59/data.npz" in files


def test_compare_builds_says_identical_equivalent_or_different() -> None:
    zoo = json.loads((ZOO_MODEL / "manifest.json").read_text())

    def doc(device: str, sha: str, acc: float, cpu: str = "A") -> ModelManifest:
        numerics = {"mode": "native", "pinned": True, "cpu": {"model": cpu, "capability": "X"}}
        return ModelManifest.from_dict(
            {
                **zoo,
                "id": "sha256:" + sha * 64,
                "weights": {**zoo["weights"], "sha256": "sha256:" + sha * 64},
                "metrics": {"accuracy": acc, "loss": 0.5},
                "run": {**zoo["run"], "device": device, "numerics": numerics},
            }
        )

    same = compare_builds(doc("cpu", "a", 0.9), doc("cpu", "a", 0.9))
    assert same["ok"] and same["verdict"] == "identical"
    near = compare_builds(doc("cpu", "a", 0.9, "A"), doc("cpu", "b", 0.9, "B"), {"w": 3e-7})
    assert near["ok"] and near["verdict"] == "numerically equivalent"
    assert "tolerance 0.001 per tensor" in near["message"] and "on A X" in near["message"]
    assert near["numerics"]["rebuilt"]["cpu"]["model"] == "B"
    far = compare_builds(doc("cpu", "a", 0.9), doc("cpu", "b", 0.9), {"w": 0.5})
    assert not far["ok"] and far["verdict"] == "different" and "tensor w" in far["message"]
    unread = compare_builds(doc("cpu", "a", 0.9), doc("cpu", "b", 0.9))
    assert unread["verdict"] == "different"
    metric = compare_builds(doc("cpu", "a", 0.9), doc("cpu", "b", 0.8), {"w": 0.0})
    assert metric["verdict"] == "different" and "accuracy" in metric["message"]
    gpu = compare_builds(
        doc("cuda:0", "a", 0.9), doc("cuda:0", "b", 0.9 + GPU_ABS_TOLERANCE), {"w": 0.01}
    )
    assert gpu["verdict"] == "numerically equivalent" and gpu["tolerance"]["metric_rel"]
    assert (
        compare_builds(doc("cuda:0", "a", 0.9), doc("cpu", "b", 0.8), {"w": 0.0})["verdict"]
        == "different"
    )


def _nudge(repo: Path, other_machine: bool) -> None:
    """Weights a rebuild here cannot give bit for bit: the head nudged by 1e-6, as if built
    elsewhere (and, with `other_machine`, with a fingerprint that differs on one op)."""
    from stemma.registry.store.files import file_hashes, read_json

    folder = repo / "models" / "ft"
    state = load_file(folder / WEIGHTS)
    state["head.weight"] = state["head.weight"] + 1e-6
    save_file(state, folder / "nudged")
    (folder / "nudged").replace(folder / WEIGHTS)
    doc = read_json(folder / "manifest.json")
    doc["weights"].update(file_hashes(folder / WEIGHTS))
    if other_machine:
        doc["run"]["numerics"]["fingerprint"]["ops"]["elementwise.sqrt"] = "0" * 12
    Registry.open(repo).write_model_manifest("ft", {k: v for k, v in doc.items() if k != "id"})


def test_verify_rebuild_of_another_machines_bits_is_equivalent(copy: Path, cli: Any) -> None:
    _nudge(copy, other_machine=True)
    res = cli(["verify", "ft", "--rebuild", "--json"], copy)
    assert res.code == 0, res.stderr
    rebuild = json.loads(res.stdout)["rebuild"]
    assert rebuild["verdict"] == "numerically equivalent"
    assert rebuild["machine"]["verdict"] == "differs"
    assert rebuild["machine"]["ops"] == ["elementwise.sqrt"]
    assert "differ from the build's on: elementwise.sqrt" in rebuild["message"]
    assert 0 < max(rebuild["weights"]["max_abs_diff"].values()) < 1e-5
    assert rebuild["numerics"]["recorded"] and rebuild["numerics"]["rebuilt"]["pinned"]


def test_verify_rebuild_with_matching_numerics_must_be_identical(copy: Path, cli: Any) -> None:
    _nudge(copy, other_machine=False)
    res = cli(["verify", "ft", "--rebuild"], copy)
    assert res.code == 1
    first = res.stdout.splitlines()[0]
    assert first.startswith("numerics") and "must be identical" in first  # before the build
    assert "rebuild different: this machine's numerics match the build's" in res.stdout


def test_verify_unbuilt_model_is_one_line(copy: Path, cli: Any) -> None:
    (copy / "models" / "ft" / "manifest.json").unlink()
    res = cli(["verify", "ft"], copy)
    assert res.code == 1
    assert res.stderr.strip().splitlines() == [
        "error: models/ft: model 'ft' has not been built; run `dvc repro`"
    ]


# -- report -----------------------------------------------------------------------------------


def test_report_text_walks_the_lineage_to_the_root(built: Path, cli: Any) -> None:
    res = cli(["report", "ft"], built)
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    lineage = lines[lines.index("lineage:") + 1 : lines.index("lineage:") + 4]
    assert [line.split()[0] for line in lineage] == ["ft", "mid", "base"]
    assert "finetune of mid" in lineage[0] and "finetune of base" in lineage[1]
    assert any(line.startswith("check forgetting: pass") for line in lines)
    assert any(
        line.startswith("check drift: pass") and "mahalanobis_ratio" in line for line in lines
    )
    assert any("body.0.weight" in line and "frozen" in line for line in lines)


def test_report_html_has_lineage_curve_and_checks(built: Path, cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    res = cli(["report", "ft", "--html", str(out)], built)
    assert res.code == 0, res.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "alt='training curve of ft' src='data:image/png;base64,iVBOR" in page
    for name in ("ft", "mid", "base"):  # the lineage, drawn as an inline SVG
        assert f"<g class='node'><title>{name} sha256:" in page
    for check in ("forgetting", "drift", "parameters"):
        assert f"<h3>{check} <span class='pass'>pass</span></h3>" in page
    assert "mahalanobis_ratio" in page and "relative_drop" in page
    # user text is escaped
    assert "Fine-tuned &lt;b&gt;5-9&lt;/b&gt;." in page and "<b>5-9</b>" not in page
    assert not list(tmp_path.glob(".report.html.*"))  # the atomic write left no temp file


def test_report_marks_a_stale_link(copy: Path) -> None:
    write(
        copy / "models" / "mid" / "spec.yaml",
        SPECS["models/mid/spec.yaml"].replace("lr: 0.001", "lr: 0.002"),
    )
    build_model(Registry.open(copy), "mid")
    report = model_report(Registry.open(copy), "ft")
    assert [e["name"] for e in report["lineage"]] == ["ft", "mid", "base"]
    assert report["lineage"][0]["current"] is False and report["lineage"][1]["current"] is True
    assert "finetune of mid, stale" in render_text(report)


def test_verify_refuses_weights_linked_outside_the_repository(
    copy: Path, tmp_path: Path, cli: Any
) -> None:
    weights = copy / "models" / "ft" / "weights.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(weights.read_bytes())
    weights.unlink()
    weights.symlink_to(outside)
    res = cli(["verify", "ft"], copy)
    assert res.code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "models/ft/weights.safetensors" in lines[0], res.stderr
    assert "outside" in lines[0]


def test_verify_and_repro_refuse_a_conflicted_lock(copy: Path, cli: Any) -> None:
    lock = copy / "models" / "ft" / "dvc.lock"
    lock.write_text("schema: '2.0'\n<<<<<<< HEAD\nstages: {}\n=======\nstages: {a: 1}\n>>>>>>> b\n")
    res = cli(["verify", "ft"], copy)
    assert res.code == 1
    assert "models/ft/dvc.lock:2: merge conflict markers" in res.stderr
    res = cli(["repro", "--dry"], copy)
    assert res.code == 1 and res.stderr.count("\n") == 1
    assert "models/ft/dvc.lock:2: merge conflict markers" in res.stderr
