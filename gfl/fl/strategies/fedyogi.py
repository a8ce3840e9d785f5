"""FedYogi: v <- v - (1-beta2)*d^2*sign(v - d^2)."""

from __future__ import annotations

import numpy as np

from gfl.fl.strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    """Yogi on the server: additive second-moment updates, steadier than Adam."""

    name = "fedyogi"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        out: np.ndarray = v - d2 * (1.0 - self.beta2) * np.sign(v - d2)
        return out
