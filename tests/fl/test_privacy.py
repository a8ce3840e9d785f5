"""Differential privacy of local training: the [privacy] table, DP-SGD's per-sample clipping,
and the accountant against Opacus's own figures (real torch, real Opacus, no mocks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gfl.fl.data import load_partition
from gfl.fl.models import build_model, get_params, set_params
from gfl.fl.privacy import (
    PrivacyAccount,
    PrivacyError,
    PrivacySettings,
    StepPlan,
    make_private,
    private_model,
    round_plan,
)
from gfl.fl.spec import JobSpec, SpecError
from gfl.fl.trainer import initial_params, train_local

torch.set_num_threads(1)

PRIVACY = {"epsilon": 3, "delta": 1e-5, "max_grad_norm": 1.0}


def _spec(privacy=None, **kw) -> JobSpec:
    spec = (
        JobSpec.builder("dp")
        .model("mlp", in_features=64, hidden=32)
        .data("digits")
        .train(epochs=kw.pop("epochs", 1), batch_size=kw.pop("batch_size", 32), lr=0.1)
        .rounds(kw.pop("rounds", 3))
        .seed(1)
        .build()
    )
    return spec.replace(privacy=PRIVACY if privacy is None else privacy, **kw)


# -- the [privacy] table -----------------------------------------------------------------------


def test_a_job_without_privacy_encodes_as_before():
    plain = _spec(privacy={})
    assert "privacy" not in plain.to_dict() and plain.privacy_settings is None
    assert b"privacy" not in plain.to_bytes()
    assert JobSpec.from_bytes(plain.to_bytes()) == plain
    assert _spec().spec_hash != plain.spec_hash  # the table is part of what is registered


def test_the_privacy_table_is_canonical_and_round_trips():
    a = _spec({"epsilon": 3, "delta": 1e-5, "max_grad_norm": 1})
    b = _spec({"max_grad_norm": 1.0, "epsilon": 3.0, "delta": 1e-5, "accountant": "rdp"})
    assert a.spec_hash == b.spec_hash
    assert a.privacy == {
        "accountant": "rdp",
        "delta": 1e-5,
        "epsilon": 3.0,
        "max_grad_norm": 1.0,
        "mode": "local",
        "noise_multiplier": 0.0,
    }
    assert JobSpec.from_bytes(a.to_bytes()) == a
    assert JobSpec.from_toml(a.to_toml()) == a


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"epsilon": 3, "delta": 1e-5}, "needs max_grad_norm"),
        ({**PRIVACY, "sigma": 1.0}, "no setting(s) sigma"),
        ({**PRIVACY, "epsilon": 0}, "privacy.epsilon"),
        ({**PRIVACY, "delta": 0.5}, "privacy.delta"),
        ({**PRIVACY, "max_grad_norm": float("inf")}, "privacy.max_grad_norm"),
        ({**PRIVACY, "noise_multiplier": -1}, "privacy.noise_multiplier"),
        ({**PRIVACY, "accountant": "gdp"}, "privacy.accountant"),
        ({**PRIVACY, "mode": "distributed"}, "needs secure_aggregation"),
        ({**PRIVACY, "mode": "central"}, "privacy.mode"),
        ({**PRIVACY, "epsilon": "3"}, "privacy.epsilon"),
    ],
)
def test_a_bad_privacy_table_is_one_clear_error(table, says):
    with pytest.raises(SpecError, match="privacy") as err:
        _spec(table)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_privacy_refuses_fedprox_and_custom_trainers():
    with pytest.raises(SpecError, match="FedProx"):
        _spec().replace(strategy="fedprox", strategy_kwargs={"mu": 0.1})
    with pytest.raises(SpecError, match="default trainer"):
        _spec().replace(trainer="mine")


def test_a_batchnorm_model_is_refused_at_publish_in_one_line():
    spec = _spec().replace(model="resnet", model_kwargs={}, dataset="cifar10")
    problems = spec.publish_problems()
    assert any("BatchNorm" in p and "DP-SGD" in p for p in problems), problems
    assert all("\n" not in p for p in problems)
    # the same model without [privacy] is not Opacus's business
    assert not any("DP-SGD" in p for p in spec.replace(privacy={}).publish_problems())


def test_a_fix_that_keeps_the_parameters_is_applied():
    """LSTM -> Opacus's DPLSTM: the same function and the same parameter names."""
    model = Tagger()
    fixed = private_model(model)
    assert fixed is not model and type(fixed.rnn).__name__ == "DPLSTM"
    assert {k: v.shape for k, v in get_params(fixed).items() if k in get_params(model)} == {
        k: v.shape for k, v in get_params(model).items()
    }
    x = torch.randn(3, 5, 4)
    assert torch.allclose(fixed(x), model(x), atol=1e-6)
    assert private_model(build_model("cnn")) is not None  # the built-ins need no fix


