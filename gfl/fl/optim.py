"""Local optimizers a job can name: SGD (momentum, dampening, Nesterov), Adam and AdamW.

Why not torch.optim: an optimizer's first step there imports torch._dynamo (torch.compile's
machinery), which costs every node ~150 MB of resident memory and ~2 s of start-up for
nothing: nodes never compile. The update rules below are the textbook ones, written as
torch.optim's single-tensor CPU path computes them, so a job trains the same with either;
tests/fl/test_optim.py checks them bit for bit against torch.optim.

The options each optimizer accepts (and their defaults) live here as plain data, so a job
spec is checked without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

OPTIONS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    "adam": {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False},
    "adamw": {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False},
}
OPTIMIZERS = tuple(OPTIONS)


class OptimizerOptionError(ValueError):
    """An optimizer's options are unknown, of the wrong type or out of range."""


def _number(name: str, v: Any, *, below_one: bool = False) -> float:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    if not ok or (below_one and v >= 1):
        bound = "in [0, 1)" if below_one else ">= 0"
        raise OptimizerOptionError(f"optimizer option {name} must be a number {bound}, got {v!r}")
    return float(v)


def check_options(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The options of optimizer `name`: `kwargs` checked and completed with the defaults."""
    if name not in OPTIONS:
        raise OptimizerOptionError(f"optimizer {name!r} is unknown; known: {', '.join(OPTIONS)}")
    unknown = sorted(set(kwargs) - set(OPTIONS[name]))
    if unknown:
        raise OptimizerOptionError(
            f"optimizer {name} has no option {', '.join(unknown)}; "
            f"it takes {', '.join(OPTIONS[name])}"
        )
    opts = {**OPTIONS[name], **kwargs}
    for key in ("momentum", "dampening", "weight_decay", "eps"):
        if key in opts:
            opts[key] = _number(key, opts[key], below_one=key in ("momentum", "dampening"))
    for key in ("nesterov", "amsgrad"):
        if key in opts and not isinstance(opts[key], bool):
            raise OptimizerOptionError(f"optimizer option {key} must be true or false")
    if "betas" in opts:
        b = opts["betas"]
        if not isinstance(b, list | tuple) or len(b) != 2:
            raise OptimizerOptionError(f"optimizer option betas must be two numbers, got {b!r}")
        opts["betas"] = tuple(_number("betas", x, below_one=True) for x in b)
    if opts.get("nesterov") and (opts["momentum"] <= 0 or opts["dampening"] != 0):
        raise OptimizerOptionError("nesterov needs momentum > 0 and dampening 0")
    return opts


class LocalOptimizer:
    """Steps a list of parameters in place from their `.grad` (eager, CPU or GPU)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr = float(lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        raise NotImplementedError


class SGD(LocalOptimizer):
    """p <- p - lr * g, with optional L2 weight decay, (Nesterov) momentum and dampening."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, **kwargs: Any) -> None:
        super().__init__(params, lr)
        o = check_options("sgd", kwargs)
        self.momentum, self.dampening = o["momentum"], o["dampening"]
        self.weight_decay, self.nesterov = o["weight_decay"], o["nesterov"]
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad.detach()
            if self.weight_decay:
                g = g.add(p.detach(), alpha=self.weight_decay)
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = g.clone()
                else:
                    buf.mul_(self.momentum).add_(g, alpha=1 - self.dampening)
                g = g.add(buf, alpha=self.momentum) if self.nesterov else buf
            p.detach().add_(g, alpha=-self.lr)


class Adam(LocalOptimizer):
    """Adam (Kingma & Ba) with bias correction; L2 weight decay, or decoupled for AdamW."""

    name = "adam"
    decoupled = False

    def __init__(self, params: Iterable[torch.Tensor], lr: float, **kwargs: Any) -> None:
        super().__init__(params, lr)
        o = check_options(self.name, kwargs)
        self.beta1, self.beta2 = o["betas"]
        self.eps, self.weight_decay, self.amsgrad = o["eps"], o["weight_decay"], o["amsgrad"]
        self.steps = [0] * len(self.params)
        self.moments: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None] = [
            None
        ] * len(self.params)

    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            w, g = p.detach(), p.grad.detach()
            if self.moments[i] is None:
                zero = w.clone().zero_()
                self.moments[i] = (zero, zero.clone(), zero.clone() if self.amsgrad else None)
            m, v, v_max = self.moments[i]  # type: ignore[misc]
            self.steps[i] += 1
            t = float(self.steps[i])
            if self.weight_decay:
                if self.decoupled:
                    w.mul_(1 - self.lr * self.weight_decay)
                else:
                    g = g.add(w, alpha=self.weight_decay)
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            step_size = self.lr / (1 - self.beta1**t)
            correction2_sqrt = (1 - self.beta2**t) ** 0.5
            if v_max is not None:
                v_max.copy_(v_max.maximum(v))
                v = v_max
            denom = (v.sqrt() / correction2_sqrt).add_(self.eps)
            w.addcdiv_(m, denom, value=-step_size)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p <- p * (1 - lr * wd)."""

    name = "adamw"
    decoupled = True


def make_optimizer(
    name: str, params: Iterable[torch.Tensor], lr: float, kwargs: Mapping[str, Any]
) -> LocalOptimizer:
    """The optimizer a job names, over `params`; raises OptimizerOptionError on bad options."""
    check_options(name, kwargs)
    return {"sgd": SGD, "adam": Adam, "adamw": AdamW}[name](params, lr, **kwargs)
