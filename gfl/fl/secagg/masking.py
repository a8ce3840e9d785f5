"""Masking: what a participant publishes instead of its update.

    y_i = ω_i · q_i + PRG(b_i) + Σ_{j ∈ N(i)} ± PRG(s_ij)   (mod 2^32, word by word)

with + when i < j and − when i > j (addresses as integers), so each pair's masks cancel in
the sum of both. Any coordinate range [a, b) is masked alone, from word a of each stream.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gfl.fl.secagg.errors import SecAggError
from gfl.fl.secagg.fixedpoint import FixedPoint, encode, flatten
from gfl.fl.secagg.prg import add_words
from gfl.fl.secagg.shares import MaskSecrets


def mask_words(secrets: MaskSecrets, start: int, count: int) -> np.ndarray:
    """The participant's whole mask over words [start, start + count)."""
    acc = np.zeros(count, dtype=np.uint32)
    add_words(acc, secrets.self_seed, start)
    for j, seed in secrets.pair_seeds:
        add_words(acc, seed, start, 1 if secrets.me < j else -1)
    return acc


def mask(secrets: MaskSecrets, values: np.ndarray, start: int = 0) -> np.ndarray:
    """values (uint32, the coordinates from `start` on) plus the participant's mask."""
    v = np.asarray(values)
    if v.dtype != np.uint32 or v.ndim != 1:
        raise SecAggError("masking: values must be a 1-D uint32 vector")
    out = mask_words(secrets, start, v.size)
    np.add(out, v, out=out)
    return out


def mask_update(
    update: Mapping[str, np.ndarray], weight: int, fp: FixedPoint, secrets: MaskSecrets
) -> np.ndarray:
    """Flatten, quantise, weight and mask a float update: the vector a participant sends."""
    return mask(secrets, encode(fp.quantize(flatten(update)), weight))
