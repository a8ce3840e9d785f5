"""A job's secure-aggregation settings, the per-round graph shape and the strategy check."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gfl.fl.secagg.errors import SecAggError
from gfl.fl.secagg.fixedpoint import FixedPoint, integer_weight, word_bits_problem

# the strategies whose aggregate is the weighted mean of the updates (or a server step on it)
FEDAVG_FAMILY = ("fedadagrad", "fedadam", "fedavg", "fedavgm", "fedprox", "fedyogi")
MAX_NEIGHBOURS = 254  # holders per dealer fit one byte


def strategy_problem(strategy: str) -> str | None:
    """Why `strategy` cannot run under secure aggregation (None when it can), in one line."""
    if strategy in FEDAVG_FAMILY:
        return None
    return (
        f"strategy {strategy!r} needs each update in the clear; secure aggregation only gives "
        f"the sum: use one of {', '.join(FEDAVG_FAMILY)}"
    )


def shape_problem(neighbours: int, threshold: int) -> str | None:
    """Why (k, t) are not a valid graph degree and threshold (None when they are)."""
    k, t = neighbours, threshold
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (k, t)):
        return "neighbours and threshold must be integers"
    if not (2 <= k <= MAX_NEIGHBOURS and k % 2 == 0):
        return f"neighbours must be even, 2..{MAX_NEIGHBOURS}: {k}"
    if not (2 * t > k + 1 and t <= k + 1):
        return f"threshold must be in {k // 2 + 1}..{k + 1}: {t}"
    return None


def round_shape(neighbours: int, threshold: int, members: int) -> tuple[int, int]:
    """(k_r, t_r) for a round of `members`: k_r = min(k, n − 1), t_r = min(t, k_r + 1)."""
    problem = shape_problem(neighbours, threshold)
    if problem:
        raise SecAggError(f"secure aggregation: {problem}")
    if members < 1:
        raise SecAggError("secure aggregation: a round needs at least one member")
    k = min(neighbours, members - 1)
    return k, min(threshold, k + 1)


@dataclass(frozen=True)
class SecAggParams:
    """threshold t, neighbours k (even), clip c, weight_levels (0: exact sample weights),
    word_bits w (16, 24 or 32: the width of a masked word on the wire).

    t > (k + 1) / 2: a strict majority of a dealer's k + 1 holders, so that holders who never
    reveal both kinds of a dealer's shares can never together reconstruct both.
    """

    threshold: int
    neighbours: int
    clip: float
    weight_levels: int = 0
    word_bits: int = 32

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise SecAggError(f"secure aggregation: {msg}")

        problem = shape_problem(self.neighbours, self.threshold)
        need(problem is None, problem or "")
        v = self.weight_levels
        need(isinstance(v, int) and not isinstance(v, bool), "weight_levels must be an integer")
        need(
            isinstance(self.clip, float | int)
            and not isinstance(self.clip, bool)
            and math.isfinite(self.clip)
            and self.clip > 0,
            f"clip must be a positive number: {self.clip!r}",
        )
        need(self.weight_levels >= 0, "weight_levels must be 0 (exact) or positive")
        bits = word_bits_problem(self.word_bits)
        need(bits is None, bits or "")
        object.__setattr__(self, "clip", float(self.clip))

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> SecAggParams:
        """From a spec's table {threshold, neighbours, clip, weight_levels?, word_bits?}."""
        known = {"threshold", "neighbours", "clip", "weight_levels", "word_bits"}
        extra = sorted(set(table) - known)
        if extra:
            raise SecAggError(f"secure aggregation: unknown setting {extra[0]!r}")
        missing = sorted({"threshold", "neighbours", "clip"} - set(table))
        if missing:
            raise SecAggError(f"secure aggregation: {missing[0]} is required")
        return cls(**dict(table))

    def max_weight(self, max_samples: int) -> int:
        """ω_max: max_samples, or weight_levels when set (1 with equal weighting)."""
        return integer_weight(max_samples, max_samples, self.weight_levels)

    def weight(self, samples: int, max_samples: int) -> int:
        """An update's integer weight from its committed (capped) samples."""
        return integer_weight(samples, max_samples, self.weight_levels)

    def fixed_point(self, max_participants: int, max_samples: int) -> FixedPoint:
        """The job's fixed point: at most max_participants summands of weight ≤ ω_max."""
        return FixedPoint.choose(
            self.clip, max_participants, self.max_weight(max_samples), self.word_bits
        )
