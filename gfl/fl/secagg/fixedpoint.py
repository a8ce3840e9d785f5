"""Fixed point: float updates to integers mod 2^w whose sum never wraps, and back.

A participant flattens its update (tensors sorted by name, C order, as float64), quantises
each coordinate to q = clamp(round_half_even(x · 2^f), −B, B) with B = floor(c · 2^f) (c the
clip bound), and sends ω·q mod 2^w (two's complement), ω its integer weight, as a word of
w = 16, 24 or 32 bits. f is the largest number of fractional bits with
n · ω_max · B ≤ 2^(w−1) − 1 for the most summands n: then the true sum Σ ω_i q_i fits w
signed bits, so reading the sum mod 2^w as a signed w-bit integer is exact, and the
weighted mean is that integer divided by (Σ ω_i) · 2^f, one float64 division. The weighting
is exact in integers; its cost is log2(ω_max) bits of precision, which `integer_weight`'s
levels bound. Each 8 bits fewer on the wire cost 8 fractional bits.

Arithmetic runs on uint32 (mod 2^32) throughout: 2^w divides 2^32, so a sum or a mask
taken mod 2^32 and then reduced mod 2^w is the one taken mod 2^w. Only the wire carries w
bits (`pack`, `unpack`), and `FixedPoint.mean` reduces before it reads the sign.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from gfl.fl.secagg.errors import SecAggError

WORD_BITS = (16, 24, 32)  # the word widths a job may choose; 32 by default
MAX_FRAC_BITS = 62
_WORD = 0xFFFFFFFF


def word_bits_problem(bits: object) -> str | None:
    """Why `bits` is not a word width (None when it is)."""
    if isinstance(bits, int) and not isinstance(bits, bool) and bits in WORD_BITS:
        return None
    return f"word_bits must be one of {', '.join(map(str, WORD_BITS))}: {bits!r}"


def _limit(bits: int) -> int:
    return (1 << (bits - 1)) - 1


@dataclass(frozen=True)
class FixedPoint:
    """f fractional bits, the bound B on |q| (B = floor(clip · 2^f)) and the word width w."""

    frac_bits: int
    bound: int
    word_bits: int = 32

    def __post_init__(self) -> None:
        problem = word_bits_problem(self.word_bits)
        if problem:
            raise SecAggError(f"fixed point: {problem}")
        if not 0 <= self.frac_bits <= MAX_FRAC_BITS or not 1 <= self.bound <= _limit(
            self.word_bits
        ):
            raise SecAggError(f"fixed point: f = {self.frac_bits}, B = {self.bound} are invalid")

    @classmethod
    def choose(
        cls, clip: float, max_summands: int, max_weight: int, word_bits: int = 32
    ) -> FixedPoint:
        """The most fractional bits for which max_summands · max_weight · B ≤ 2^(w−1) − 1."""
        if not (isinstance(clip, float | int) and math.isfinite(clip) and clip > 0):
            raise SecAggError(f"secure aggregation: clip must be a positive number, got {clip!r}")
        if max_summands < 1 or max_weight < 1:
            raise SecAggError("secure aggregation: summands and weights must be at least 1")
        problem = word_bits_problem(word_bits)
        if problem:
            raise SecAggError(f"secure aggregation: {problem}")
        limit = _limit(word_bits)
        for f in range(MAX_FRAC_BITS, -1, -1):
            bound = math.floor(math.ldexp(float(clip), f))
            if bound >= 1 and max_summands * max_weight * bound <= limit:
                return cls(f, bound, word_bits)
        raise SecAggError(
            f"secure aggregation: {max_summands} updates of weight up to {max_weight} clipped "
            f"to {clip} do not fit {word_bits - 1} bits; lower the clip, max_participants or "
            "weight_levels, or raise word_bits"
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
        """The weighted mean from the unmasked sum (uint32, mod 2^32): the sum mod 2^w read
        as a signed w-bit integer, / (W · 2^f), in float64."""
        if total_weight < 1:
            raise SecAggError("secure aggregation: the total weight must be at least 1")
        shift = 32 - self.word_bits  # move the word's sign bit to bit 31, then back
        words = np.left_shift(np.asarray(total, dtype=np.uint32), np.uint32(shift))
        signed = np.right_shift(words.view(np.int32), shift).astype(np.float64)
        return signed / float(total_weight << self.frac_bits)


def encode(q: np.ndarray, weight: int) -> np.ndarray:
    """ω · q mod 2^32 as uint32 (what a participant masks)."""
    if weight < 1:
        raise SecAggError("secure aggregation: a weight is at least 1")
    return np.bitwise_and(np.asarray(q, dtype=np.int64) * weight, _WORD).astype(np.uint32)


def pack(words: np.ndarray, bits: int) -> np.ndarray:
    """uint32 words mod 2^bits as the wire carries them: uint8 (n, bits / 8), little-endian."""
    v = np.ascontiguousarray(words, dtype="<u4")
    return v.view(np.uint8).reshape(-1, 4)[:, : bits // 8]


def unpack(raw: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of `pack`: uint32 words, each below 2^bits."""
    b = np.asarray(raw)
    if b.dtype != np.uint8 or b.ndim != 2 or b.shape[1] != bits // 8:
        raise SecAggError(f"secure aggregation: words must be uint8 rows of {bits // 8} bytes")
    out = np.zeros((b.shape[0], 4), dtype=np.uint8)
    out[:, : bits // 8] = b
    return out.view("<u4").reshape(-1).astype(np.uint32, copy=False)


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
