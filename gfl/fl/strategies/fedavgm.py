"""FedAvgM (Hsu et al. 2019): FedAvg with server momentum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gfl.fl.strategies.base import num
from gfl.fl.strategies.fedavg import FedAvg


class FedAvgM(FedAvg):
    """v <- momentum*v + avg_delta; w <- w + server_lr*v. State: v per parameter."""

    name = "fedavgm"
    stateful = True
    allowed = frozenset({"server_lr", "momentum"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_lr = num(kwargs, "server_lr", 1.0, 0.0)
        self.momentum = num(kwargs, "momentum", 0.9, 0.0, 1.0)
        self.velocity: dict[str, np.ndarray] = {}

    def server_step(self, delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for n, d in delta.items():
            v = self.velocity.get(n)
            v = d if v is None else v * self.momentum + d
            self.velocity[n] = v
            out[n] = v * self.server_lr
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"v/{n}": v.copy() for n, v in self.velocity.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.velocity = {
            k[2:]: np.array(v, dtype=np.float64) for k, v in state.items() if k.startswith("v/")
        }
