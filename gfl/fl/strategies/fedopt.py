"""Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization").

The averaged client delta is treated as a pseudo-gradient step: m is its moving average,
v its second-moment estimate, and w <- w + eta * m / (sqrt(v) + tau). FedAdam, FedYogi and
FedAdagrad differ only in how v is updated, so they share this base and keep one file each.
No bias correction (as in the paper); v starts at tau^2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gfl.fl.strategies.base import num
from gfl.fl.strategies.fedavg import FedAvg


class FedOpt(FedAvg):
    """Shared math for FedAdam / FedYogi / FedAdagrad; subclasses define `second_moment`."""

    allowed = frozenset({"eta", "beta1", "beta2", "tau"})
    stateful = True
    default_beta1 = 0.9

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eta = num(kwargs, "eta", 0.1, 0.0)
        self.beta1 = num(kwargs, "beta1", self.default_beta1, 0.0, 1.0)
        self.beta2 = num(kwargs, "beta2", 0.99, 0.0, 1.0)
        self.tau = num(kwargs, "tau", 1e-3, 0.0)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def server_step(self, delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for n, d in delta.items():
            m = self.m.get(n, np.zeros_like(d))
            v = self.v.get(n, np.full_like(d, self.tau * self.tau))
            m = m * self.beta1 + d * (1.0 - self.beta1)
            v = self.second_moment(v, d * d)
            self.m[n], self.v[n] = m, v
            out[n] = (m * self.eta) / (np.sqrt(v) + self.tau)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        s = {f"m/{n}": a.copy() for n, a in self.m.items()}
        s.update({f"v/{n}": a.copy() for n, a in self.v.items()})
        return s

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.m = {k[2:]: np.array(a, np.float64) for k, a in state.items() if k.startswith("m/")}
        self.v = {k[2:]: np.array(a, np.float64) for k, a in state.items() if k.startswith("v/")}
