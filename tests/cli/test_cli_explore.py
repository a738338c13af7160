"""`stemma explore --sample N --rescore K` on a real tiny registry: the output says which rows
were scored and which candidates were scored again on the whole split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import write
from stemma.migration.build import build_dataset, build_model
from stemma.registry import Registry

TRAIN = "{epochs: %d, batch_size: 64, optimizer: adamw, lr: 3.0e-3, seed: 0}"
DATASETS = {
    "d04": "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n",
    "d59": "source: sklearn:digits\nselect: {classes: [5, 6, 7, 8, 9], relabel: contiguous}\n",
}
# target digits 5-9: the base trained on digits 0-4 is the sensible source
MODELS = {
    "base": f"architecture: {{family: mlp, hidden: [32]}}\ndata: {{train: d04}}\n"
    f"training: {TRAIN % 4}\n",
    "narrow": f"architecture: {{family: mlp, hidden: [8]}}\ndata: {{train: d04}}\n"
    f"training: {TRAIN % 1}\n",
    "untrained": f"architecture: {{family: mlp, hidden: [32]}}\ndata: {{train: d04}}\n"
    f"training: {TRAIN % 0}\n",
}
SAMPLE = 60


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory, registry_template: Path) -> Path:
    """A registry with two datasets and three candidate sources built (read-only)."""
    repo = tmp_path_factory.mktemp("explore-zoo") / "repo"
    shutil.copytree(registry_template, repo, symlinks=True)
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


def explore_json(cli: Any, zoo: Path, *args: str) -> dict[str, Any]:
    """`stemma explore d59 ARGS --json`, which must succeed."""
    res = cli(["explore", "d59", *args, "--json"], zoo)
    assert res.code == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def test_sample_and_rescore_say_which_rows_and_rank_the_same_candidates(
    zoo: Path, cli: Any
) -> None:
    whole = explore_json(cli, zoo)
    assert "sample" not in whole
    ranked = {row["model"] for row in whole["ranking"]}
    assert ranked == set(MODELS)

    sampled = explore_json(cli, zoo, "--sample", str(SAMPLE))
    assert {row["model"] for row in sampled["ranking"]} == ranked
    rows_of = sampled["sample"]["of"]
    assert sampled["sample"] == {"rows": SAMPLE, "of": rows_of, "seed": 0, "stratified": True}
    assert rows_of > SAMPLE
    assert not any(row.get("rescored") for row in sampled["ranking"])

    doc = explore_json(cli, zoo, "--sample", str(SAMPLE), "--rescore", "2")
    assert doc["sample"] == {**sampled["sample"], "rescored": 2}
    assert {row["model"] for row in doc["ranking"]} == ranked
    again = [row for row in doc["ranking"] if row.get("rescored")]
    # the two best on the sample, ranked first by their whole-split scores
    assert [row["rank"] for row in again] == [1, 2]
    best_on_sample = [row["model"] for row in sampled["ranking"][:2]]
    assert sorted(row["model"] for row in again) == sorted(best_on_sample)
    full = {row["model"]: row["scores"] for row in whole["ranking"]}
    for row in again:
        assert row["scores"] == full[row["model"]]
        assert "sample_scores" in row
    assert doc["selected"] == whole["selected"] == "base"


def test_the_table_names_the_sample_and_the_rescored(zoo: Path, cli: Any) -> None:
    res = cli(["explore", "d59", "--sample", str(SAMPLE), "--rescore", "1"], zoo)
    assert res.code == 0, res.stderr
    assert f"scored on a stratified sample of {SAMPLE} of " in res.stdout
    assert "rescored on the whole split (best 1 on the sample): base" in res.stdout
    assert "recommended source: base" in res.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["d59", "--rescore", "2"], 1, "error: --rescore 2 needs --sample N"),
        (["--for", "base", "--sample", "10"], 1, "--for always scores the whole split"),
        (["d59", "--sample", "0"], 2, "Invalid value for '--sample'"),
        (["d59", "--sample", "10", "--rescore", "0"], 2, "Invalid value for '--rescore'"),
        (["d59", "--sample", "ten"], 2, "Invalid value for '--sample'"),
    ],
)
def test_bad_sample_or_rescore_is_one_line(
    zoo: Path, cli: Any, args: list[str], code: int, message: str
) -> None:
    res = cli(["explore", *args], zoo)
    assert res.code == code
    assert message in res.stderr
    if code == 1:
        assert res.stderr.strip().count("\n") == 0, res.stderr


def test_help_documents_sample_and_rescore(zoo: Path, cli: Any) -> None:
    res = cli(["explore", "--help"], zoo)
    assert res.code == 0
    for flag in ("--sample", "--rescore"):
        assert flag in res.stdout
