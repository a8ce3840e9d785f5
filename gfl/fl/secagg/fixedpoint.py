"""Fixed point: float updates to integers mod 2^32 whose sum never wraps, and back.

A participant flattens its update (tensors sorted by name, C order, as float64), quantises
each coordinate to q = clamp(round_half_even(x · 2^f), −B, B) with B = floor(c · 2^f) (c the
clip bound), and sends ω·q mod 2^32 (two's complement), ω its integer weight. f is the
largest number of fractional bits with n · ω_max · B ≤ 2^31 − 1 for the most summands n:
then the true sum Σ ω_i q_i lies in int32, so reading the sum mod 2^32 as int32 is exact,
and the weighted mean is that integer divided by (Σ ω_i) · 2^f, one float64 division.
The weighting is exact in integers; its cost is log2(ω_max) bits of precision, which
`integer_weight`'s levels bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from gfl.fl.secagg.errors import SecAggError

LIMIT = (1 << 31) - 1  # the largest |Σ ω_i q_i| that int32 holds
MAX_FRAC_BITS = 62
_WORD = 0xFFFFFFFF


@dataclass(frozen=True)
class FixedPoint:
    """f fractional bits and the bound B on |q| (B = floor(clip · 2^f))."""

    frac_bits: int
    bound: int

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= MAX_FRAC_BITS or not 1 <= self.bound <= LIMIT:
            raise SecAggError(f"fixed point: f = {self.frac_bits}, B = {self.bound} are invalid")

    @classmethod
    def choose(cls, clip: float, max_summands: int, max_weight: int) -> FixedPoint:
        """The most fractional bits for which max_summands · max_weight · B ≤ 2^31 − 1."""
        if not (isinstance(clip, float | int) and math.isfinite(clip) and clip > 0):
            raise SecAggError(f"secure aggregation: clip must be a positive number, got {clip!r}")
        if max_summands < 1 or max_weight < 1:
            raise SecAggError("secure aggregation: summands and weights must be at least 1")
        for f in range(MAX_FRAC_BITS, -1, -1):
            bound = math.floor(math.ldexp(float(clip), f))
            if bound >= 1 and max_summands * max_weight * bound <= LIMIT:
                return cls(f, bound)
        raise SecAggError(
            f"secure aggregation: {max_summands} updates of weight up to {max_weight} clipped "
            f"to {clip} do not fit 31 bits; lower the clip, max_participants or weight_levels"
        )

    @property
    def resolution(self) -> float:
        """2^-f: the step of the grid; the mean is within half of it of the clipped mean."""
        return math.ldexp(1.0, -self.frac_bits)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """clamp(rint(x · 2^f), −B, B) as int64; SecAggError for non-finite values."""
        v = np.asarray(x, dtype=np.float64)
        if not np.isfinite(v).all():
            raise SecAggError("secure aggregation: the update has non-finite values")
        return np.clip(np.rint(np.ldexp(v, self.frac_bits)), -self.bound, self.bound).astype(
            np.int64
        )

    def mean(self, total: np.ndarray, total_weight: int) -> np.ndarray:
        """The weighted mean from the unmasked sum: int32(total) / (W · 2^f), in float64."""
        if total_weight < 1:
            raise SecAggError("secure aggregation: the total weight must be at least 1")
        signed = np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.float64)
        return signed / float(total_weight << self.frac_bits)


def encode(q: np.ndarray, weight: int) -> np.ndarray:
    """ω · q mod 2^32 as uint32 (what a participant masks)."""
    if weight < 1:
        raise SecAggError("secure aggregation: a weight is at least 1")
    return np.bitwise_and(np.asarray(q, dtype=np.int64) * weight, _WORD).astype(np.uint32)


def integer_weight(samples: int, max_samples: int, levels: int = 0) -> int:
    """ω = samples (levels 0), or ceil(samples · levels / max_samples): 1..levels."""
    if not 1 <= samples <= max_samples:
        raise SecAggError(f"secure aggregation: {samples} samples is outside 1..{max_samples}")
    if levels == 0:
        return samples
    return -(-samples * levels // max_samples)


def wrapping_sum(vectors: Iterable[np.ndarray]) -> np.ndarray:
    """Σ v mod 2^32 over uint32 vectors of one length (masked or not)."""
    acc: np.ndarray | None = None
    for v in vectors:
        v = np.asarray(v)
        if v.dtype != np.uint32:
            raise SecAggError("secure aggregation: vectors to add must be uint32")
        if acc is None:
            acc = v.copy()
        elif v.shape != acc.shape:
            raise SecAggError("secure aggregation: vectors to add differ in length")
        else:
            np.add(acc, v, out=acc)
    if acc is None:
        raise SecAggError("secure aggregation: nothing to add")
    return acc


def flatten(update: Mapping[str, np.ndarray]) -> np.ndarray:
    """The update as one float64 vector: tensors sorted by name, each in C order."""
    parts = [np.asarray(update[n], dtype=np.float64).reshape(-1) for n in sorted(update)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def unflatten(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of `flatten` for the names and shapes of `like` (values stay float64)."""
    shapes = [(name, np.shape(like[name])) for name in sorted(like)]
    total = sum(math.prod(shape) for _, shape in shapes)
    if total != len(vector):
        raise SecAggError(f"secure aggregation: {len(vector)} coordinates, the model has {total}")
    out, at = {}, 0
    for name, shape in shapes:
        size = math.prod(shape)
        out[name] = np.asarray(vector[at : at + size], dtype=np.float64).reshape(shape)
        at += size
    return out