class Tagger(nn.Module):
    """A recurrent model (module level: Opacus's fix copies the model by pickling it)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x)[0][:, -1])


# -- DP-SGD ------------------------------------------------------------------------------------


def _summed_clipped(dp, xb: torch.Tensor, yb: torch.Tensor) -> list[torch.Tensor]:
    """The sum of the batch's clipped per-sample gradients, as the DP step computes it
    (noise multiplier 0: the gradient before the job's optimizer, times the batch size)."""
    dp.zero_grad()
    loss = dp.criterion(dp.module(xb), yb)
    loss.backward()
    dp.step(lambda: None)
    return [
        p.grad.detach().clone() * dp.optimizer.expected_batch_size for p in dp.module.parameters()
    ]


def test_per_sample_clipping_bounds_every_samples_gradient_in_a_batch():
    torch.manual_seed(0)
    clip = 0.05
    model = build_model("cnn")
    settings = PrivacySettings(epsilon=1.0, delta=1e-5, max_grad_norm=clip, noise_multiplier=0.0)
    dp = make_private(model, settings, StepPlan(0.0, 0.1, 1), 8, torch.device("cpu"))
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))

    batch = _summed_clipped(dp, x, y)
    alone = [_summed_clipped(dp, x[i : i + 1], y[i : i + 1]) for i in range(8)]

    def norm(grads: list[torch.Tensor]) -> float:
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))

    raw = []
    for i in range(8):  # the unclipped gradients: each far above the clipping norm
        plain = build_model("cnn")
        set_params(plain, get_params(model))
        nn.CrossEntropyLoss()(plain(x[i : i + 1]), y[i : i + 1]).backward()
        raw.append(norm([p.grad for p in plain.parameters()]))
    assert min(raw) > 10 * clip
    for g in alone:
        assert norm(g) <= clip * (1 + 1e-5)
        assert norm(g) >= clip * 0.999  # clipped to the norm, not zeroed
    for k, total in enumerate(batch):  # the batch's sum is the sum of those clipped gradients
        assert torch.allclose(total, sum(g[k] for g in alone), atol=1e-6)
    assert norm(batch) <= 8 * clip * (1 + 1e-5)


def test_dp_training_adds_noise_and_reports_its_cost():
    spec = _spec()
    data = load_partition("digits", 0, 2, "iid", 0)
    params = initial_params(spec)
    a = train_local(spec, params, data, seed=5)
    b = train_local(spec, params, data, seed=5)
    # the noise and the Poisson batches come from the OS, never from the job's public seed
    assert any(not np.array_equal(a.update[k], b.update[k]) for k in a.update)
    plan = round_plan(spec.privacy_settings, len(data), 32, 1, 3)
    assert a.privacy == plan and plan.steps == math.ceil(len(data) / 32)
    assert a.metrics["dp_noise_multiplier"] == plan.noise_multiplier > 0
    assert all(np.isfinite(v).all() for v in a.update.values())


# -- the accountant ----------------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_the_account_matches_opacus_for_the_same_rate_noise_and_steps(accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    plan = StepPlan(noise_multiplier=1.1, sample_rate=0.02, steps=50)
    account = PrivacyAccount(accountant)
    for r in range(4):
        account.spend(r, plan)
    account = PrivacyAccount.from_json(account.to_json())  # as a restarted node reads it
    reference = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for _ in range(4 * 50):
        reference.step(noise_multiplier=1.1, sample_rate=0.02)
    assert account.epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert account.epsilon(1e-5, plan) > account.epsilon(1e-5) > PrivacyAccount().epsilon(1e-5)


