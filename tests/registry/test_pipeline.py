"""Pipeline generation (a dvc.yaml per dataset and model folder, the root one for artifacts and
stages of one's own), and `dvc repro` rebuilding exactly the stale models, reproducibly."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import dvc, git, new_registry, write
from factories import Fact
from stemma.registry import Registry
from stemma.registry.pipeline import _pipecache, pipefiles
from stemma.registry.pipeline import render as pipeline

TINY = "{epochs: 1, batch_size: 64, optimizer: adam, lr: %s, seed: 0}"
SPECS = {
    "datasets/d04/spec.yaml": """
        source: sklearn:digits
        select: {classes: [0, 1, 2, 3, 4], limit: 300}
    """,
    "datasets/d59/spec.yaml": """
        source: sklearn:digits
        select: {classes: [5, 6, 7, 8, 9], relabel: contiguous, limit: 300}
    """,
    "models/base/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [16]}}
        data: {{train: d04}}
        training: {TINY % "1.0e-2"}
    """,
    "models/ft/spec.yaml": f"""
        source: {{model: base}}
        data: {{train: d59}}
        strategy: {{reinit: ["head.*"]}}
        training: {TINY % "1.0e-2"}
    """,
    "models/probe/spec.yaml": f"""
        source: {{model: ft}}
        data: {{train: d59}}
        strategy: {{mode: linear-probe}}
        training: {TINY % "1.0e-2"}
    """,
    "models/other/spec.yaml": f"""
        architecture: {{family: mlp, hidden: [8]}}
        data: {{train: d59}}
        training: {TINY % "1.0e-2"}
    """,
}
MODELS = ("base", "ft", "probe", "other")


def state(reg: Registry) -> dict[str, tuple[str, bytes, bytes]]:
    """Per model: manifest id, weights bytes and the raw manifest bytes."""
    out = {}
    for name in MODELS:
        folder = reg.model_dir(name)
        manifest = (folder / "manifest.json").read_bytes()
        out[name] = (
            json.loads(manifest)["id"],
            (folder / "weights.safetensors").read_bytes(),
            manifest,
        )
    return out


def test_pipeline_is_deterministic_and_follows_lineage(registry: Registry) -> None:
    reg = new_registry(registry.repo_root.parent / "p", registry.repo_root, SPECS)
    doc = pipeline.render_dict(reg)
    assert pipeline.render(reg) == pipeline.render(Registry.open(reg.root))
    stages = list(doc["stages"])
    assert stages.index("model-base") < stages.index("model-ft") < stages.index("model-probe")
    ft = doc["stages"]["model-ft"]
    assert ft["cmd"] == "stemma build model ft"
    assert "models/base/weights.safetensors" in ft["deps"]
    assert "models/base/manifest.json" in ft["deps"]
    assert "datasets/d59/data.npz" in ft["deps"]
    outs = {next(iter(o)): next(iter(o.values())) for o in ft["outs"]}
    assert outs["models/ft/manifest.json"]["cache"] is False
    assert "cache" not in outs["models/ft/weights.safetensors"]
    assert doc["artifacts"]["ft"] == {
        "path": "models/ft/weights.safetensors",
        "type": "model",
        "meta": {"source": "base", "relation": "finetune"},
    }
    files = pipeline.render_files(reg)
    assert yaml.safe_load(files["dvc.yaml"]) == {"artifacts": doc["artifacts"]}
    stages = {}
    for path, text in files.items():
        for name, stage in (yaml.safe_load(text).get("stages") or {}).items():
            if path != "dvc.yaml":  # one folder's file holds its own stages, run from the root
                assert path == pipeline.stage_file(reg, name.split("-")[0], name.split("-", 1)[1])
                assert stage.pop("wdir") == "../.."
            stages[name] = stage
    assert stages == doc["stages"]
    assert list(files)[1:] == [
        *(f"datasets/{d}/dvc.yaml" for d in ("d04", "d59")),
        *(f"models/{m}/dvc.yaml" for m in ("base", "ft", "other", "probe")),
    ]


