"""The mask generator: ChaCha20 keystream read as little-endian uint32 words, seekable.

Word w of the stream of a 32-byte seed is word (w mod 16) of the RFC 8439 ChaCha20 block
with key = seed, block counter = floor(w / 16) and a nonce of 12 zero bytes. Any range of
words is computed alone, so an aggregator that holds one shard of the coordinates removes
that shard's masks without expanding the rest. Each seed keys one stream only (seeds are
fresh per round and per pair), so the fixed nonce is never reused with a key.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from gfl.fl.secagg.errors import SecAggError

WORDS_PER_BLOCK = 16
MAX_WORDS = (1 << 32) * WORDS_PER_BLOCK  # the block counter is 32 bits


def prg_words(seed: bytes, start: int, count: int) -> np.ndarray:
    """Words [start, start + count) of the stream of `seed`, as a uint32 array."""
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise SecAggError("mask generator: the seed must be 32 bytes")
    if start < 0 or count < 0 or start + count > MAX_WORDS:
        raise SecAggError(f"mask generator: words [{start}, {start + count}) are out of range")
    if count == 0:
        return np.zeros(0, dtype=np.uint32)
    block, skip = divmod(start, WORDS_PER_BLOCK)
    blocks = -(-(skip + count) // WORDS_PER_BLOCK)
    nonce = block.to_bytes(4, "little") + bytes(12)
    stream = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
    raw = stream.update(bytes(64 * blocks))
    return np.frombuffer(raw, dtype="<u4")[skip : skip + count].astype(np.uint32, copy=False)


def add_words(acc: np.ndarray, seed: bytes, start: int, sign: int = 1) -> None:
    """acc += sign · PRG(seed)[start : start + len(acc)] (mod 2^32), in place; sign is ±1."""
    words = prg_words(seed, start, acc.size)
    if sign > 0:
        np.add(acc, words, out=acc)
    else:
        np.subtract(acc, words, out=acc)
