"""Library families (timm, torchvision, transformers): built, mapped, trained and loaded back.

One end-to-end registry builds a base and a derived model of each family through `dvc repro`;
the unit tests cover heads, features, by-shape order and the refusals.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import new_registry, write
from safetensors.torch import load_file
from stemma.migration.architectures import build_module, head_prefix, make_config, penultimate
from stemma.migration.build import build_model
from stemma.migration.mapping import plan
from stemma.migration.strategy import Strategy, frozen_names
from stemma.registry import Registry
from stemma.registry.errors import BuildError

BERT = {
    "model_type": "bert",
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 16,
}
TRAIN = "training: {epochs: 1, batch_size: 32, optimizer: adam, lr: 1.0e-3, seed: 0}\n"
IMAGES = """
    source: sklearn:digits
    select: {classes: [%s], relabel: contiguous, limit: 120}
    transforms: [{resize: [32, 32]}]
    split: {eval: 0.25, seed: 0}
"""
SPECS = {
    "datasets/img04/spec.yaml": IMAGES % "0, 1, 2, 3, 4",
    "datasets/img59/spec.yaml": IMAGES % "5, 6, 7, 8, 9",
    "datasets/tok/spec.yaml": "source: file:datasets/tok/tokens.npz\nsplit: {eval: 0.25}\n",
    "models/tb/spec.yaml": "architecture: {family: timm, name: resnet18}\n"
    "data: {train: img04}\n" + TRAIN,
    # frozen stem (batch-norm included) trained without the cache: held in eval mode
    "models/td/spec.yaml": "source: {model: tb}\ndata: {train: img59}\n"
    'strategy: {freeze: ["conv1.*", "bn1.*", "layer1.*"], reinit: ["fc.*"]}\n' + TRAIN,
    "models/vb/spec.yaml": "architecture: {family: torchvision, name: mobilenet_v3_small}\n"
    "data: {train: img04}\n" + TRAIN,
    "models/vd/spec.yaml": "source: {model: vb}\ndata: {train: img59}\n"
    'strategy: {mode: linear-probe, reinit: ["classifier.*"]}\n' + TRAIN,
    "models/hb/spec.yaml": f"architecture: {{family: transformers, config: {json.dumps(BERT)}}}\n"
    "data: {train: tok}\ntraining: {epochs: 3, batch_size: 32, optimizer: adamw, lr: 3.0e-3}\n",
    "models/hd/spec.yaml": "source: {model: hb}\ndata: {train: tok}\n"
    'strategy: {mode: linear-probe, reinit: ["classifier.*"]}\n' + TRAIN,
}


def tokens(path: Path, n: int = 200, length: int = 12) -> None:
    """Synthetic token ids (int64, 0 = padding) whose second token tells the class."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.integers(4, 64, (n, length))
    x[:, 1] = y + 1
    for i, end in enumerate(rng.integers(6, length + 1, n)):
        x[i, end:] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x.astype(np.int64), y=y)


def dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# -- unit -------------------------------------------------------------------------------------


def test_heads_features_and_strategy_follow_each_library() -> None:
    timm_m = build_module(make_config({"family": "timm", "name": "resnet18"}, [1, 32, 32], 5))
    tv = build_module(make_config({"family": "torchvision", "name": "resnet18"}, [1, 32, 32], 4))
    hf = build_module(make_config({"family": "transformers", "config": BERT}, [12], 3))
    assert [head_prefix(m) for m in (timm_m, tv, hf)] == ["fc", "fc", "classifier"]
    x = torch.rand(2, 1, 32, 32)
    assert penultimate(timm_m.eval(), x).shape == (2, 512)
    assert tv.eval()(x).shape == (2, 4)  # one channel repeated to torchvision's three
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    assert hf.eval()(ids).shape == (2, 3) and penultimate(hf, ids).shape == (2, 32)
    frozen = frozen_names(timm_m, Strategy(mode="linear-probe"))
    assert {n for n, _ in timm_m.named_parameters()} - frozen == {"fc.weight", "fc.bias"}
    # the library's own constructors take stemma's tensors unchanged
    import timm
    import torchvision
    import transformers

    timm.create_model("resnet18", pretrained=False, num_classes=5, in_chans=1).load_state_dict(
        timm_m.state_dict(), strict=True
    )
    torchvision.models.get_model("resnet18", weights=None, num_classes=4).load_state_dict(
        tv.state_dict(), strict=True
    )
    cfg = transformers.AutoConfig.for_model(**BERT, num_labels=3)
    auto = transformers.AutoModelForSequenceClassification.from_config(cfg)
    auto.load_state_dict(hf.state_dict(), strict=True)
    auto.eval()
    mask = (ids != 0).long()
    assert torch.allclose(auto(input_ids=ids, attention_mask=mask).logits, hf(ids))


def test_by_shape_pairs_in_natural_name_order_and_refuses_ambiguity() -> None:
    t = torch.zeros
    source = {"l.10.w": t(3), "l.2.w": t(3), "l.1.w": t(3), "h": t(2)}
    target = {"b.1.w": t(3), "b.2.w": t(3), "b.10.w": t(3), "h": t(2)}
    pairs = plan(source, target, "by-shape").pairs
    assert pairs == {"h": "h", "b.1.w": "l.1.w", "b.2.w": "l.2.w", "b.10.w": "l.10.w"}
    with pytest.raises(BuildError, match=r"by-shape is ambiguous for shape \[3\]"):
        plan({**source, "x": t(3)}, target, "by-shape")


