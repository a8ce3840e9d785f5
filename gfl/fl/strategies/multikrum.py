"""Multi-Krum: Krum's m best-scored updates, sample-weighted averaged (m defaults to n - f)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gfl.fl.strategies.base import ClientUpdate
from gfl.fl.strategies.krum import Krum


class MultiKrum(Krum):
    """Krum selection of m updates, then FedAvg over them."""

    name = "multikrum"

    def combine(
        self, global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> dict[str, np.ndarray]:
        if "m" not in self.kwargs:
            self.m = max(1, len(updates) - self.f)
        return super().combine(global_params, updates)
