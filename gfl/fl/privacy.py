"""Differential privacy of local training: record-level DP-SGD and its accountant (Opacus).

A job's ``[privacy]`` table makes every participant train with DP-SGD: batches drawn by
Poisson sampling, each sample's gradient clipped to ``max_grad_norm``, Gaussian noise of
standard deviation ``noise_multiplier * max_grad_norm`` added to each step's sum. The
guarantee is each participant's, for its own records, composed over every local step it
takes in every round of the job (Opacus's RDP or PRV accountant). GFL has no trusted
aggregator and aggregation is public, so noise added centrally by one party is not an
option: the noise comes from each participant.

Two ways to set the noise: ``noise_multiplier`` fixed (a participant stops contributing once
its next round would spend more than ``epsilon``), or left at 0 and calibrated by each
participant from its own sampling rate so that all of the job's rounds spend ``epsilon``.

``mode = "distributed"`` (with secure aggregation only): user-level DP over the job's
rounds. Each participant trains without noise, clips its whole update to L2 norm
``max_grad_norm`` (`clip_update`) and adds Gaussian noise of standard deviation
σC/√min_updates to every coordinate (`noise_share`) before it masks the update: a round
sums at least min_updates updates, so the sum, the only thing anyone sees, carries noise of
at least σC, and one participant's update moves it by at most C (equal weighting). Each
round is one Gaussian mechanism with noise multiplier σ on the whole population (sampling
rate 1), composed over the rounds the participant contributes to (`distributed_plan`).
The accounting is the continuous Gaussian's: the rounding of each noisy share to the fixed
point's grid and its per-coordinate clip (docs/protocol.md 9.2) are left out of it.

This module imports torch and Opacus only inside the functions that train or account, so a
job spec is checked without them.
"""

from __future__ import annotations

import functools
import json
import math
import secrets
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gfl.errors import GflError

if TYPE_CHECKING:
    import torch
    from torch import nn

ACCOUNTANTS = ("rdp", "prv")
MODES = ("local", "distributed")
MAX_EPSILON = 1000.0
MAX_NOISE = 1000.0
_KEYS = ("epsilon", "delta", "max_grad_norm", "noise_multiplier", "accountant", "mode")
_EPS_TOLERANCE = 0.01  # calibration: the noise is found to within this much epsilon, below it

# Opacus's hooks see inputs that need no gradient (the data); torch says so on every step.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
# RDP's bound at its largest order: looser than it could be (more ε, never less), as Opacus's
# own calibration computes it; not worth a warning per round.
warnings.filterwarnings("ignore", "Optimal order is the largest alpha", UserWarning)


class PrivacyError(GflError):
    """A privacy setting is malformed, or a model cannot be trained with DP-SGD."""


