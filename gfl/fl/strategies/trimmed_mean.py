"""Coordinate-wise trimmed mean (Yin et al. 2018)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gfl.fl.strategies.base import ClientUpdate, Strategy, f64, num


class TrimmedMean(Strategy):
    """Per coordinate, drop the floor(beta*n) largest and smallest values, average the rest."""

    name = "trimmed_mean"
    allowed = frozenset({"beta"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.beta = num(kwargs, "beta", 0.1, 0.0, 0.4999)

    def combine(
        self, global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> dict[str, np.ndarray]:
        k = math.floor(self.beta * len(updates))
        kept = len(updates) - 2 * k
        out = {}
        for n in global_params:
            s = np.sort(np.stack([f64(u.update[n]) for u in updates]), axis=0)
            acc = np.zeros(s.shape[1:], dtype=np.float64)
            for i in range(k, k + kept):  # fixed order, elementwise
                acc += s[i]
            out[n] = acc / kept
        return out
