"""Local training: E epochs of minibatch B from the round's global model; returns the delta.

A job may name a custom trainer (`trainer = "name"` in the spec) installed on the node as a
`gfl.trainers` entry point: a callable with `train_local`'s signature. Hooks let a node run
its own code before and after local training without replacing the trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from gfl.errors import GflError
from gfl.fl.data import ArrayDataset
from gfl.fl.models import RNG_LOCK, build_model, get_params, set_params
from gfl.fl.optim import LocalOptimizer, OptimizerOptionError, make_optimizer
from gfl.fl.privacy import (
    PrivacyError,
    PrivacySettings,
    StepPlan,
    make_private,
    private_model,
    round_plan,
)
from gfl.fl.spec import JobSpec

log = logging.getLogger(__name__)

EVAL_BATCH = 128


class TrainError(GflError):
    """Local training could not run (unknown trainer, bad device, empty data)."""


@dataclass
class LocalResult:
    """What a participant commits: its update (local - global), sample count and metrics;
    with a job's ``[privacy]``, what this round's DP-SGD cost (for the node's accountant)."""

    update: dict[str, np.ndarray]
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    privacy: StepPlan | None = None


class TrainHooks(Protocol):
    """Optional user code around local training; either method may be left out."""

    def before_train(self, model: nn.Module, spec: JobSpec) -> None: ...

    def after_train(self, model: nn.Module, spec: JobSpec, result: LocalResult) -> None: ...


def _hooks(hooks: TrainHooks | Sequence[TrainHooks] | None) -> list[Any]:
    if hooks is None:
        return []
    return list(hooks) if isinstance(hooks, list | tuple) else [hooks]


def initial_params(spec: JobSpec) -> dict[str, np.ndarray]:
    """M_0: the model built from the spec with torch's RNG seeded by spec.seed (same everywhere)."""
    with RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build_model(spec.model, **spec.model_kwargs)
    return get_params(model)


def _optimizer(spec: JobSpec, params: Any) -> LocalOptimizer:
    try:
        return make_optimizer(spec.optimizer, params, spec.lr, spec.optimizer_kwargs)
    except OptimizerOptionError as e:
        raise TrainError(str(e)) from None


def check_device(device: str) -> torch.device:
    """The torch device for ``device``; `TrainError` if it is malformed or this machine lacks it."""
    try:
        d = torch.device(device)
    except RuntimeError as e:
        raise TrainError(f"bad device {device!r}: {e}") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"device {device!r} requested but no CUDA GPU is available")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise TrainError(f"device {device!r}: this machine has {n} CUDA GPU(s), 0..{n - 1}")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise TrainError(f"device {device!r} requested but Apple's MPS is not available here")
    elif d.type != "cpu":
        raise TrainError(f"device {device!r}: use cpu, cuda, cuda:N or mps")
    return d


def _custom_trainer(name: str) -> Any:
    for ep in entry_points(group="gfl.trainers"):
        if ep.name == name:
            return ep.load()
    raise TrainError(f"trainer {name!r} is not installed on this node ('gfl.trainers' entry point)")


