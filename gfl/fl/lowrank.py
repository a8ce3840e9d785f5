"""8-bit values coded against a low-rank prediction (the codec's ``q`` entries).

A model update is close to low rank (a sum of per-batch outer products: for a trained CNN's
fc layer, 16 singular vectors hold ~95 % of its energy), so its int8 values are predictable
from a rank-r factorisation sent alongside: the residuals have far fewer distinct values and
zstd codes them in ~2 bits less per value. The factors are int8 with one power-of-two scale
per component, so the decoder's prediction is an exact integer product in float64 (every
partial sum is an integer below 2**53) followed by correctly rounded IEEE operations: every
node predicts the same integers on any CPU or BLAS, and decoding stays bit-exact.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

import numpy as np


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


_LOWRANK_MIN = 1 << 16  # tensors smaller than this are not worth factorising
_LOWRANK_RANKS = (4, 8, 16, 32)
_LOWRANK_MAX_RANK = 64
_LOWRANK_MAX_EXP = 24  # component scales span at most 2**24 (keeps the product exact)
_LOWRANK_SAMPLE_ROWS = 256  # rows used to choose the rank
_LOWRANK_MIN_G, _LOWRANK_MAX_G = 1e-30, 1e30  # the factors' unit: normal, far from overflow


def _matrix_shape(shape: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """A tensor seen as a matrix: its first dimension by the product of the rest."""
    m = int(shape[0]) if len(shape) else 1
    return m, (math.prod(shape) // m if m else 0)


def _lowrank_factors(
    x: np.ndarray, rank: int
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray] | None:
    """(g, e, A, B): int8 factors with x ~ g * (A * 2**-e) @ B, or None for a zero matrix.

    Randomized range finder (Halko et al. 2011) with one power iteration: four products with x
    instead of a full SVD."""
    m, n = x.shape
    k = min(rank + 8, m, n)
    omega = np.random.default_rng(0).standard_normal((n, k), dtype=np.float32)
    y = x @ omega
    q, _ = np.linalg.qr(x @ (x.T @ np.linalg.qr(y)[0]))
    ub, sv, vt = np.linalg.svd(q.T @ x, full_matrices=False)
    r = min(rank, int((sv > 0).sum()))
    if r == 0:
        return None
    root = np.sqrt(sv[:r]).astype(np.float64)
    a = (q @ ub[:, :r]).astype(np.float64) * root
    b = root[:, None] * vt[:r].astype(np.float64)
    a_scale = np.abs(a).max(axis=0) / 127
    b_scale = np.abs(b).max(axis=1) / 127
    c = a_scale * b_scale
    g = float(c.max())
    if not _LOWRANK_MIN_G < g < _LOWRANK_MAX_G:
        return None
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(g / c))
    keep = np.isfinite(e) & (e <= _LOWRANK_MAX_EXP)
    e, a, b, a_scale, b_scale, c = (
        e[keep],
        a[:, keep],
        b[keep],
        a_scale[keep],
        b_scale[keep],
        c[keep],
    )
    t = np.sqrt(g * np.exp2(-e) / c)  # in [1, sqrt 2): scales a bit larger, values stay in +-127
    a_int = np.clip(np.rint(a / (a_scale * t)), -127, 127).astype(np.int8)
    b_int = np.clip(np.rint(b / (b_scale * t)[:, None]), -127, 127).astype(np.int8)
    return g, e.astype(np.uint8), np.ascontiguousarray(a_int), np.ascontiguousarray(b_int)


def _lowrank_predict(
    g: float,
    e: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    scales: np.ndarray,
    block: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """The int8 values the factors predict, as uint8 (only ``rows`` of the matrix if given).

    Works through ~1M values at a time, so its temporaries stay small for any tensor."""
    top = int(e.max())
    left = (a if rows is None else a[rows]).astype(np.float64) * np.exp2(top - e.astype(np.float64))
    right = b.astype(np.float64)
    unit = g * 2.0**-top
    row_ids = np.arange(a.shape[0], dtype=np.int64) if rows is None else rows.astype(np.int64)
    n = b.shape[1]
    out = np.empty((row_ids.size, n), np.int8)
    chunk = max(1, (1 << 20) // max(n, 1))
    columns = np.arange(n, dtype=np.int64)
    for lo in range(0, row_ids.size, chunk):
        hi = min(lo + chunk, row_ids.size)
        values = (left[lo:hi] @ right) * unit  # an exact integer product, then one rounding
        if rows is None:  # rows lo..hi are one contiguous run of values
            first, last = lo * n // block, (hi * n - 1) // block
            run = np.repeat(scales[first : last + 1].astype(np.float64), block)
            per_value = run[lo * n - first * block : hi * n - first * block].reshape(hi - lo, n)
        else:
            per_value = scales[(row_ids[lo:hi, None] * n + columns) // block].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            predicted = np.rint(values / np.where(per_value > 0, per_value, np.inf))
        np.clip(predicted, -127, 127, out=predicted)
        out[lo:hi] = predicted
    return out.view(np.uint8).reshape(-1)


def _entropy_bits(values: np.ndarray) -> float:
    """Order-0 entropy of a uint8 array, in bits (what zstd's Huffman stage gets close to)."""
    counts = np.bincount(values.reshape(-1), minlength=256)
    p = counts[counts > 0] / values.size
    return float(-(p * np.log2(p)).sum() * values.size)


def prediction(
    x: np.ndarray, scales: np.ndarray, q: np.ndarray, block: int
) -> tuple[bytes, np.ndarray] | None:
    """(factor segment, predicted uint8 values) if a low-rank prediction makes ``q`` cheaper
    to send, else None. The rank is chosen on a sample of rows by estimated size."""
    m, n = _matrix_shape(x.shape)
    if x.size < _LOWRANK_MIN or min(m, n) < 2 * _LOWRANK_RANKS[0]:
        return None
    with _one_blas_thread():
        return _choose_lowrank(x, scales, q, block, m, n)


def _one_blas_thread() -> Any:
    """BLAS on one thread for the factor products: OpenBLAS's threads spin while they wait,
    and on cores busy with training they made a 10M-parameter int8 encode ~10x slower
    (bench/codec.py beside a training job)."""
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller() -> Any:
    """The loaded thread pools, found once (finding them costs ~1 ms a tensor otherwise)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _choose_lowrank(
    x: np.ndarray, scales: np.ndarray, q: np.ndarray, block: int, m: int, n: int
) -> tuple[bytes, np.ndarray] | None:
    ranks = [r for r in _LOWRANK_RANKS if 2 * r <= min(m, n)]
    factors = _lowrank_factors(x.reshape(m, n).astype(np.float32, copy=False), ranks[-1])
    if factors is None:
        return None
    g, e, a, b = factors
    rows = np.arange(0, m, max(1, m // _LOWRANK_SAMPLE_ROWS))
    scale_up = m / rows.size
    sampled = q.view(np.uint8).reshape(m, n)[rows].reshape(-1)
    best, best_bits = 0, _entropy_bits(sampled) * scale_up
    for r in (r for r in ranks if r <= e.size):
        predicted = _lowrank_predict(g, e[:r], a[:, :r], b[:r], scales, block, rows)
        bits = _entropy_bits(sampled - predicted) * scale_up + 8 * r * (1 + m + n)
        if bits < best_bits:
            best, best_bits = r, bits
    if not best:
        return None
    e, a, b = e[:best], np.ascontiguousarray(a[:, :best]), np.ascontiguousarray(b[:best])
    segment = b"".join([struct.pack("<d", g), e.tobytes(), a.tobytes(), b.tobytes()])
    return segment, _lowrank_predict(g, e, a, b, scales, block)


def decode_prediction(
    shape: list[int], factors: memoryview, scales: np.ndarray, block: int
) -> np.ndarray:
    """The predicted int8 values of a ``q`` entry, after checking its factor segment
    (`ValueError` naming what is wrong)."""
    m, n = _matrix_shape(shape)
    _need(m > 0 and n > 0, "an empty tensor has no factors")
    r, extra = divmod(len(factors) - 8, 1 + m + n)
    _need(
        len(factors) > 8 and not extra and 1 <= r <= _LOWRANK_MAX_RANK,
        "bad factor segment",
    )
    (g,) = struct.unpack_from("<d", factors)
    _need(_LOWRANK_MIN_G < g < _LOWRANK_MAX_G, "bad factor scale")
    e = np.frombuffer(factors, np.uint8, r, 8)
    _need(int(e.max()) <= _LOWRANK_MAX_EXP, "bad factor exponents")
    a = np.frombuffer(factors, np.int8, m * r, 8 + r).reshape(m, r)
    b = np.frombuffer(factors, np.int8, r * n, 8 + r + m * r).reshape(r, n)
    with _one_blas_thread():
        return _lowrank_predict(g, e, a, b, scales, block)
