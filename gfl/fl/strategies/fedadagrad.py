"""FedAdagrad: v <- v + d^2 (beta1 defaults to 0: no momentum)."""

from __future__ import annotations

import numpy as np

from gfl.fl.strategies.fedopt import FedOpt


class FedAdagrad(FedOpt):
    """Adagrad on the server."""

    name = "fedadagrad"
    allowed = frozenset({"eta", "beta1", "tau"})
    default_beta1 = 0.0

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        out: np.ndarray = v + d2
        return out