def train_local(
    spec: JobSpec,
    global_params: Mapping[str, np.ndarray],
    train_data: ArrayDataset,
    *,
    device: str = "cpu",
    hooks: TrainHooks | Sequence[TrainHooks] | None = None,
    eval_data: ArrayDataset | None = None,
    seed: int | None = None,
) -> LocalResult:
    """Train locally per the spec and return the update; FedProx's term applies when mu > 0,
    DP-SGD when the spec has a ``[privacy]`` table."""
    if spec.trainer != "default":
        result: LocalResult = _custom_trainer(spec.trainer)(
            spec,
            global_params,
            train_data,
            device=device,
            hooks=hooks,
            eval_data=eval_data,
            seed=seed,
        )
        return result
    n = len(train_data)
    if n == 0:
        raise TrainError("no local training data")
    dev = check_device(device)
    model = build_model(spec.model, **spec.model_kwargs)
    set_params(model, global_params)
    privacy = spec.privacy_settings
    if privacy is not None and privacy.mode != "local":
        privacy = None  # distributed DP noises the update after training (gfl.fl.privacy)
    if privacy is not None:
        try:
            model = private_model(model)
        except PrivacyError as e:
            raise TrainError(str(e)) from None
    model.to(dev)
    for h in _hooks(hooks):
        if hasattr(h, "before_train"):
            h.before_train(model, spec)
    gen = torch.Generator().manual_seed(spec.seed if seed is None else seed)
    x_all = torch.from_numpy(train_data.x)
    y_all = torch.from_numpy(train_data.y)
    model.train()
    plan = None
    if privacy is None:
        train_loss = _train_epochs(spec, model, x_all, y_all, gen, dev)
    else:
        plan = round_plan(privacy, n, spec.batch_size, spec.local_epochs, spec.rounds)
        train_loss = _train_private(spec, privacy, model, x_all, y_all, plan, dev)
    local = get_params(model)
    update = {}
    for k, g in global_params.items():
        g = np.asarray(g)
        if g.dtype.kind == "f":
            update[k] = (local[k].astype(np.float64) - g).astype(g.dtype)
        else:
            update[k] = (local[k] - g).astype(g.dtype)
    metrics = {"train_loss": train_loss}
    if plan is not None:
        metrics.update(dp_noise_multiplier=plan.noise_multiplier, dp_steps=plan.steps)
    if eval_data is not None and len(eval_data):
        ev = _evaluate_model(model, eval_data, dev)
        metrics.update({"loss": ev["loss"], "accuracy": ev["accuracy"]})
    result = LocalResult(update, n, metrics, plan)
    for h in _hooks(hooks):
        if hasattr(h, "after_train"):
            h.after_train(model, spec, result)
    return result


def _train_epochs(
    spec: JobSpec,
    model: nn.Module,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    gen: torch.Generator,
    dev: torch.device,
) -> float:
    """E epochs of shuffled minibatches; the last epoch's mean loss."""
    n = len(x_all)
    mu = spec.proximal_mu
    anchor = [p.detach().clone() for p in model.parameters()] if mu > 0 else []
    opt = _optimizer(spec, model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    total_loss, seen = 0.0, 0
    for _epoch in range(spec.local_epochs):
        total_loss, seen = 0.0, 0
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, spec.batch_size):
            idx = perm[start : start + spec.batch_size]
            xb, yb = x_all[idx].to(dev), y_all[idx].to(dev)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            if mu > 0:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + 0.5 * mu * prox
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(idx)
            seen += len(idx)
    return total_loss / max(seen, 1)


def _train_private(
    spec: JobSpec,
    privacy: PrivacySettings,
    model: nn.Module,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    plan: StepPlan,
    dev: torch.device,
) -> float:
    """DP-SGD: ``plan.steps`` Poisson-sampled batches, each sample's gradient clipped, the
    sum noised (`gfl.fl.privacy`), then the job's optimizer; the mean loss over the round."""
    dp = make_private(model, privacy, plan, spec.batch_size, dev)
    opt = _optimizer(spec, model.parameters())
    total_loss, seen = 0.0, 0
    for idx in dp.batches(len(x_all)):
        xb, yb = x_all[idx].to(dev), y_all[idx].to(dev)
        dp.zero_grad()
        opt.zero_grad()
        loss = dp.criterion(dp.module(xb), yb)
        loss.backward()
        dp.step(opt.step)  # an empty batch still takes a step: noise only, as accounted
        if len(idx):
            total_loss += float(loss.detach()) * len(idx)
            seen += len(idx)
    return total_loss / max(seen, 1)


@torch.no_grad()
def _evaluate_model(model: nn.Module, data: ArrayDataset, dev: torch.device) -> dict[str, float]:
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, correct, n = 0.0, 0, len(data)
    for start in range(0, n, EVAL_BATCH):
        xb = torch.from_numpy(data.x[start : start + EVAL_BATCH]).to(dev)
        yb = torch.from_numpy(data.y[start : start + EVAL_BATCH]).to(dev)
        out = model(xb)
        total += float(loss_fn(out, yb))
        correct += int((out.argmax(1) == yb).sum())
    return {"loss": total / max(n, 1), "accuracy": correct / max(n, 1)}


def evaluate(
    spec: JobSpec, params: Mapping[str, np.ndarray], data: ArrayDataset, *, device: str = "cpu"
) -> dict[str, float]:
    """Loss and accuracy of `params` on `data`."""
    dev = check_device(device)
    model = build_model(spec.model, **spec.model_kwargs)
    set_params(model, params)
    return _evaluate_model(model.to(dev), data, dev)