def test_pipeline_check_fails_when_out_of_step(registry: Registry, cli) -> None:
    reg = new_registry(registry.repo_root.parent / "p", registry.repo_root, SPECS)
    assert cli(["pipeline", "--check"], reg.root).code == 1
    res = cli(["pipeline"], reg.root)
    assert res.code == 0 and "wrote 7 dvc.yaml files" in res.stdout
    assert cli(["pipeline", "--check"], reg.root).code == 0
    assert "unchanged" in cli(["pipeline"], reg.root).stdout
    write(reg.root / "models/extra/spec.yaml", "source: {model: other}\ndata: {train: d04}\n")
    before = (reg.root / "dvc.yaml").read_bytes()
    res = cli(["pipeline", "--check"], reg.root)
    assert res.code == 1
    assert res.stderr.strip() == (
        "error: dvc.yaml is out of step with the specs (and 1 more); run `stemma pipeline`"
    )
    assert (reg.root / "dvc.yaml").read_bytes() == before
    assert not (reg.root / "models/extra/dvc.yaml").exists()

    # One model's own file edited by hand: the check names it.
    assert cli(["pipeline"], reg.root).code == 0
    own = reg.root / "models/ft/dvc.yaml"
    own.write_text(own.read_text().replace("stemma build model ft", "stemma build model ftx"))
    res = cli(["pipeline", "--check"], reg.root)
    assert res.code == 1 and res.stderr.strip() == (
        "error: models/ft/dvc.yaml is out of step with the specs; run `stemma pipeline`"
    )


def test_pipeline_deletes_the_files_of_removed_models_and_keeps_foreign_stages(
    registry: Registry, cli
) -> None:
    reg = new_registry(registry.repo_root.parent / "p", registry.repo_root, SPECS)
    root = reg.repo_root
    own = {"cmd": "python train.py", "deps": ["train.py"], "outs": ["models/own/w.bin"]}
    write(root / "dvc.yaml", yaml.safe_dump({"stages": {"train-own": own}}))
    assert cli(["pipeline"], root).code == 0
    assert yaml.safe_load((root / "dvc.yaml").read_text())["stages"] == {"train-own": own}
    write(root / "models/probe/dvc.lock", "schema: '2.0'\nstages: {}\n")  # as DVC leaves it
    hand = root / "models/other/notes/dvc.yaml"  # not stemma's: never touched
    write(hand, "stages: {}\n")
    for name in ("probe", "other"):
        (root / "models" / name / "spec.yaml").unlink()
    assert cli(["pipeline", "--check"], root).code == 1
    assert [str(d) for d in pipefiles.differences(Registry.open(root))] == [
        "dvc.yaml is out of step with the specs",
        "models/other/dvc.yaml belongs to no dataset or model",
        "models/probe/dvc.yaml belongs to no dataset or model",
    ]
    res = cli(["pipeline"], root)
    assert res.code == 0 and "removed 3 stale files" in res.stdout, res.stdout
    for name in ("probe", "other"):
        assert not (root / "models" / name / "dvc.yaml").exists()
    assert not (root / "models/probe/dvc.lock").exists() and hand.exists()
    assert yaml.safe_load((root / "dvc.yaml").read_text())["stages"] == {"train-own": own}
    assert cli(["pipeline", "--check"], root).code == 0


