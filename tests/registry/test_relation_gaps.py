"""A merge names every parent where one source used to be shown (its dvc.yaml artifact entry,
`stemma ls` and `ls --json`), and `relation: quantized` without a `quantize` block is a spec
problem that `stemma validate` reports."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from conftest import write
from factories import dataset_manifest, model_manifest
from stemma.registry import Registry
from stemma.registry.pipeline import render as pipeline
from stemma.registry.query.listing import list_entries

SPECS = {
    "datasets/d/spec.yaml": "source: sklearn:digits\nselect: {classes: [0, 1, 2, 3, 4]}\n",
    "models/base/spec.yaml": """
        architecture: {family: mlp, hidden: [16]}
        data: {train: d}
        training: {epochs: 1, batch_size: 64, optimizer: adam, lr: 0.01, seed: 0}
    """,
    "models/ft-a/spec.yaml": "source: {model: base}\ndata: {train: d}\n",
    "models/ft-b/spec.yaml": "source: {model: base}\ndata: {train: d}\n",
    "models/merged/spec.yaml": """
        source:
          relation: merge
          models: [ft-a, ft-b]
          base: base
          merge: {method: ties, density: 0.5}
        data: {train: d}
    """,
}


@pytest.fixture
def reg(registry: Registry) -> Registry:
    for rel, text in SPECS.items():
        write(registry.root / rel, text)
    return Registry.open(registry.root)


def test_merge_artifact_names_every_parent(reg: Registry) -> None:
    doc = pipeline.render_dict(reg)
    assert doc["artifacts"]["merged"]["meta"] == {
        "source": ["ft-a", "ft-b", "base"],
        "relation": "merge",
    }
    # a single-parent model keeps its one name (byte-identical entries)
    assert doc["artifacts"]["ft-a"]["meta"] == {"source": "base", "relation": "finetune"}
    files = pipeline.render_files(reg)
    assert yaml.safe_load(files["dvc.yaml"]) == {"artifacts": doc["artifacts"]}


def _built(reg: Registry) -> Registry:
    dataset_manifest(reg, "d")
    ids = {n: model_manifest(reg, n)["id"] for n in ("base", "ft-a", "ft-b")}
    parents = [{"model": n, "id": ids[n]} for n in ("ft-a", "ft-b", "base")]
    source = {"model": "ft-a", "relation": "merge", "id": None, "parents": parents}
    from stemma.registry.rules.parents import combined_id

    source["id"] = combined_id([p["id"] for p in parents])
    model_manifest(reg, "merged", source=source)
    return Registry.open(reg.root)


@pytest.mark.parametrize("built", [False, True])
def test_ls_shows_every_parent_of_a_merge(reg: Registry, cli: Any, built: bool) -> None:
    if built:
        reg = _built(reg)
    rows = {e.name: e for e in list_entries(reg)}
    assert rows["merged"].to_dict()["source"] == ["ft-a", "ft-b", "base"]
    assert rows["ft-a"].to_dict()["source"] == "base"
    res = cli(["ls", "--json"], reg.root)
    assert res.code == 0, res.stderr
    got = {r["name"]: r["source"] for r in json.loads(res.stdout)}
    assert got["merged"] == ["ft-a", "ft-b", "base"] and got["ft-b"] == "base"
    res = cli(["ls"], reg.root)
    assert res.code == 0, res.stderr
    line = next(row for row in res.stdout.splitlines() if " merged " in f" {row} ")
    assert "ft-a+ft-b+base" in line


QUANT = "source: {model: base, relation: quantized}\ndata: {train: d}\n"


def test_validate_refuses_quantized_without_a_quantize_block(reg: Registry, cli: Any) -> None:
    write(reg.root / "models/q/spec.yaml", QUANT)
    before = (reg.root / "models/q/spec.yaml").read_bytes()
    res = cli(["validate"], reg.root)
    assert res.code == 1, res.stdout
    lines = [ln for ln in (res.stderr + res.stdout).splitlines() if "models/q/spec.yaml" in ln]
    assert lines and "/quantize" in lines[0], res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    assert (reg.root / "models/q/spec.yaml").read_bytes() == before
    # with the block the spec is valid
    write(reg.root / "models/q/spec.yaml", QUANT + "quantize: {method: int8_dynamic}\n")
    res = cli(["validate"], reg.root)
    assert res.code == 0, res.stderr + res.stdout