def test_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # an import of timm now fails
    with pytest.raises(BuildError) as err:
        build_module(make_config({"family": "timm", "name": "resnet18"}, [1, 8, 8], 2))
    assert str(err.value) == (
        "the timm package is not installed; install it with pip install 'stemma-ml[timm]'"
    )


# -- refusals of a derived build ----------------------------------------------------------------


@pytest.fixture
def small(registry: Registry) -> Registry:
    """A built mlp base on digits, plus the datasets."""
    write(registry.root / "datasets/d/spec.yaml", "source: sklearn:digits\nselect: {limit: 300}\n")
    write(
        registry.root / "models/base/spec.yaml",
        "architecture: {family: mlp, hidden: [16, 16]}\ndata: {train: d}\n"
        'training: {epochs: 1, seed: 0}\ngates: {accuracy: ">= 0.99"}\n',
    )
    from stemma.migration.build import build_dataset

    reg = Registry.open(registry.root)
    build_dataset(reg, "d")
    build_model(reg, "base")
    return Registry.open(registry.root)


def _refused(reg: Registry, name: str, spec: str, match: str) -> None:
    write(reg.model_dir(name) / "spec.yaml", spec)
    with pytest.raises(BuildError, match=match) as err:
        build_model(Registry.open(reg.root), name)
    assert "\n" not in str(err.value)
    assert [p.name for p in reg.model_dir(name).iterdir()] == ["spec.yaml"]


def test_refusals_write_nothing(small: Registry) -> None:
    ok = "source: {model: base, allow_failed_gates: true}\ndata: {train: d}\n"
    _refused(
        small,
        "gated",
        "source: {model: base}\ndata: {train: d}\n",
        r"source model 'base' failed its gates \(accuracy\); fix it, or set",
    )
    _refused(
        small,
        "nothing",
        ok + 'architecture: {family: cnn, channels: [4]}\nstrategy: {reinit: ["head.*"]}\n',
        r"^models/nothing/spec.yaml at /strategy/mapping: mapping by-name transfers no tensor"
        r" from source 'base'",
    )
    _refused(
        small,
        "ambiguous",
        ok
        + "architecture: {family: mlp, hidden: [8, 16, 16, 16]}\nstrategy: {mapping: by-shape}\n",
        r"mapping by-shape is ambiguous for shape \[16\]: 2 target tensors \(body.4.bias",
    )
    write(small.model_dir("allowed") / "spec.yaml", ok + "training: {epochs: 1}\n")
    doc = build_model(Registry.open(small.root), "allowed")
    assert {r["kind"] for r in doc["architecture"]["tensors"]} == {"parameter"}


# -- end to end ---------------------------------------------------------------------------------


def test_three_families_build_derive_and_load_through_dvc_repro(registry: Registry, cli) -> None:
    reg = new_registry(registry.repo_root.parent / "fam", registry.repo_root, SPECS)
    repo = reg.repo_root
    tokens(repo / "datasets/tok/tokens.npz")
    assert cli(["pipeline"], repo).code == 0
    dvc(repo, "repro")
    weights = {m: load_file(repo / f"models/{m}/weights.safetensors") for m in SPECS_MODELS}
    for base, derived in (("tb", "td"), ("vb", "vd"), ("hb", "hd")):
        doc = json.loads((repo / f"models/{derived}/manifest.json").read_text())
        frozen = [r for r in doc["architecture"]["tensors"] if r["frozen"]]
        assert any(r["kind"] == "buffer" for r in frozen) or base == "hb"
        for row in frozen:  # frozen parameters and batch-norm statistics: the source's bits
            assert torch.equal(weights[base][row["name"]], weights[derived][row["name"]])
        assert doc["checks"]["parameters"]["passed"]
    td = json.loads((repo / "models/td/manifest.json").read_text())
    moving = [r for r in td["architecture"]["tensors"] if r["name"] == "layer2.0.bn1.running_mean"]
    assert moving[0]["kind"] == "buffer" and not moving[0]["frozen"]
    assert json.loads((repo / "models/vd/manifest.json").read_text())["transfer"]["features_cached"]

    import timm
    import torchvision
    import transformers

    timm.create_model("resnet18", pretrained=False, num_classes=5, in_chans=1).load_state_dict(
        weights["td"], strict=True
    )
    torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=5).load_state_dict(
        weights["vd"], strict=True
    )
    cfg = transformers.AutoConfig.for_model(**BERT, num_labels=3)
    transformers.AutoModelForSequenceClassification.from_config(cfg).load_state_dict(
        weights["hd"], strict=True
    )

    res = cli(["verify", "hd", "--rebuild"], repo)
    assert res.code == 0, res.stdout + res.stderr
    assert "identical" in res.stdout
    res = cli(["explore", "img59", "--json"], repo)
    assert res.code == 0, res.stderr
    ranked = [row["model"] for row in json.loads(res.stdout)["ranking"]]
    assert {"tb", "td", "vb", "vd"} <= set(ranked)


SPECS_MODELS = ("tb", "td", "vb", "vd", "hb", "hd")
