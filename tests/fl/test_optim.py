"""GFL's local optimizers step exactly as torch.optim's single-tensor path does."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gfl.fl.optim import OptimizerOptionError, check_options, make_optimizer
from gfl.fl.spec import JobSpec, SpecError

CASES = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-3}),
    ("sgd", {"momentum": 0.8, "nesterov": True, "weight_decay": 5e-4}),
    ("adam", {}),
    ("adam", {"betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.01}),
    ("adam", {"amsgrad": True}),
    ("adamw", {}),
    ("adamw", {"weight_decay": 0.1, "amsgrad": True}),
]
TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _train(model: torch.nn.Module, opt, steps: int = 25) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(5, 8, generator=gen)
        y = torch.randint(0, 3, (5,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_same_parameters_as_torch_optim_bit_for_bit(name, kwargs):
    ours = _model()
    got = _train(ours, make_optimizer(name, ours.parameters(), 0.05, kwargs))
    ref = _model()
    tkw = {k: tuple(v) if k == "betas" else v for k, v in kwargs.items()}
    want = _train(ref, TORCH[name](ref.parameters(), lr=0.05, foreach=False, **tkw))
    moved = any(not torch.equal(g, p) for g, p in zip(got, _model().parameters(), strict=True))
    assert moved, "the optimizer did not change the parameters"
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w), (name, kwargs, (g - w).abs().max())


@pytest.mark.parametrize(
    ("name", "kwargs", "says"),
    [
        ("sgd", {"betas": [0.9, 0.9]}, "has no option betas"),
        ("sgd", {"momentum": 1.5}, "momentum must be a number in [0, 1)"),
        ("sgd", {"nesterov": True}, "nesterov needs momentum > 0"),
        ("sgd", {"nesterov": 1}, "nesterov must be true or false"),
        ("adam", {"betas": [0.9]}, "betas must be two numbers"),
        ("adam", {"eps": -1}, "eps must be a number >= 0"),
        ("adamw", {"weight_decay": -0.5}, "weight_decay must be a number >= 0"),
        ("rmsprop", {}, "optimizer 'rmsprop' is unknown"),
    ],
)
def test_bad_options_are_one_clear_error(name, kwargs, says):
    with pytest.raises(OptimizerOptionError) as e:
        check_options(name, kwargs)
    assert says in str(e.value)
    with pytest.raises(SpecError) as e2:
        JobSpec(
            name="j",
            model="mlp",
            dataset="digits",
            rounds=1,
            optimizer=name,
            optimizer_kwargs=kwargs,
        )
    assert says in str(e2.value)


def test_training_never_imports_torch_dynamo():
    """The reason this module exists: torch.optim's step pulls in torch._dynamo (~150 MB)."""
    code = (
        "import sys, numpy as np\n"
        "from gfl.fl.spec import JobSpec\n"
        "from gfl.fl.data import ArrayDataset\n"
        "from gfl.fl.trainer import initial_params, train_local\n"
        "spec = JobSpec(name='j', model='mlp', model_kwargs={'in_features': 8, 'hidden': 4,"
        " 'num_classes': 2}, dataset='digits', rounds=1, optimizer='adam', local_epochs=1,"
        " batch_size=4)\n"
        "data = ArrayDataset(np.zeros((8, 8), np.float32), np.zeros(8, np.int64))\n"
        "train_local(spec, initial_params(spec), data)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