def test_pipeline_moves_lock_entries_of_the_old_layout(registry: Registry, cli) -> None:
    reg = new_registry(registry.repo_root.parent / "p", registry.repo_root, SPECS)
    root = reg.repo_root
    entry = {"cmd": "stemma build model ft", "deps": [{"path": "models/ft/spec.yaml"}]}
    theirs = {"cmd": "python train.py"}
    lock = {"schema": "2.0", "stages": {"model-ft": entry, "train-own": theirs}}
    write(root / "dvc.lock", yaml.safe_dump(lock))
    res = cli(["pipeline"], root)
    assert res.code == 0 and "moved 1 lock entries" in res.stdout
    assert yaml.safe_load((root / "models/ft/dvc.lock").read_text()) == {
        "schema": "2.0",
        "stages": {"model-ft": entry},
    }
    assert yaml.safe_load((root / "dvc.lock").read_text())["stages"] == {"train-own": theirs}


def test_model_stages_depend_on_the_settings_as_params(registry: Registry) -> None:
    reg = new_registry(registry.repo_root.parent / "d", registry.repo_root, SPECS)
    stages = pipeline.render_dict(reg)["stages"]
    assert {name: stage.get("params", [None])[0] for name, stage in stages.items()} == {
        name: {"stemma.yaml": None} if name.startswith("model-") else None for name in stages
    }
    assert {name for name in stages if name.startswith("model-")} == {f"model-{m}" for m in MODELS}
    text = pipeline.render(reg)
    settings = reg.repo_root / "stemma.yaml"
    settings.write_text(settings.read_text() + "defaults:\n  training: {lr: 0.1}\n")
    assert pipeline.render(Registry.open(reg.root)) == text  # the file, whatever it sets


@pytest.mark.slow
def test_dvc_repro_rebuilds_exactly_the_stale_family(registry: Registry, cli) -> None:
    reg = new_registry(registry.repo_root.parent / "e2e", registry.repo_root, SPECS)
    repo = reg.repo_root
    assert cli(["pipeline"], repo).code == 0
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "build")
    first = state(Registry.open(repo))
    assert cli(["validate"], repo).code == 0

    # Nothing is stale: a second repro runs no stage.
    out = dvc(repo, "repro")
    assert "Running stage" not in out

    # A forced rebuild on CPU reproduces every byte of the weights and every id.
    dvc(repo, "repro", "--force")
    forced = state(Registry.open(repo))
    for name in MODELS:
        assert forced[name][:2] == first[name][:2], name

    # Change the base's learning rate: the base and its descendants are re-derived.
    spec = repo / "models/base/spec.yaml"
    spec.write_text(spec.read_text().replace("lr: 1.0e-2", "lr: 3.0e-3"))
    out = dvc(repo, "repro")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {f"models/{m}/dvc.yaml:model-{m}" for m in ("base", "ft", "probe")}
    after = state(Registry.open(repo))
    for name in ("base", "ft", "probe"):
        assert after[name][0] != forced[name][0], name
    assert after["other"][2] == forced["other"][2]  # untouched, to the byte
    reg = Registry.open(repo)
    assert reg.model_manifest("ft").source_id == after["base"][0]
    assert reg.model_manifest("probe").source_id == after["ft"][0]
    assert cli(["validate"], repo).code == 0

    # stemma.yaml is a params file of every model stage: a training default set, changed or
    # removed makes exactly the model stages stale to DVC.
    settings = repo / "stemma.yaml"
    plain = settings.read_text()
    models = {f"models/{name}/dvc.yaml:model-{name}" for name in MODELS}
    for text in (
        plain + "defaults:\n  training: {weight_decay: 0.0}\n",
        plain + "defaults:\n  training: {weight_decay: 1.0e-4}\n",
        plain,
    ):
        settings.write_text(text)
        assert set(json.loads(dvc(repo, "status", "--json"))) == models
        dvc(repo, "commit", "--force")  # take the outputs as they stand, new params and all
        assert json.loads(dvc(repo, "status", "--json")) == {}
    assert cli(["pipeline", "--check"], repo).code == 0
    # Each model's lock lies beside its own dvc.yaml; the root has none of stemma's stages.
    assert not (repo / "dvc.lock").exists()
    assert "model-probe:" in (repo / "models/probe/dvc.lock").read_text()
    metrics = json.loads(dvc(repo, "metrics", "show", "--json"))
    shown = next(iter(metrics.values()))["data"]
    assert {f"models/{m}/metrics.json" for m in MODELS} <= set(shown)


