"""FedProx (Li et al. 2020): clients add mu/2*||w - w_g||^2 locally; the server is FedAvg."""

from __future__ import annotations

from gfl.fl.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """Server side of FedProx; the trainer reads `mu` from the job's strategy settings."""

    name = "fedprox"
    allowed = frozenset({"mu"})