def test_training_spends_what_opacus_privacy_engine_counts_for_the_same_data():
    """Our trainer's rounds against Opacus's PrivacyEngine over a DataLoader of the same
    records, batch size and noise: the same sampling rate, steps and ε."""
    from opacus import PrivacyEngine

    spec = _spec({**PRIVACY, "noise_multiplier": 1.3}, batch_size=50, epochs=2, rounds=2)
    data = load_partition("digits", 1, 3, "iid", 0)
    account = PrivacyAccount()
    params = initial_params(spec)
    for r in range(2):
        result = train_local(spec, params, data, seed=r)
        account.spend(r, result.privacy)

    engine = PrivacyEngine(accountant="rdp")
    model = build_model(spec.model, **spec.model_kwargs)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    loader = torch.utils.data.DataLoader(dataset, batch_size=50)
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=loader,
        noise_multiplier=1.3,
        max_grad_norm=1.0,
    )
    steps = 0
    for _ in range(2 * 2):  # rounds x local epochs
        for xb, yb in loader:
            optimizer.zero_grad()
            if len(xb):
                nn.CrossEntropyLoss()(model(xb), yb).backward()
            optimizer.step()
            steps += 1
    assert steps == sum(p.steps for _, p in account.rounds)
    assert all(p.sample_rate == pytest.approx(loader.sample_rate) for _, p in account.rounds)
    assert account.epsilon(1e-5) == pytest.approx(engine.get_epsilon(1e-5), rel=1e-9)


def test_calibrated_noise_spends_the_budget_over_the_jobs_rounds():
    settings = PrivacySettings.from_table({**PRIVACY, "epsilon": 2.0})
    plan = round_plan(settings, num_samples=900, batch_size=30, epochs=2, rounds=5)
    assert plan.sample_rate == pytest.approx(1 / 30) and plan.steps == 60
    account = PrivacyAccount()
    for r in range(5):
        assert account.epsilon(1e-5, plan) <= 2.0
        account.spend(r, plan)
    assert 2.0 - 0.05 < account.epsilon(1e-5) <= 2.0  # all of it, and no more
    assert account.epsilon(1e-5, plan) > 2.0  # a sixth round would overspend


def test_a_damaged_account_is_refused():
    with pytest.raises(PrivacyError):
        PrivacyAccount.from_json(b'{"accountant": "rdp", "rounds": [[0, "x"]]}')
    with pytest.raises(PrivacyError):
        PrivacyAccount.from_json(b"not json")


def test_distributed_dp_shares_add_up_to_the_jobs_noise():
    """n shares of N(0, s^2) sum to N(0, (sigma C)^2); each share is clipped first and drawn
    afresh (from the OS, not the job's seed)."""
    from gfl.fl.privacy import clip_update, noise_share, noise_share_std

    for n in (1, 4, 25):
        assert n * noise_share_std(1.3, 0.5, n) ** 2 == pytest.approx((1.3 * 0.5) ** 2)
    rng = np.random.default_rng(0)
    update = {"w": rng.normal(size=(300, 100)).astype(np.float32), "b": np.ones(7, np.float32)}
    clipped = clip_update(update, 0.5)
    norm = math.sqrt(sum(float(np.square(v).sum()) for v in clipped.values()))
    assert norm == pytest.approx(0.5) and np.allclose(
        clipped["w"] / update["w"], 0.5 / _norm(update)
    )
    small = {"w": np.full(4, 0.1)}
    assert np.array_equal(clip_update(small, 0.5)["w"], small["w"])  # within the clip: as is
    settings = PrivacySettings.from_table({**PRIVACY, "mode": "distributed"})
    plan = StepPlan(2.0, 1.0, 1)
    shares = [noise_share(update, settings, plan, 4) for _ in range(2)]
    noise = [flat - _flat(clipped) for flat in map(_flat, shares)]
    want = noise_share_std(2.0, settings.max_grad_norm, 4)
    assert all(abs(float(np.std(e)) / want - 1) < 0.02 for e in noise)
    assert not np.array_equal(noise[0], noise[1])


def test_distributed_dp_accounts_one_gaussian_step_per_round_as_opacus_does():
    from opacus.accountants import RDPAccountant

    settings = PrivacySettings.from_table({**PRIVACY, "epsilon": 4.0, "mode": "distributed"})
    plan = round_plan(settings, num_samples=500, batch_size=32, epochs=3, rounds=10)
    assert (plan.sample_rate, plan.steps) == (1.0, 1)  # the local data do not enter
    account = PrivacyAccount()
    reference = RDPAccountant()
    for r in range(10):
        account.spend(r, plan)
        reference.step(noise_multiplier=plan.noise_multiplier, sample_rate=1.0)
    assert account.epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert 4.0 - 0.02 <= account.epsilon(1e-5) <= 4.0  # calibrated to the job's ten rounds


def _flat(update) -> np.ndarray:
    return np.concatenate([np.asarray(update[k], np.float64).ravel() for k in sorted(update)])


def _norm(update) -> float:
    return float(np.linalg.norm(_flat(update)))
