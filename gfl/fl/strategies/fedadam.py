"""FedAdam: v <- beta2*v + (1-beta2)*d^2."""

from __future__ import annotations

import numpy as np

from gfl.fl.strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    """Adam on the server."""

    name = "fedadam"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v * self.beta2 + d2 * (1.0 - self.beta2)
