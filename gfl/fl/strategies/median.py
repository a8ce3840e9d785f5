"""Coordinate-wise median (Yin et al. 2018): robust to a minority of arbitrary updates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gfl.fl.strategies.base import ClientUpdate, Strategy, f64


class Median(Strategy):
    """Each coordinate takes the median of the clients' values (unweighted)."""

    name = "median"

    def combine(
        self, global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> dict[str, np.ndarray]:
        out = {}
        for n in global_params:
            stacked = np.stack([f64(u.update[n]) for u in updates])
            out[n] = np.median(stacked, axis=0)
        return out
