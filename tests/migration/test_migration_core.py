"""The torch core: architectures, parameter mapping, strategies, training, gates, weights."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import numpy as np
import pytest
import torch
from stemma.migration.architectures import (
    build_module,
    infer_architecture,
    make_config,
    stages,
)
from stemma.migration.data import DatasetArrays, materialize
from stemma.migration.evaluate import evaluate
from stemma.migration.gating import gate_records
from stemma.migration.mapping import plan, report, transfer
from stemma.migration.strategy import Strategy, apply_freeze, frozen_names, reinit_names
from stemma.migration.train import TrainConfig, frozen_prefix, train
from stemma.migration.weights import load_pt, load_weights, read_any, save_weights, to_bytes
from stemma.registry.errors import BuildError
from stemma.registry.records.manifest import Gate
from stemma.registry.rules.gates import parse_gate
from torch import nn


@pytest.fixture(scope="module")
def digits() -> DatasetArrays:
    """Digits 0-4, 8x8."""
    return materialize({"source": "sklearn:digits", "select": {"classes": [0, 1, 2, 3, 4]}})


def mlp(hidden: list[int] = [32, 16], classes: int = 5, seed: int = 0) -> nn.Module:  # noqa: B006
    torch.manual_seed(seed)
    return build_module(make_config({"family": "mlp", "hidden": hidden}, [1, 8, 8], classes))


# -- architectures ----------------------------------------------------------------------------


def test_mlp_parameter_names_and_forward_features() -> None:
    model = mlp()
    assert list(model.state_dict()) == [
        "body.0.weight",
        "body.0.bias",
        "body.2.weight",
        "body.2.bias",
        "head.weight",
        "head.bias",
    ]
    x = torch.rand(3, 1, 8, 8)
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (3, 16)
    assert torch.equal(model(x), model.head(feats))


def test_cnn_shapes_do_not_depend_on_input_size() -> None:
    small = build_module(make_config({"family": "cnn", "channels": [4, 8]}, [1, 8, 8], 5))
    large = build_module(make_config({"family": "cnn", "channels": [4, 8]}, [1, 28, 28], 10))
    shapes = {k: tuple(v.shape) for k, v in small.state_dict().items() if "head" not in k}
    assert shapes.items() <= {k: tuple(v.shape) for k, v in large.state_dict().items()}.items()
    assert large(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert [n for n, _, _ in stages(large)][-1] == "head"


def test_entrypoint_architecture_must_be_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "toynet.py").write_text(
        dedent("""
        from torch import nn
        class Net(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
                self.head = nn.Linear(width, 3)
            def forward_features(self, x):
                return self.features(x)
            def forward(self, x):
                return self.head(self.forward_features(x))
        def make(in_shape, num_classes, width=4):
            return Net(width)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = make_config(
        {"family": "entrypoint", "entrypoint": "toynet:make", "options": {"width": 6}},
        [1, 8, 8],
        3,
    )
    with pytest.raises(BuildError, match=r"m.yaml at /architecture/entrypoint: .*not listed"):
        build_module(config, display="m.yaml")
    model = build_module(config, trusted=["toynet:make"])
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    assert [n for n, _, names in stages(model)] == ["features", "head"]
    assert stages(model)[0][2] == ["features.1.weight", "features.1.bias"]


def test_infer_architecture_from_tensors() -> None:
    config = infer_architecture(mlp([20, 10]).state_dict(), [1, 8, 8])
    assert config == {"family": "mlp", "in_shape": [1, 8, 8], "num_classes": 5, "hidden": [20, 10]}
    cnn = build_module(make_config({"family": "cnn", "channels": [3, 5]}, [1, 8, 8], 4))
    assert infer_architecture(cnn.state_dict(), [1, 8, 8])["channels"] == [3, 5]
    with pytest.raises(BuildError, match="in-shape"):
        infer_architecture(cnn.state_dict())


# -- mapping ----------------------------------------------------------------------------------


def test_exact_mapping_copies_everything_and_reports_transferred() -> None:
    source, target = mlp(seed=1), mlp(seed=2)
    tmap = plan(source.state_dict(), target.state_dict(), "exact")
    transfer(target, source.state_dict(), tmap)
    assert to_bytes(target.state_dict()) == to_bytes(source.state_dict())
    rows, unused = report(target, tmap)
    assert {r.origin for r in rows} == {"transferred"} and unused == []
    assert rows[0].to_dict() == {
        "name": "body.0.weight",
        "kind": "parameter",
        "shape": [32, 64],
        "dtype": "float32",
        "origin": "transferred",
        "frozen": False,
        "source_name": "body.0.weight",
    }


def test_exact_mapping_names_the_first_mismatching_tensor() -> None:
    with pytest.raises(BuildError) as err:
        plan(
            mlp().state_dict(),
            mlp(classes=10).state_dict(),
            "exact",
            "m.yaml at /strategy",
            "source 'base'",
        )
    assert str(err.value) == (
        "m.yaml at /strategy: mapping exact: shape mismatch for head.weight: target [10, 16],"
        " source 'base' [5, 16]; use mapping by-name or by-shape"
    )


def test_by_name_and_reinit_report_every_origin() -> None:
    source, target = mlp([32, 16]), mlp([32, 8], classes=3, seed=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    tmap = plan(source.state_dict(), target.state_dict(), "by-name")
    reinit = reinit_names(target, Strategy(reinit=("body.0.bias",)))
    transfer(target, source.state_dict(), tmap, reinit)
    rows, unused = report(target, tmap, reinit)
    origin = {r.name: r.origin for r in rows}
    assert origin == {
        "body.0.weight": "transferred",
        "body.0.bias": "reinitialized",
        "body.2.weight": "new",
        "body.2.bias": "new",
        "head.weight": "new",
        "head.bias": "new",
    }
    assert torch.equal(target.state_dict()["body.0.weight"], source.state_dict()["body.0.weight"])
    assert torch.equal(target.state_dict()["body.0.bias"], before["body.0.bias"])
    assert unused == ["body.0.bias", "body.2.bias", "body.2.weight", "head.bias", "head.weight"]


def test_by_shape_pairs_renamed_tensors_in_order() -> None:
    src = {"enc.w": torch.ones(4, 3), "enc.b": torch.zeros(4), "other": torch.ones(7)}
    tgt = {"body.0.weight": torch.empty(4, 3), "body.0.bias": torch.empty(4)}
    tmap = plan(src, tgt, "by-shape")
    assert tmap.pairs == {"body.0.weight": "enc.w", "body.0.bias": "enc.b"}
    assert tmap.unused == ["other"]
    assert plan(src, tgt, "by-name").pairs == {}


# -- strategies -------------------------------------------------------------------------------


def test_freeze_globs_and_linear_probe() -> None:
    model = mlp()
    assert frozen_names(model, Strategy(freeze=("body.0.*",))) == {"body.0.weight", "body.0.bias"}
    probe = frozen_names(model, Strategy(mode="linear-probe"))
    assert probe == {"body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}
    apply_freeze(model, probe)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "head.weight",
        "head.bias",
    ]


def test_pattern_matching_nothing_names_the_pointer() -> None:
    with pytest.raises(BuildError, match=r"^m.yaml at /strategy/freeze/1: pattern 'enc.\*'"):
        frozen_names(mlp(), Strategy(freeze=("head.*", "enc.*")), "m.yaml")
    with pytest.raises(BuildError, match=r"^m.yaml at /strategy/reinit/0: pattern 'x'"):
        reinit_names(mlp(), Strategy(reinit=("x",)), "m.yaml")
    with pytest.raises(BuildError, match="/strategy/mode"):
        Strategy.from_spec({"mode": "surgery"}, "m.yaml")


# -- training ---------------------------------------------------------------------------------


def _train(data: DatasetArrays, model: nn.Module, **kw: object) -> object:
    features = str(kw.pop("features", "cached"))
    cfg = TrainConfig(
        **{"epochs": 3, "batch_size": 32, "optimizer": "adam", "lr": 0.01, "device": "cpu", **kw}
    )  # type: ignore[arg-type]
    return train(
        model, data.x_train, data.y_train, data.x_eval, data.y_eval, cfg, features=features
    )


def test_training_is_deterministic_and_learns(digits: DatasetArrays) -> None:
    a, b = mlp(), mlp()
    curve = _train(digits, a).curve  # type: ignore[attr-defined]
    _train(digits, b)
    assert to_bytes(a.state_dict()) == to_bytes(b.state_dict())
    assert [row["epoch"] for row in curve] == [1, 2, 3]
    assert set(curve[0]) == {"epoch", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy"}
    assert curve[-1]["eval_accuracy"] > 0.8 and curve[-1]["train_loss"] < curve[0]["train_loss"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training
    c = mlp()
    _train(digits, c, seed=1)
    assert to_bytes(c.state_dict()) != to_bytes(a.state_dict())


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_other_optimizers_train(digits: DatasetArrays, optimizer: str) -> None:
    lr = 0.1 if optimizer == "sgd" else 0.01
    result = _train(digits, mlp(), optimizer=optimizer, lr=lr, momentum=0.9, label_smoothing=0.1)
    assert result.curve[-1]["eval_accuracy"] > 0.6  # type: ignore[attr-defined]


def test_unknown_optimizer_and_loss_name_the_field() -> None:
    with pytest.raises(
        BuildError, match=r"^m.yaml at /training/optimizer: unknown optimizer 'lbfgs'"
    ):
        TrainConfig.from_spec({"optimizer": "lbfgs"}, "m.yaml")
    with pytest.raises(BuildError, match=r"^m.yaml at /training/loss"):
        TrainConfig.from_spec({"loss": "hinge"}, "m.yaml")
    cfg = TrainConfig.from_spec({"lr": 0.5, "search": {"params": {}}}, "m", {"epochs": 2, "lr": 1})
    assert (cfg.epochs, cfg.lr) == (2, 0.5)


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize(
    ("strategy", "prefix"),
    [
        ({"mode": "linear-probe"}, 5),
        ({"freeze": ["body.0.*"]}, 3),
        ({}, 0),
        ({"freeze": ["body.2.*"]}, 0),
    ],
)
def test_frozen_prefix(strategy: dict[str, object], prefix: int) -> None:
    model = mlp()
    apply_freeze(model, frozen_names(model, Strategy.from_spec(strategy)))
    assert frozen_prefix(model) == prefix


@pytest.mark.parametrize("freeze", [["body.0.*"], ["body.*"]])
def test_cached_features_match_recomputing(digits: DatasetArrays, freeze: list[str]) -> None:
    results, calls, models = {}, {}, {}
    for mode in ("cached", "recompute"):
        model = mlp()
        apply_freeze(model, frozen_names(model, Strategy(freeze=tuple(freeze))))
        calls[mode] = _count_calls(model.body[0])
        results[mode] = _train(digits, model, features=mode, epochs=4)
        models[mode] = model
    assert results["cached"].features_cached and not results["recompute"].features_cached  # type: ignore[attr-defined]
    # cached: the frozen layer ran once over each split, not once per batch per epoch
    assert calls["cached"][0] == 2 and calls["recompute"][0] > 40
    for key, value in models["cached"].state_dict().items():
        assert torch.allclose(value, models["recompute"].state_dict()[key], atol=1e-5), key
    for a, b in zip(results["cached"].curve, results["recompute"].curve, strict=True):  # type: ignore[attr-defined]
        assert a["eval_accuracy"] == pytest.approx(b["eval_accuracy"], abs=0.005)


def test_nothing_to_train_is_refused(digits: DatasetArrays) -> None:
    model = mlp()
    apply_freeze(model, {n for n, _ in model.named_parameters()})
    with pytest.raises(BuildError, match="every parameter is frozen"):
        _train(digits, model)


# -- evaluation and gates ---------------------------------------------------------------------


def test_evaluate_reports_per_class_accuracy(digits: DatasetArrays) -> None:
    model = mlp()
    _train(digits, model)
    scores = evaluate(model, digits.x_eval, digits.y_eval)
    logits = model(torch.from_numpy(digits.x_eval))
    hits = logits.argmax(1).numpy() == digits.y_eval
    assert scores["accuracy"] == round(float(hits.mean()), 6)
    assert sorted(scores["per_class"]) == ["0", "1", "2", "3", "4"]
    assert scores["per_class"]["3"] == round(float(hits[digits.y_eval == 3].mean()), 6)


def test_gates() -> None:
    assert parse_gate(" >= 0.9 ") == (">=", 0.9)
    assert parse_gate("<1e-2") == ("<", 0.01)
    with pytest.raises(BuildError, match="invalid gate"):
        parse_gate("at least 0.9")
    found = gate_records(
        {"accuracy": ">= 0.9", "loss": "< 0.5", "per_class_accuracy": "> 0.8", "f1": ">= 0.1"},
        {"accuracy": 0.93, "loss": 0.5},
        {"0": 0.99, "1": 0.75},
    )
    assert [(g.metric, g.passed) for g in found] == [
        ("accuracy", True),
        ("f1", False),
        ("loss", False),
        ("per_class_accuracy", False),
    ]
    rows = [g.to_dict() for g in found]
    assert tuple(Gate.from_dict(r) for r in rows) == found  # read back as a manifest's gates
    assert rows == [
        {"metric": "accuracy", "op": ">=", "threshold": 0.9, "value": 0.93, "passed": True},
        {"metric": "f1", "op": ">=", "threshold": 0.1, "value": None, "passed": False},
        {"metric": "loss", "op": "<", "threshold": 0.5, "value": 0.5, "passed": False},
        {
            "metric": "per_class_accuracy",
            "op": ">",
            "threshold": 0.8,
            "value": 0.75,
            "passed": False,
        },
    ]


# -- weights ----------------------------------------------------------------------------------


def test_safetensors_round_trip_is_deterministic(tmp_path: Path) -> None:
    state = mlp().state_dict()
    save_weights(tmp_path / "w.safetensors", state)
    blob = (tmp_path / "w.safetensors").read_bytes()
    assert blob == to_bytes(mlp().state_dict())  # same seed, same bytes
    loaded = load_weights(tmp_path / "w.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


class Payload:
    """Not a tensor: a weights-only load must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_pt_import_is_weights_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = mlp().state_dict()
    torch.save({"state_dict": state}, tmp_path / "ok.pt")
    assert list(read_any(tmp_path / "ok.pt")) == list(state)
    torch.save({"w": torch.ones(2), "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(BuildError, match="cannot load as a weights-only state dict"):
        load_pt(tmp_path / "evil.pt")
    assert "unpickled!" not in capsys.readouterr().out
    torch.save({"w": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(BuildError, match="expected a state dict"):
        load_pt(tmp_path / "list.pt")
    with pytest.raises(BuildError, match="unsupported weights format"):
        read_any(tmp_path / "w.onnx")


def test_feature_extraction_leaves_the_module_as_it_was() -> None:
    """Images are extracted channels-last for speed; the caller's module keeps its layout,
    its mode and its values, and the features are those of a plain forward pass."""
    from stemma.migration.architectures import penultimate
    from stemma.migration.features import compute

    torch.manual_seed(0)
    module = build_module(make_config({"family": "cnn", "channels": [4, 8]}, [1, 8, 8], 5))
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = np.random.default_rng(0).random((37, 1, 8, 8), dtype=np.float32)
    feats, probs = compute(module, x, device="cpu", batch_size=16)
    assert module.training
    for key, value in module.state_dict().items():
        assert value.is_contiguous(), key
        assert torch.equal(value, before[key]), key
    module.eval()
    with torch.no_grad():
        plain = penultimate(module, torch.as_tensor(x)).numpy()
    assert feats.shape == plain.shape and probs.shape == (37, 5)
    np.testing.assert_allclose(feats, plain, rtol=1e-5, atol=1e-6)
