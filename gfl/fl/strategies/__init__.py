"""Aggregation strategies, one class per module behind `Strategy`; `make_strategy` picks one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gfl.fl.strategies.base import ClientUpdate, Strategy, StrategyError
from gfl.fl.strategies.fedadagrad import FedAdagrad
from gfl.fl.strategies.fedadam import FedAdam
from gfl.fl.strategies.fedavg import FedAvg
from gfl.fl.strategies.fedavgm import FedAvgM
from gfl.fl.strategies.fedprox import FedProx
from gfl.fl.strategies.fedyogi import FedYogi
from gfl.fl.strategies.krum import Krum
from gfl.fl.strategies.median import Median
from gfl.fl.strategies.multikrum import MultiKrum
from gfl.fl.strategies.trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedAvgM,
        FedProx,
        FedAdam,
        FedYogi,
        FedAdagrad,
        Median,
        TrimmedMean,
        Krum,
        MultiKrum,
    )
}


def make_strategy(name: str, kwargs: Mapping[str, Any] | None = None) -> Strategy:
    """A fresh strategy instance from a job's strategy name and settings."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise StrategyError(f"strategy {name!r} is unknown; known: {', '.join(sorted(STRATEGIES))}")
    return cls(**dict(kwargs or {}))


__all__ = ["STRATEGIES", "ClientUpdate", "Strategy", "StrategyError", "make_strategy"]
