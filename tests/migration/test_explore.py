"""Source exploration: feature cache, ranking, skips, `stemma explore`, `source: auto` via dvc."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write
from stemma.migration.build import build_dataset, build_model, load_model
from stemma.migration.data import materialize
from stemma.migration.explore import explore, explore_for, fits
from stemma.migration.features import cache_path, extract
from stemma.migration.ranking import CandidateRow, Skipped
from stemma.migration.transferability import SCORES, logme
from stemma.registry import Registry
from stemma.registry.errors import BuildError

TRAIN = "{epochs: %d, batch_size: 64, optimizer: adamw, lr: 3.0e-3, seed: 0}"
DATASETS = {
    "d04": "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n",
    "d59": "source: sklearn:digits\nselect: {classes: [5, 6, 7, 8, 9], relabel: contiguous}\n",
    "shuffled": "source: file:raw/shuffled.npz\n",
    "d12": "source: sklearn:digits\nselect: {limit: 200}\ntransforms: [{resize: [12, 12]}]\n",
}
# target digits 5-9: the base trained on digits 0-4 is the sensible source; the same network
# untrained, or trained on shuffled labels, is not; `wide` takes 12x12 inputs and cannot run.
MODELS = {
    "base": f"architecture: {{family: mlp, hidden: [32]}}\ndata: {{train: d04}}\n"
    f"training: {TRAIN % 4}\n",
    "untrained": f"architecture: {{family: mlp, hidden: [32]}}\ndata: {{train: d04}}\n"
    f"training: {TRAIN % 0}\n",
    "noise": f"architecture: {{family: mlp, hidden: [32]}}\ndata: {{train: shuffled}}\n"
    f"training: {TRAIN % 4}\n",
    "wide": f"architecture: {{family: mlp, hidden: [16]}}\ndata: {{train: d12}}\n"
    f"training: {TRAIN % 0}\n",
}


def shuffled_digits(path: Path) -> None:
    """Digits 0-4 with their labels permuted: a source that learned nothing transferable."""
    src = materialize({"source": "sklearn:digits", "select": {"classes": [0, 1, 2, 3, 4]}})
    x = np.concatenate([src.x_train, src.x_eval])
    y = np.random.default_rng(0).permutation(np.concatenate([src.y_train, src.y_eval]))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """A registry with the datasets and candidate sources above built (shared, read-only)."""
    repo = tmp_path_factory.mktemp("zoo") / "repo"
    shutil.copytree(registry_template, repo, symlinks=True)
    shuffled_digits(repo / "raw" / "shuffled.npz")
    for name, text in DATASETS.items():
        write(repo / "datasets" / name / "spec.yaml", text)
    for name, text in MODELS.items():
        write(repo / "models" / name / "spec.yaml", text)
    reg = Registry.open(repo)
    for name in DATASETS:
        build_dataset(reg, name)
    for name in MODELS:
        build_model(reg, name)
    return repo


@pytest.fixture
def copy(zoo: Path, tmp_path: Path) -> Registry:
    """A private copy of the zoo, free to change."""
    shutil.copytree(zoo, tmp_path / "repo", symlinks=True)
    return Registry.open(tmp_path / "repo")


# -- features ---------------------------------------------------------------------------------


def test_features_are_the_models_penultimate_layer_and_head(zoo: Path) -> None:
    reg = Registry.open(zoo)
    found = extract(reg, "base", "d59", "eval")
    module = load_model(reg, "base")
    x = torch.from_numpy(np.load(reg.dataset_dir("d59") / "data.npz")["x_eval"])
    with torch.no_grad():
        feats = module.forward_features(x)
        probs = torch.softmax(module(x), dim=1)
    assert found.features.dtype == np.float32 and found.features.shape == (len(x), 32)
    np.testing.assert_allclose(found.features, feats.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(found.probs, probs.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        found.labels, np.load(reg.dataset_dir("d59") / "data.npz")["y_eval"]
    )


def test_feature_cache_is_hit_and_keyed_by_manifest_ids(copy: Registry) -> None:
    first = extract(copy, "base", "d59")
    path = cache_path(
        copy, copy.model_manifest("base").id, copy.dataset_manifest("d59").id, "train"
    )
    assert path.is_file() and path.parent == copy.repo_root / ".stemma" / "features"
    stamp = path.stat().st_mtime_ns
    # without its weights the model cannot run: the second call must come from the cache
    weights = copy.model_dir("base") / "weights.safetensors"
    weights.rename(weights.with_suffix(".away"))
    again = extract(copy, "base", "d59")
    assert path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.probs, first.probs)
    with pytest.raises(BuildError, match="has no weights"):
        extract(copy, "base", "d59", cache=False)
    # a damaged entry is recomputed, not trusted
    weights.with_suffix(".away").rename(weights)
    path.write_bytes(b"not an npz")
    np.testing.assert_array_equal(extract(copy, "base", "d59").features, first.features)
    # a rebuilt model (new manifest id) gets a new entry
    write(copy.model_dir("base") / "spec.yaml", MODELS["base"].replace("epochs: 4", "epochs: 1"))
    build_model(copy, "base")
    extract(copy, "base", "d59")
    entries = sorted((copy.repo_root / ".stemma" / "features").glob("*-train.npz"))
    assert len(entries) == 2


def test_a_damaged_feature_cache_is_a_miss(copy: Registry, tmp_path: Path) -> None:
    first = extract(copy, "base", "d59", cache=False)
    key = (copy.model_manifest("base").id, copy.dataset_manifest("d59").id)
    path = cache_path(copy, *key, "train")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)  # would block a plain open
    np.testing.assert_array_equal(extract(copy, "base", "d59").features, first.features)
    assert stat.S_ISREG(path.lstat().st_mode)  # replaced by a good entry
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(path.parent)
    path.parent.symlink_to(outside)  # the cache folder a link out of the repository
    np.testing.assert_array_equal(extract(copy, "base", "d59").features, first.features)
    assert list(outside.iterdir()) == []


# -- ranking ----------------------------------------------------------------------------------


def test_logme_ranks_the_trained_base_first_and_skips_misfits(zoo: Path) -> None:
    reg = Registry.open(zoo)
    ranking = explore(reg, "d59", "*", scores=SCORES, decide="logme")
    assert ranking.selected == "base" and ranking.decided_by == "logme"
    assert ranking.rows[0].model == "base"
    assert {r.model for r in ranking.rows} == {"base", "untrained", "noise"}
    assert [r.rank for r in ranking.rows] == [1, 2, 3]
    values = [r.scores["logme"] for r in ranking.rows]
    assert values == sorted(values, reverse=True)
    # each value is LogME of the extracted features, computed independently here
    for row in ranking.rows:
        found = extract(reg, row.model, "d59")
        assert row.scores["logme"] == pytest.approx(logme(found.features, found.labels), abs=1e-6)
        assert set(row.scores) == set(SCORES) and set(row.seconds) == set(SCORES)
        assert row.id == reg.model_manifest(row.model).id
        assert row.tokens is None and row.sample_scores is None and not row.rescored
        # the JSON row: these keys in this order, and read back to the same record
        doc = row.to_dict()
        assert list(doc) == ["model", "id", "scores", "seconds", "extract_seconds", "rank"]
        assert CandidateRow.from_dict(doc) == row
        assert list(row.to_dict(timings=False)) == ["model", "id", "scores", "rank"]
    assert ranking.skipped == (
        Skipped(
            model="wide",
            reason="input shape [1, 12, 12] does not fit the dataset's sample shape [1, 8, 8]",
        ),
    )
    assert ranking.to_dict()["skipped"] == [s.to_dict() for s in ranking.skipped]
    assert ranking.to_dict()["ranking"] == [r.to_dict() for r in ranking.rows]
    assert fits(reg, "base", "d59") and not fits(reg, "wide", "d59") and fits(reg, "wide", "d12")


def test_ties_break_by_name_and_the_deciding_score_orders(copy: Registry) -> None:
    reg = copy
    by_leep = explore(reg, "d59", ["untrained", "noise", "base"], scores=("knn",), decide="leep")
    assert by_leep.scores == ("leep", "knn") and by_leep.decided_by == "leep"
    leep = [r.scores["leep"] for r in by_leep.rows]
    assert leep == sorted(leep, reverse=True)
    # the same model under two names scores identically: the name decides
    shutil.copytree(reg.model_dir("base"), reg.model_dir("abase"))
    tied = explore(Registry.open(reg.repo_root), "d59", "*base", scores=("logme",))
    assert [r.model for r in tied.rows] == ["abase", "base"]
    assert tied.rows[0].scores == tied.rows[1].scores
    with pytest.raises(BuildError, match="unknown score 'bogus'"):
        explore(reg, "d59", scores=("bogus",))


# -- source: auto -----------------------------------------------------------------------------


def test_explore_for_writes_a_deterministic_document(copy: Registry) -> None:
    write(
        copy.model_dir("pick") / "spec.yaml",
        "source: {model: auto, candidates: '*', score: logme}\ndata: {train: d59}\n",
    )
    reg = Registry.open(copy.repo_root)
    ranking = explore_for(reg, "pick")
    doc = ranking.to_dict(timings=False)
    path = reg.model_dir("pick") / "exploration.json"
    first = path.read_bytes()
    assert json.loads(first) == doc
    assert ranking.selected == "base" and ranking.dataset.name == "d59"
    assert doc["selected"] == "base" and doc["decided_by"] == "logme"
    assert doc["dataset"] == {"name": "d59", "id": reg.dataset_manifest("d59").id}
    assert doc["ranking"][0]["model"] == "base"
    assert {r["model"] for r in doc["ranking"]} == {"base", "untrained", "noise"}
    assert all("seconds" not in r for r in doc["ranking"])
    assert [s["model"] for s in doc["skipped"]] == ["wide"]
    explore_for(reg, "pick")
    assert path.read_bytes() == first


def test_no_fitting_candidate_names_the_spec(copy: Registry) -> None:
    write(
        copy.model_dir("pick") / "spec.yaml",
        "source: {model: auto, candidates: 'wi*'}\ndata: {train: d59}\n",
    )
    with pytest.raises(BuildError) as err:
        explore_for(Registry.open(copy.repo_root), "pick")
    assert str(err.value).startswith(
        "models/pick/spec.yaml at /source/candidates: no candidate matching 'wi*' fits dataset"
        " 'd59' (wide: input shape [1, 12, 12] does not fit"
    )
    assert not (copy.model_dir("pick") / "exploration.json").exists()


def test_progress_is_reported_per_candidate(zoo: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    ranking = explore(
        Registry.open(zoo),
        "d59",
        ["noise", "untrained"],
        scores=("knn",),
        progress=lambda done, total, model: seen.append((done, total, model)),
    )
    assert len(ranking.rows) == 2
    assert seen == [(0, 2, "noise"), (1, 2, "untrained"), (2, 2, "")]


def test_cli_table_json_and_usage(zoo: Path, cli: object) -> None:
    res = cli(["explore", "d59", "--score", "all"], zoo)  # type: ignore[operator]
    assert res.code == 0, res.stderr
    assert "recommended source: base (highest logme)" in res.stdout
    assert "skipped wide: input shape [1, 12, 12]" in res.stdout
    for name in SCORES:
        assert name in res.stdout
    # every score in full, although the output is no terminal (rich would cut at 80 columns)
    full = json.loads(cli(["explore", "d59", "--score", "all", "--json"], zoo).stdout)  # type: ignore[operator]
    assert "…" not in res.stdout
    for row in full["ranking"]:
        for value in row["scores"].values():
            assert (repr(value) if value is not None else "n/a") in res.stdout
    res = cli(["explore", "d59", "--candidates", "[nu]*", "--score", "knn", "--json"], zoo)  # type: ignore[operator]
    doc = json.loads(res.stdout)
    assert res.code == 0 and doc["decided_by"] == "knn" and doc["scores"] == ["knn"]
    assert sorted(r["model"] for r in doc["ranking"]) == ["noise", "untrained"]
    res = cli(["explore", "d59", "--candidates", "wide"], zoo)  # type: ignore[operator]
    assert res.code == 1 and "error: no candidate matching 'wide' fits dataset 'd59'" in res.stderr
    res = cli(["explore"], zoo)  # type: ignore[operator]
    assert res.code == 2 and "give a DATASET or --for NAME" in res.stderr


# -- end to end: stemma pipeline + dvc repro ----------------------------------------------------


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run dvc in `repo` (one BLAS / OpenMP thread: the stages' models are tiny)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args, "--quiet"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_source_auto_through_dvc_repro(registry: Registry, cli: object) -> None:
    repo = registry.repo_root
    for name in ("d04", "d59"):
        write(repo / "datasets" / name / "spec.yaml", DATASETS[name])
    write(repo / "models" / "base" / "spec.yaml", MODELS["base"])
    write(repo / "models" / "untrained" / "spec.yaml", MODELS["untrained"])
    write(
        repo / "models" / "target" / "spec.yaml",
        """
        source: {model: auto, candidates: '*', score: logme}
        data: {train: d59}
        strategy: {mapping: by-name, reinit: ["head.*"]}
        training: {epochs: 1, batch_size: 64, optimizer: adamw, lr: 3.0e-3, seed: 0}
        """,
    )
    res = cli(["pipeline"], repo)  # type: ignore[operator]
    assert res.code == 0, res.stderr
    stages = (repo / "models/target/dvc.yaml").read_text()
    assert "explore-target:" in stages and "cmd: stemma explore --for target" in stages
    # the upstream stages are built here and recorded as done (a process per stage is slow);
    # dvc repro then runs the exploration stage and the build that reads its choice
    reg = Registry.open(repo)
    upstream = [
        *(f"datasets/{d}/dvc.yaml:dataset-{d}" for d in ("d04", "d59")),
        *(f"models/{m}/dvc.yaml:model-{m}" for m in ("base", "untrained")),
    ]
    for name in ("d04", "d59"):
        build_dataset(reg, name)
    for name in ("base", "untrained"):
        build_model(reg, name)
    done = dvc(repo, "commit", "--force", *upstream)
    assert done.returncode == 0, done.stdout + done.stderr
    done = dvc(repo, "repro")
    assert done.returncode == 0, done.stdout + done.stderr
    exploration = json.loads((repo / "models" / "target" / "exploration.json").read_text())
    reg = Registry.open(repo)
    manifest = reg.model_manifest("target")
    assert manifest is not None
    assert manifest.raw["source"]["model"] == "base" == exploration["selected"]
    assert manifest.raw["source"]["id"] == reg.model_manifest("base").id
    assert manifest.raw["exploration"] == exploration
    assert exploration["decided_by"] == "logme"
    assert [r["model"] for r in exploration["ranking"]] == ["base", "untrained"]
    lock = (repo / "models/target/dvc.lock").read_text()
    assert "explore-target:" in lock and "model-target:" in lock
    assert dvc(repo, "status").returncode == 0  # quiet status exits 1 when a stage is stale


def test_a_bounded_sample_is_scored_and_recorded(zoo: Path) -> None:
    """`sample` scores every candidate on the same seeded, stratified rows (features of the
    sample only, no cache entry written for them) and records the sample in the document."""
    from stemma.migration.data import load_dataset
    from stemma.migration.transferability import stratified_sample

    reg = Registry.open(zoo)
    ranking = explore(reg, "d59", ["base", "untrained"], scores=("logme",), sample=60)
    doc = ranking.to_dict(timings=False)
    total = len(load_dataset(reg, "d59").y_train)
    assert doc["sample"] == {"rows": 60, "of": total, "seed": 0, "stratified": True}
    assert doc["selected"] == "base"
    full = extract(reg, "base", "d59")
    rows = stratified_sample(full.labels, 60, seed=0)
    want = round(logme(full.features[rows], full.labels[rows]), 6)
    got = {row["model"]: row["scores"]["logme"] for row in doc["ranking"]}
    assert got["base"] == pytest.approx(want, abs=2e-6)
    # without a sample the document is as before: no "sample" key
    assert "sample" not in explore(reg, "d59", ["base"], scores=("logme",)).to_dict()
