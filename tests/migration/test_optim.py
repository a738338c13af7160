"""migration/optim.py gives torch.optim's bits, and training loads no compiler stack."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from stemma.migration import optim, train
from stemma.migration.train import set_deterministic
from torch import nn

Factory = Callable[[list[nn.Parameter]], object]
CASES: dict[str, tuple[Factory, Factory]] = {
    "sgd": (
        lambda p: optim.SGD(p, lr=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1),
    ),
    "sgd-momentum-decay": (
        lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    ),
    # torch's own root swapped in: the update rule is torch's, in portable mode too
    "adam-decay": (
        lambda p: optim.Adam(p, lr=1e-2, weight_decay=1e-3, root=torch.sqrt),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    ),
    "adamw": (
        lambda p: optim.Adam(p, lr=1e-2, weight_decay=0.01, decoupled=True, root=torch.sqrt),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01),
    ),
}


def _net(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3)).to(device)


def _run(make: Factory, steps: int = 6, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Train a small net; from step 3 on its last layer gets no gradient (skipped, not decayed)."""
    net = _net(device)
    opt = make(list(net.parameters()))
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        x = torch.randn(16, 6, generator=gen).to(device)
        y = torch.randint(0, 3, (16,), generator=gen).to(device)
        body = net[:3] if i >= 3 else net
        loss = nn.functional.cross_entropy(body(x), y)
        opt.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()  # type: ignore[attr-defined]
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bits_as_torch_optim(case: str) -> None:
    ours, theirs = (_run(make) for make in CASES[case])
    start = _net().state_dict()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), f"{case}: {name} differs from torch.optim"
    assert not torch.equal(ours["0.weight"], start["0.weight"])  # it did train


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bits_as_torch_optim_on_cuda(case: str) -> None:
    # on CUDA both take torch's multi-tensor (foreach) kernels
    ours, theirs = (_run(make, device="cuda") for make in CASES[case])
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), f"{case}: {name} differs from torch.optim"


def test_portable_root_is_the_correctly_rounded_root() -> None:
    # numpy's float32 sqrt is the processor's IEEE instruction: correctly rounded everywhere
    assert optim.is_portable()  # conftest pins portable mode, as `stemma build` does
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(200_000, generator=gen) * 10.0**e for e in range(-30, 31, 6)])
    x = torch.cat([x, torch.tensor([0.0, 1.0, 4.0, float("inf"), 1e-45, 3.4e38])])
    expected = torch.from_numpy(np.sqrt(x.numpy()))
    assert torch.equal(optim.sqrt(x), expected)


def test_portable_adam_trains_like_torch_adam_within_rounding() -> None:
    ours = _run(lambda p: optim.Adam(p, lr=1e-2, weight_decay=1e-3))
    theirs = _run(lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3))
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-5, atol=1e-6)


def test_deterministic_flag_reaches_aten() -> None:
    prior = torch.are_deterministic_algorithms_enabled()
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        # deterministic mode fills uninitialised memory: eager kernels see the flag
        assert torch.isnan(torch.empty(8)).all()
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        set_deterministic(prior)


def test_without_the_private_binding_torchs_public_function_sets_the_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A torch without `_C._set_deterministic_algorithms` gets `use_deterministic_algorithms`:
    it really runs (inductor's setting follows), and eager kernels obey the same flag."""
    prior = torch.are_deterministic_algorithms_enabled()
    public = torch.use_deterministic_algorithms
    calls: list[bool] = []

    def spy(mode: bool, **kwargs: bool) -> None:
        calls.append(mode)
        public(mode, **kwargs)

    monkeypatch.setattr(train, "PRIVATE_DETERMINISTIC", "no_such_binding")
    monkeypatch.setattr(torch, "use_deterministic_algorithms", spy)
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert sys.modules["torch._inductor.config"].deterministic is True
        assert torch.isnan(torch.empty(8)).all()
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert sys.modules["torch._inductor.config"].deterministic is False
        assert calls == [True, False]
    finally:
        public(prior)


TRAIN_AND_LIST = """
import sys
import numpy as np
from stemma.migration.architectures import build_module, make_config
from stemma.migration.train import TrainConfig, train
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 5)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int64)
for opt in ("sgd", "adam", "adamw"):
    module = build_module(make_config({"family": "mlp", "hidden": [8]}, [5], 2))
    train(module, x, y, x, y, TrainConfig(epochs=2, optimizer=opt, device="cpu"))
print(sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor"))))
"""


def test_training_loads_no_compiler_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", TRAIN_AND_LIST], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