def _number(table: Mapping[str, Any], key: str, lo: float, hi: float, *, open_lo: bool) -> float:
    v = table[key]
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > lo if open_lo else v >= lo) and v <= hi
    if not ok:
        bound = f"{'>' if open_lo else '>='} {lo:g} and <= {hi:g}"
        raise PrivacyError(f"privacy.{key} must be a number {bound}, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class PrivacySettings:
    """A job's ``[privacy]`` table: the budget (ε, δ) each participant may spend over the
    whole job, the per-sample clipping norm, and the noise (0: calibrated to the budget)."""

    epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float = 0.0
    accountant: str = "rdp"
    mode: str = "local"

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> PrivacySettings:
        """Check a spec's table; `PrivacyError` names the first bad setting."""
        unknown = sorted(set(table) - set(_KEYS))
        if unknown:
            raise PrivacyError(
                f"privacy has no setting(s) {', '.join(unknown)} ({', '.join(_KEYS)})"
            )
        missing = [k for k in ("epsilon", "delta", "max_grad_norm") if k not in table]
        if missing:
            raise PrivacyError(f"privacy needs {', '.join(missing)} (the budget and the clipping)")
        accountant = table.get("accountant", "rdp")
        if accountant not in ACCOUNTANTS:
            raise PrivacyError(f"privacy.accountant must be one of {', '.join(ACCOUNTANTS)}")
        mode = table.get("mode", "local")
        if mode not in MODES:
            raise PrivacyError(f"privacy.mode must be one of {', '.join(MODES)}")
        t = {"noise_multiplier": 0.0, **table}
        return cls(
            epsilon=_number(t, "epsilon", 0.0, MAX_EPSILON, open_lo=True),
            delta=_number(t, "delta", 0.0, 0.1, open_lo=True),
            max_grad_norm=_number(t, "max_grad_norm", 0.0, 1e6, open_lo=True),
            noise_multiplier=_number(t, "noise_multiplier", 0.0, MAX_NOISE, open_lo=False),
            accountant=accountant,
            mode=mode,
        )

    def to_table(self) -> dict[str, Any]:
        """The canonical table: every key, numbers as floats."""
        return {
            "accountant": self.accountant,
            "delta": self.delta,
            "epsilon": self.epsilon,
            "max_grad_norm": self.max_grad_norm,
            "mode": self.mode,
            "noise_multiplier": self.noise_multiplier,
        }


@dataclass(frozen=True)
class StepPlan:
    """One round of one participant's DP-SGD: noise multiplier σ, Poisson sampling rate q
    and number of steps; what the accountant composes."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def round_plan(
    settings: PrivacySettings, num_samples: int, batch_size: int, epochs: int, rounds: int
) -> StepPlan:
    """What one round costs a participant with ``num_samples`` records: q = 1 / (batches per
    epoch), as Opacus derives it from a data loader, and ``epochs`` times that many steps
    (local DP-SGD); one Gaussian step at q = 1 in distributed mode."""
    if settings.mode == "distributed":
        return distributed_plan(settings, rounds)
    if num_samples < 1:
        raise PrivacyError("no local training data")
    batches = math.ceil(num_samples / batch_size)
    q, steps = 1.0 / batches, epochs * batches
    sigma = settings.noise_multiplier or calibrate(
        settings.epsilon, settings.delta, q, steps * rounds, settings.accountant
    )
    return StepPlan(sigma, q, steps)


@functools.lru_cache(maxsize=64)
def calibrate(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The smallest noise multiplier (to Opacus's tolerance) with which ``steps`` steps at
    ``sample_rate`` spend at most ``epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=_EPS_TOLERANCE,
        )
    )


def distributed_plan(settings: PrivacySettings, rounds: int) -> StepPlan:
    """One round of distributed DP: the Gaussian mechanism once, on everyone (q = 1), with
    the job's σ, or the σ with which ``rounds`` such steps spend ``epsilon``."""
    sigma = settings.noise_multiplier or calibrate(
        settings.epsilon, settings.delta, 1.0, rounds, settings.accountant
    )
    return StepPlan(sigma, 1.0, 1)


def noise_share_std(noise_multiplier: float, clip: float, participants: int) -> float:
    """The noise each of ``participants`` adds to its clipped update so that their masked
    sum carries N(0, (σC)²) per coordinate."""
    return noise_multiplier * clip / math.sqrt(participants)


def clip_update(update: Mapping[str, np.ndarray], norm: float) -> dict[str, np.ndarray]:
    """The update scaled so that its L2 norm over all floating tensors is at most ``norm``
    (unchanged when it already is); float64 throughout."""
    floats = {k: np.asarray(v, dtype=np.float64) for k, v in update.items()}
    total = math.sqrt(sum(float(np.square(v).sum()) for v in floats.values()))
    scale = min(1.0, norm / total) if total > 0 else 1.0
    return {k: v * scale for k, v in floats.items()}


def noise_share(
    update: Mapping[str, np.ndarray], settings: PrivacySettings, plan: StepPlan, min_updates: int
) -> dict[str, np.ndarray]:
    """Distributed DP before masking: clip to ``max_grad_norm``, then add this participant's
    share of the Gaussian noise, drawn from the OS's randomness (never the job's seed)."""
    std = noise_share_std(plan.noise_multiplier, settings.max_grad_norm, min_updates)
    rng = np.random.default_rng(secrets.randbits(128))
    clipped = clip_update(update, settings.max_grad_norm)
    return {k: v + rng.normal(0.0, std, size=v.shape) for k, v in clipped.items()}


@dataclass
class PrivacyAccount:
    """ε spent by one participant in one job: the plan of every round it trained, composed.

    Its state is the list of rounds (JSON via `to_json`), so it survives a node's restart.
    """

    accountant: str = "rdp"
    rounds: list[tuple[int, StepPlan]] = field(default_factory=list)

    def epsilon(self, delta: float, extra: StepPlan | None = None) -> float:
        """ε spent so far at ``delta`` (with ``extra`` one more round, if given)."""
        plans = [p for _, p in self.rounds] + ([extra] if extra is not None else [])
        if not plans:
            return 0.0
        from opacus.accountants import create_accountant

        acc = create_accountant(self.accountant)
        acc.history = [(p.noise_multiplier, p.sample_rate, p.steps) for p in plans]
        return float(acc.get_epsilon(delta))

    def spend(self, r: int, plan: StepPlan) -> None:
        """Round ``r`` was trained (its update may leave this node)."""
        self.rounds.append((r, plan))

    def to_json(self) -> bytes:
        rows = [[r, p.noise_multiplier, p.sample_rate, p.steps] for r, p in self.rounds]
        return json.dumps({"accountant": self.accountant, "rounds": rows}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PrivacyAccount:
        try:
            doc = json.loads(raw)
            rounds = [
                (int(r), StepPlan(float(s), float(q), int(n))) for r, s, q, n in doc["rounds"]
            ]
            accountant = str(doc["accountant"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PrivacyError(f"unreadable privacy account: {exc}") from None
        if accountant not in ACCOUNTANTS:
            raise PrivacyError(f"unreadable privacy account: accountant {accountant!r}")
        return cls(accountant, rounds)


# -- DP-SGD set-up (torch and Opacus from here on) ---------------------------------------------


def _same_parameters(model: nn.Module, fixed: nn.Module) -> bool:
    """``fixed`` holds ``model``'s state under the same names and shapes; any other name it
    has is another name for one of those tensors (DPLSTM names its weights twice)."""
    before = model.state_dict()
    after = fixed.state_dict(keep_vars=True)
    if any(k not in after or after[k].shape != v.shape for k, v in before.items()):
        return False
    kept = {id(after[k]) for k in before}
    return all(id(v) in kept for k, v in after.items() if k not in before)


def private_model(model: nn.Module) -> nn.Module:
    """``model`` itself when Opacus can train it per sample; a copy its validator fixed when
    the fix keeps the model's parameters (LSTM -> DPLSTM: the same function, the same
    weights); `PrivacyError` otherwise (BatchNorm would become GroupNorm: another model).
    Load the weights before: the fix copies them."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    fixed: nn.Module = ModuleValidator.fix(model)
    if _same_parameters(model, fixed) and ModuleValidator.is_valid(fixed):
        return fixed
    first = str(errors[0]).split("\n")[0].strip()
    raise PrivacyError(
        f"the model cannot be trained with DP-SGD ({first}); Opacus's fix would change the "
        "model: use one without batch norm, or leave [privacy] out"
    )


def model_problem(model_name: str, model_kwargs: Mapping[str, Any]) -> str | None:
    """Why a job's model cannot be trained privately, in one line (None when it can)."""
    from gfl.fl.models import ModelError, build_model

    try:
        private_model(build_model(model_name, **model_kwargs))
    except (PrivacyError, ModelError) as exc:
        return str(exc)
    return None


@dataclass
class PrivateTraining:
    """A model wrapped for DP-SGD: ``module`` computes per-sample gradient norms (Opacus's
    ghost clipping), ``loss`` clips each sample's gradient in its backward pass, ``step``
    adds the noise and then runs the job's own optimizer."""

    module: nn.Module
    optimizer: Any  # opacus.optimizers.DPOptimizerFastGradientClipping
    criterion: Any  # opacus.utils.fast_gradient_clipping_utils.DPLossFastGradientClipping
    plan: StepPlan
    generator: torch.Generator

    def batches(self, num_samples: int) -> Iterator[list[int]]:
        """``plan.steps`` Poisson-sampled batches of indices (some may be empty)."""
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        sampler = UniformWithReplacementSampler(
            num_samples=num_samples,
            sample_rate=self.plan.sample_rate,
            generator=self.generator,
            steps=self.plan.steps,
        )
        return iter(sampler)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(True)

    def step(self, local_step: Any) -> None:
        """Noise the clipped sum (Opacus), then ``local_step()`` (the job's optimizer)."""
        if self.optimizer.pre_step():
            local_step()


def make_private(
    model: nn.Module,
    settings: PrivacySettings,
    plan: StepPlan,
    expected_batch_size: int,
    device: torch.device,
) -> PrivateTraining:
    """Wrap ``model`` (already a `private_model`) for DP-SGD with ``plan``'s noise.

    Sampling and noise draw from a generator seeded from the OS's randomness, never from the
    job's public seed: noise anyone can regenerate protects nothing.
    """
    import torch
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    module = GradSampleModuleFastGradientClipping(
        model,
        batch_first=True,
        loss_reduction="mean",
        max_grad_norm=settings.max_grad_norm,
        use_ghost_clipping=True,
    )
    # Opacus wants a torch optimizer to wrap; the job's own optimizer steps after the noise
    # (`PrivateTraining.step`), so this one only holds the parameter list.
    holder = torch.optim.SGD(module.parameters(), lr=0.0)
    generator = torch.Generator(device=device).manual_seed(secrets.randbits(63))
    optimizer = DPOptimizerFastGradientClipping(
        holder,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=generator,
    )
    criterion = DPLossFastGradientClipping(
        module, optimizer, torch.nn.CrossEntropyLoss(reduction="mean"), loss_reduction="mean"
    )
    sampling = torch.Generator().manual_seed(secrets.randbits(63))
    return PrivateTraining(module, optimizer, criterion, plan, sampling)
