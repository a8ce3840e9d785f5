"""Krum (Blanchard et al. 2017): pick the update closest to its n - f - 2 nearest neighbours."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gfl.fl.strategies.base import (
    ClientUpdate,
    Strategy,
    StrategyError,
    f64,
    fixed_sum,
    sample_weighted_delta,
)


def krum_scores(updates: Sequence[ClientUpdate], names: Sequence[str], f: int) -> list[float]:
    """Score of each update: sum of squared distances to its n-f-2 nearest others (min 1)."""
    n = len(updates)
    flat = [np.concatenate([f64(u.update[k]).reshape(-1) for k in names]) for u in updates]
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            diff = flat[i] - flat[j]
            dist[i, j] = dist[j, i] = fixed_sum(diff * diff)
    nearest = max(1, n - f - 2)
    return [float(sum(sorted(dist[i, j] for j in range(n) if j != i)[:nearest])) for i in range(n)]


class Krum(Strategy):
    """Krum with `f` assumed Byzantine clients; `m` > 1 averages the m best (Multi-Krum)."""

    name = "krum"
    allowed = frozenset({"f", "m"})
    default_m = 1
    coordinatewise = False  # scores need whole-vector distances: never sharded

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.f = int(kwargs.get("f", 0))
        self.m = int(kwargs.get("m", self.default_m))
        if self.f < 0 or self.m < 1:
            raise StrategyError("krum needs f >= 0 and m >= 1")

    def combine(
        self, global_params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> dict[str, np.ndarray]:
        names = sorted(global_params)
        if len(updates) == 1:
            chosen = list(updates)
        else:
            scores = krum_scores(updates, names, self.f)
            # ties go to the lower canonical position: stable sort on (score, index)
            order = sorted(range(len(updates)), key=lambda i: (scores[i], i))
            chosen = [updates[i] for i in order[: min(self.m, len(updates))]]
        return sample_weighted_delta(global_params, chosen)
