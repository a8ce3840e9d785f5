"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the updates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gfl.fl.strategies.base import ClientUpdate, Strategy, sample_weighted_delta


class FedAvg(Strategy):
    """w <- w + sum_i n_i/n * delta_i."""

    name = "fedavg"

    def combine(
        self, global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> dict[str, np.ndarray]:
        return sample_weighted_delta(global_params, updates)