def test_check_trusts_its_cache_only_while_the_inputs_are_the_same(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = new_registry(registry.repo_root.parent / "c", registry.repo_root, SPECS)
    root = reg.repo_root
    arch = "architecture: {family: entrypoint, entrypoint: 'nets.small:build'}"
    write(
        root / "models/mine/spec.yaml", f"{arch}\ndata: {{train: d04}}\ntraining: {{epochs: 2}}\n"
    )
    assert pipefiles.write(Registry.open(root))
    assert Fact(root, _pipecache.FACT).is_file()

    def no_render(reg: Registry) -> dict[str, str]:
        raise AssertionError("rendered")

    with monkeypatch.context() as patch:  # an unchanged registry: hashes, no render
        patch.setattr(pipefiles, "render_docs", no_render)
        assert pipefiles.differences(Registry.open(root)) == []
        mine = root / "models/mine/dvc.yaml"
        mine.write_text(mine.read_text() + "# edited\n")
        assert [str(d) for d in pipefiles.differences(Registry.open(root))] == [
            "models/mine/dvc.yaml is out of step with the specs"
        ]
    assert pipefiles.write(Registry.open(root))

    # A changed spec renders again, but writes out as YAML only the files that changed (a
    # value inside the training block is a param DVC reads: the pipeline stays the same).
    emitted: list[dict[str, object]] = []
    real = pipefiles.file_text
    with monkeypatch.context() as patch:
        patch.setattr(pipefiles, "file_text", lambda doc: emitted.append(doc) or real(doc))
        write(
            root / "models/mine/spec.yaml",
            f"{arch}\ndata: {{train: d04}}\ntraining: {{epochs: 3}}\n",
        )
        assert pipefiles.differences(Registry.open(root)) == [] and emitted == []
        spec = f"{arch}\ndata: {{train: d04}}\ntraining: {{epochs: 3}}\n"
        spec += "description: mine, described\n"
        write(root / "models/mine/spec.yaml", spec)
        assert [str(d) for d in pipefiles.differences(Registry.open(root))] == [
            "dvc.yaml is out of step with the specs"
        ]
        assert [doc["artifacts"]["mine"]["desc"] for doc in emitted] == ["mine, described"]
    assert pipefiles.write(Registry.open(root))

    # The code file appears: no spec changed, but the model now depends on it.
    write(root / "nets/small.py", "def build(in_shape, num_classes): ...\n")
    assert [str(d) for d in pipefiles.differences(Registry.open(root))] == [
        "models/mine/dvc.yaml is out of step with the specs"
    ]
    assert pipefiles.write(Registry.open(root))
    assert "- nets/small.py" in (root / "models/mine/dvc.yaml").read_text()

    # A stage of one's own added to the root dvc.yaml is an input: kept, written first.
    text = (root / "dvc.yaml").read_text()
    write(root / "dvc.yaml", text + "stages:\n  mine:\n    cmd: echo hi\n")
    assert [str(d) for d in pipefiles.differences(Registry.open(root))] == [
        "dvc.yaml is out of step with the specs"
    ]
    assert pipefiles.write(Registry.open(root))
    assert yaml.safe_load((root / "dvc.yaml").read_text())["stages"] == {"mine": {"cmd": "echo hi"}}
    assert pipefiles.differences(Registry.open(root)) == []
    # A damaged cache is rendered anew.
    Fact(root, _pipecache.FACT).write_text("{")
    assert pipefiles.differences(Registry.open(root)) == []
    (root / "models/mine/spec.yaml").unlink()
    assert [str(d) for d in pipefiles.differences(Registry.open(root))][-1] == (
        "models/mine/dvc.yaml belongs to no dataset or model"
    )
