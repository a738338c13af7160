"""Fine-tuning options of the training loop: schedules, accumulation, clipping, early stopping,
class weights and per-group learning rates (migration/train.py, migration/schedules.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from stemma import schemas
from stemma.migration.architectures import build_module, make_config
from stemma.migration.schedules import Schedule
from stemma.migration.train import TrainConfig, class_weights, train
from stemma.registry.errors import BuildError, StemmaError
from torch import nn

N, D, C = 192, 6, 3


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """A small, learnable three-class problem."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = (x[:, 0] > 0.4).astype(np.int64) + (x[:, 1] > 0.4).astype(np.int64)
    return x, y


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_module(make_config({"family": "mlp", "hidden": [16]}, [D], C))


def fit(data: tuple[np.ndarray, np.ndarray], **settings: Any) -> tuple[nn.Module, Any]:
    x, y = data
    module = mlp()
    cfg = TrainConfig.from_spec({"device": "cpu", "batch_size": 32, **settings}, "m.yaml")
    return module, train(module, x, y, x, y, cfg)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- schedules: torch.optim.lr_scheduler's formulas -------------------------------------------


def torch_lrs(make: Any, steps: int, base: float = 0.1) -> list[float]:
    """Learning rates torch's scheduler gives for `steps` steps."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_warmup_then_decay_follow_torch_schedulers() -> None:
    S = torch.optim.lr_scheduler
    base, per_epoch, total, warm = 0.1, 4, 40, 6
    warmup = torch_lrs(lambda o: S.LinearLR(o, 1 / warm, 1.0, total_iters=warm - 1), warm)
    rest = total - warm
    refs = {
        "constant": [base] * rest,
        "linear": torch_lrs(lambda o: S.LinearLR(o, 1.0, 0.01 / base, total_iters=rest), rest),
        "cosine": torch_lrs(lambda o: S.CosineAnnealingLR(o, T_max=rest, eta_min=0.01), rest),
    }
    for name, ref in refs.items():
        sched = Schedule.from_spec({"name": name, "warmup_steps": warm, "min_lr": 0.01})
        got = [sched.lr_at(base, s, per_epoch, total) for s in range(total)]
        assert got == pytest.approx(warmup + ref, rel=1e-9, abs=1e-12), name
    # step decay counts epochs: StepLR stepped once per epoch
    by_epoch = torch_lrs(lambda o: S.StepLR(o, step_size=3, gamma=0.5), total // per_epoch)
    sched = Schedule.from_spec({"name": "step", "step_size": 3, "gamma": 0.5})
    got = [sched.lr_at(base, s, per_epoch, total) for s in range(total)]
    assert got == pytest.approx([lr for lr in by_epoch for _ in range(per_epoch)], rel=1e-12)
    # warmup in epochs is warmup in steps
    a = Schedule.from_spec({"name": "cosine", "warmup_epochs": 2})
    b = Schedule.from_spec({"name": "cosine", "warmup_steps": 2 * per_epoch})
    assert [a.lr_at(base, s, per_epoch, total) for s in range(total)] == [
        b.lr_at(base, s, per_epoch, total) for s in range(total)
    ]


def test_loop_matches_a_torch_reference(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Schedule with warmup, per-group factors, clipping and momentum: a plain torch loop
    (torch.optim.SGD with param groups, SequentialLR, clip_grad_norm_) lands on the same
    weights."""
    x, y = data
    settings = {
        "epochs": 3,
        "optimizer": "sgd",
        "momentum": 0.9,
        "lr": 0.2,
        "schedule": {"name": "cosine", "warmup_steps": 3},
        "lr_multipliers": {"body.*": 0.25},
        "clip_grad_norm": 0.5,
    }
    module, _ = fit(data, **settings)
    ref = mlp()
    S = torch.optim.lr_scheduler
    body = [p for n, p in ref.named_parameters() if n.startswith("body.")]
    head = [p for n, p in ref.named_parameters() if not n.startswith("body.")]
    opt = torch.optim.SGD([{"params": body, "lr": 0.05}, {"params": head}], lr=0.2, momentum=0.9)
    per_epoch = math.ceil(N / 32)
    total = 3 * per_epoch
    sched = S.SequentialLR(
        opt,
        [S.LinearLR(opt, 1 / 3, 1.0, total_iters=2), S.CosineAnnealingLR(opt, total - 3)],
        milestones=[3],
    )
    gen = torch.Generator().manual_seed(0)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(3):
        order = torch.randperm(N, generator=gen)
        for start in range(0, N, 32):
            idx = order[start : start + 32]
            loss = nn.functional.cross_entropy(ref(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
            opt.step()
            sched.step()
    for name, tensor in ref.state_dict().items():
        torch.testing.assert_close(module.state_dict()[name], tensor, atol=1e-6, rtol=1e-5)


def test_step_decay_changes_training(data: tuple[np.ndarray, np.ndarray]) -> None:
    """With gamma ~0 after the first epoch, three epochs end about where one ends."""
    one, _ = fit(data, epochs=1, optimizer="sgd", lr=0.5)
    three, _ = fit(
        data,
        epochs=3,
        optimizer="sgd",
        lr=0.5,
        schedule={"name": "step", "step_size": 1, "gamma": 1e-9},
    )
    plain, _ = fit(data, epochs=3, optimizer="sgd", lr=0.5)
    for name, w in weights(one).items():
        torch.testing.assert_close(three.state_dict()[name], w, atol=1e-6, rtol=0)
    assert not torch.allclose(plain.state_dict()["head.weight"], one.state_dict()["head.weight"])


# -- gradient accumulation ----------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_accumulation_equals_the_larger_batch(
    data: tuple[np.ndarray, np.ndarray], optimizer: str
) -> None:
    """4 micro-batches of 16 give the weights one batch of 64 gives (float tolerance: the
    gradient is summed in another order). N % 64 == 0 and N % 48 != 0 cover a short group."""
    big, _ = fit(data, epochs=3, optimizer=optimizer, batch_size=64, lr=0.05)
    acc, _ = fit(data, epochs=3, optimizer=optimizer, batch_size=16, accumulate=4, lr=0.05)
    for name, w in weights(big).items():
        torch.testing.assert_close(acc.state_dict()[name], w, atol=2e-6, rtol=1e-5)
    big, _ = fit(data, epochs=2, optimizer=optimizer, batch_size=50, lr=0.05)  # 192 = 3*50 + 42
    acc, _ = fit(data, epochs=2, optimizer=optimizer, batch_size=25, accumulate=2, lr=0.05)
    for name, w in weights(big).items():
        torch.testing.assert_close(acc.state_dict()[name], w, atol=2e-6, rtol=1e-5)


# -- clipping -------------------------------------------------------------------------------


def test_clipping_bounds_every_step(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Plain SGD with the gradient's norm clipped to c moves the weights by at most lr * c
    per step (in the norm over all parameters)."""
    start = weights(mlp())
    clipped, _ = fit(data, epochs=2, optimizer="sgd", lr=1.0, clip_grad_norm=1e-3)
    free, _ = fit(data, epochs=2, optimizer="sgd", lr=1.0)
    steps = 2 * math.ceil(N / 32)

    def moved(m: nn.Module) -> float:
        return float(
            torch.cat([(m.state_dict()[k] - v).flatten() for k, v in start.items()]).norm()
        )

    assert moved(clipped) <= steps * 1e-3 * (1 + 1e-4)
    assert moved(free) > 10 * steps * 1e-3


# -- early stopping -------------------------------------------------------------------------


def test_early_stopping_restores_the_best_epoch(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Asked to maximise the eval loss (which training lowers), the best epoch is the first:
    patience 2 stops after epoch 3 and the weights are epoch 1's, bit for bit."""
    one, _ = fit(data, epochs=1, lr=0.01)
    stopped, result = fit(
        data, epochs=10, lr=0.01, early_stopping={"metric": "loss", "patience": 2, "mode": "max"}
    )
    assert (result.best_epoch, result.stopped_epoch, len(result.curve)) == (1, 3, 3)
    assert result.run_notes()["early_stopping"] == {"best_epoch": 1, "stopped_epoch": 3}
    for name, w in weights(one).items():
        assert torch.equal(stopped.state_dict()[name], w), name
    # the natural direction of accuracy is max; with plenty of patience all epochs run
    _, result = fit(data, epochs=4, lr=0.05, early_stopping={"metric": "accuracy", "patience": 9})
    assert len(result.curve) == 4
    best = max(result.curve, key=lambda r: r["eval_accuracy"])
    assert result.best_epoch == best["epoch"]


def test_early_stopping_metric_must_be_the_tasks(data: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(BuildError, match="/training/early_stopping/metric: 'r2'"):
        fit(data, epochs=1, early_stopping={"metric": "r2", "patience": 1})


# -- class weights --------------------------------------------------------------------------


def test_balanced_class_weights_are_scikit_learns(data: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.utils.class_weight import compute_class_weight

    _, y = data
    cfg = TrainConfig.from_spec({"class_weights": "balanced"})
    got = class_weights(cfg, "classification", "cross_entropy", y)
    assert got is not None
    want = compute_class_weight("balanced", classes=np.arange(C), y=y)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_class_weights_shift_predictions(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Equal weights train as none do; a heavy class 0 draws the predictions to it."""
    x, _ = data
    plain, _ = fit(data, epochs=3, lr=0.05)
    equal, _ = fit(data, epochs=3, lr=0.05, class_weights=[2.0, 2.0, 2.0])
    for name, w in weights(plain).items():
        torch.testing.assert_close(equal.state_dict()[name], w, atol=1e-6, rtol=1e-5)
    heavy, _ = fit(data, epochs=3, lr=0.05, class_weights=[50.0, 1.0, 1.0])
    with torch.no_grad():
        zeros = [int((m(torch.as_tensor(x)).argmax(1) == 0).sum()) for m in (plain, heavy)]
    assert zeros[1] > zeros[0]


def test_class_weights_refused_where_they_cannot_apply(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    with pytest.raises(BuildError, match="/training/class_weights: 2 weights for 3 classes"):
        fit(data, epochs=1, class_weights=[1.0, 2.0])
    x, y = data
    cfg = TrainConfig.from_spec({"class_weights": "balanced", "device": "cpu", "epochs": 1})
    module = build_module(make_config({"family": "mlp", "hidden": [4]}, [D], 1))
    target = y.astype(np.float32)
    with pytest.raises(BuildError, match=r"classification \(cross_entropy\) only"):
        train(module, x, target, x, target, cfg)


# -- per-group learning rates ---------------------------------------------------------------


def test_lr_multipliers_scale_their_groups(data: tuple[np.ndarray, np.ndarray]) -> None:
    """A body at 1e-6 of the rate barely moves while the head trains as usual."""
    start = weights(mlp())
    module, _ = fit(data, epochs=2, optimizer="sgd", lr=0.5, lr_multipliers={"body.*": 1e-6})
    plain, _ = fit(data, epochs=2, optimizer="sgd", lr=0.5)
    body = (module.state_dict()["body.0.weight"] - start["body.0.weight"]).abs().max()
    head = (module.state_dict()["head.weight"] - start["head.weight"]).abs().max()
    assert float(body) < 1e-5 < float(head)
    assert float((plain.state_dict()["body.0.weight"] - start["body.0.weight"]).abs().max()) > 1e-3
    with pytest.raises(BuildError, match=r"/training/lr_multipliers/backbone.\*: matches no"):
        fit(data, epochs=1, lr_multipliers={"backbone.*": 0.1})


# -- the schema and TrainConfig accept the same blocks ----------------------------------------

BLOCKS: list[tuple[dict[str, Any], bool]] = [
    ({}, True),
    ({"schedule": {"name": "cosine", "warmup_steps": 10, "min_lr": 1e-5}}, True),
    ({"schedule": {"name": "step", "step_size": 2, "gamma": 0.5, "warmup_epochs": 1}}, True),
    ({"schedule": {"name": "linear"}}, True),
    ({"schedule": {"name": "cosine", "warmup_steps": 1, "warmup_epochs": 1}}, False),
    ({"schedule": {"name": "exp"}}, False),
    ({"schedule": {"warmup_steps": 3}}, False),
    ({"schedule": {"name": "step", "gamma": 0}}, False),
    ({"schedule": {"name": "step", "decay": 0.1}}, False),
    ({"accumulate": 4}, True),
    ({"accumulate": 0}, False),
    ({"accumulate": 2.0}, False),
    ({"clip_grad_norm": 1.0}, True),
    ({"clip_grad_norm": 0}, False),
    ({"early_stopping": {"metric": "accuracy", "patience": 3, "mode": "max"}}, True),
    ({"early_stopping": {"patience": 2}}, True),
    ({"early_stopping": {"patience": 0}}, False),
    ({"early_stopping": {"mode": "up"}}, False),
    ({"early_stopping": {"metric": "loss", "delta": 1}}, False),
    ({"class_weights": "balanced"}, True),
    ({"class_weights": [1, 2.5, 0]}, True),
    ({"class_weights": "inverse"}, False),
    ({"class_weights": []}, False),
    ({"class_weights": [1, -1]}, False),
    ({"lr_multipliers": {"body.*": 0.1, "head.*": 1}}, True),
    ({"lr_multipliers": {"body.*": 0}}, False),
    ({"lr_multipliers": {"": 0.5}}, False),
    ({"lr_multipliers": {"body.*": "x"}}, False),
    ({"checkpoint_every": 2}, True),
    ({"checkpoint_every": 0}, True),
    ({"checkpoint_every": -1}, False),
]


@pytest.mark.parametrize(("block", "valid"), BLOCKS)
def test_schema_and_config_agree(block: dict[str, Any], valid: bool) -> None:
    spec = {"architecture": {"family": "mlp"}, "data": {"train": "d"}, "training": block}
    assert schemas.validator("model-spec").is_valid(spec) == valid
    if valid:
        cfg = TrainConfig.from_spec(block, "m.yaml")
        assert TrainConfig.from_spec(cfg.to_dict(), "m.yaml") == cfg  # search's round trip
    else:
        with pytest.raises(StemmaError, match=r"m\.yaml at /training"):
            TrainConfig.from_spec(block, "m.yaml")


# -- threads --------------------------------------------------------------------------------


def test_native_builds_use_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Portable builds keep one thread (other counts change matmul's bits, see
    benchmarks/bench_threads.py); a build pinned native uses every core."""
    import os

    from stemma.migration import numerics
    from stemma.migration.train import CPU_THREADS, cpu_threads, thread_count

    assert thread_count() == CPU_THREADS == 1
    monkeypatch.setattr(numerics, "_pinned", numerics.Pin("native", applied=True))
    assert thread_count() == (os.cpu_count() or 1)
    with cpu_threads(torch.device("cpu")):
        assert torch.get_num_threads() == (os.cpu_count() or 1)
