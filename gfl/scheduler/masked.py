"""A secure round's updates and sums as bytes (docs/protocol.md 9.10, 9.12): the masked words
of an update, whole or in the job's shards, and the unmasked sum of one shard.

The model is one vector of P words (`gfl.fl.secagg.flatten`: tensors by name, each in C
order); shard k of the job's layout (8.1) is its words ``[a_k, b_k)`` (`word_ranges`). With
S = 1 an update is one frame ``{"masked": uint8 (P, w / 8)}``; with S > 1 it is a manifest
(8.1) over S frames ``{"masked": uint8 (b_k − a_k, w / 8)}`` whose meta names the shard, so a
sharded round's aggregators fetch one shard of each update, as in a plain round. Shard k
reduced is ``{"sum": uint8 (b_k − a_k, w / 8)}``: Σ_{i∈S} ω_i q_i over those words mod 2^w,
unmasked with the round's recovered secrets (`SecureSum`), a lossless frame; the model
follows from the S sums exactly as from the all-to-all sum (`secure_step`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence

import numpy as np
import trio

from gfl.content import content_hash
from gfl.fl.codec import UpdateMeta, encode_frame, encode_params
from gfl.fl.rounds import Update
from gfl.fl.secagg import (
    FixedPoint,
    Incomplete,
    Recovery,
    SecAggError,
    pack,
    unflatten,
    unpack,
    wrapping_sum,
)
from gfl.fl.shards import Layout, encode_manifest
from gfl.fl.spec import JobSpec
from gfl.fl.strategies import make_strategy
from gfl.fl.strategies.base import apply_delta
from gfl.scheduler import aggregation

MASKED = "masked"  # a secure update frame's one tensor: uint8 (words, word_bits / 8)
SUM = "sum"  # a reduced shard's one tensor: the unmasked sum of its words, the same form

Pieces = dict[str, np.ndarray]
Ranges = Sequence[tuple[int, int]]


def masked_blobs(
    words: np.ndarray, bits: int, meta: UpdateMeta, ranges: Ranges
) -> tuple[bytes, tuple[bytes, ...]]:
    """A masked update as it is served: (the frame, no parts) with one shard, else (the
    manifest, the S shard frames). Blocking."""
    if len(ranges) == 1:
        return encode_params({MASKED: pack(words, bits)}, "none", meta=meta), ()
    parts = tuple(
        encode_params({MASKED: pack(words[a:b], bits)}, "none", meta=meta.for_shard(k, len(ranges)))
        for k, (a, b) in enumerate(ranges)
    )
    return encode_manifest([hashlib.sha256(p).digest() for p in parts]), parts


def _masked_frame(blob: bytes, expected: UpdateMeta, length: int, bits: int) -> np.ndarray | str:
    arrays = aggregation.framed(blob, expected)
    if isinstance(arrays, str):
        return arrays
    words = _words(arrays, MASKED, length, bits)
    if words is None:
        return f"a secure update is one vector {MASKED!r} of {length} words of {bits} bits"
    return words


def _words(arrays: Pieces, name: str, length: int, bits: int) -> np.ndarray | None:
    """The words (uint32) of ``arrays`` when it is exactly ``{name: uint8 (length, bits / 8)}``."""
    v = arrays.get(name)
    shape = (length, bits // 8)
    if set(arrays) != {name} or v is None or v.dtype != np.uint8 or v.shape != shape:
        return None
    return unpack(v, bits)


def masked_part(
    part: bytes,
    k: int,
    hashes: Sequence[bytes],
    u: Update,
    ctx: aggregation.Context,
    ranges: Ranges,
    bits: int,
) -> Pieces | str:
    """Shard k of a sharded secure update: ``{"masked": its words as uint32}``, or why the
    update does not count."""
    if content_hash(part) != hashes[k]:
        return f"shard {k} does not match its manifest"
    a, b = ranges[k]
    expected = aggregation.expected_meta(u, ctx).for_shard(k, len(ranges))
    got = _masked_frame(part, expected, b - a, bits)
    return f"shard {k}: {got}" if isinstance(got, str) else {MASKED: got}


def decode_masked(
    blob: bytes,
    u: Update,
    ctx: aggregation.Context,
    ranges: Ranges,
    bits: int,
    parts: Sequence[bytes] | None = None,
) -> np.ndarray | str:
    """A secure update's words (uint32) from its frame, or from its manifest ``blob`` and
    shard frames ``parts``; or why it does not count."""
    if len(ranges) == 1:
        if content_hash(blob) != u.update_hash:
            return "the blob does not match its committed hash"
        return _masked_frame(blob, aggregation.expected_meta(u, ctx), ranges[0][1], bits)
    words = aggregation.check_parts(
        blob, u, len(ranges), parts,
        lambda part, k, hashes: masked_part(part, k, hashes, u, ctx, ranges, bits),
    )  # fmt: skip
    return words if isinstance(words, str) else np.concatenate([w[MASKED] for w in words])


def unmasked_sum(
    vectors: Sequence[np.ndarray], recovery: Recovery | None, start: int = 0
) -> np.ndarray:
    """Σ_{i∈S} ω_i q_i mod 2^32 over S's words (masked when ``recovery`` is given), from
    word ``start`` on."""
    total = wrapping_sum(vectors)
    return recovery.unmask(total, start) if recovery is not None else total


def sum_frame(total: np.ndarray, bits: int) -> bytes:
    """A reduced secure shard: its unmasked sum mod 2^w, a lossless frame."""
    return encode_frame({SUM: pack(total, bits)})


def sum_words(pieces: Pieces, length: int, bits: int) -> np.ndarray | None:
    """The words of a reduced secure shard's pieces (None: not the form `sum_frame` gives)."""
    return _words(pieces, SUM, length, bits)


def shard_sums(total: np.ndarray, ranges: Ranges, bits: int) -> list[bytes]:
    """The S reduced shards' hashes of an unmasked sum (what a sharded secure round's
    votes name, as their keccak: 8.4). Blocking."""
    return [content_hash(sum_frame(total[a:b], bits)) for a, b in ranges]


def secure_step(
    spec: JobSpec,
    params: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    total: np.ndarray,
    total_weight: int,
) -> tuple[Pieces, Pieces]:
    """M_{r+1} and the strategy's state from S's unmasked sum (9.2): the weighted mean
    through the strategy's server step (blocking)."""
    secure = spec.secure
    assert secure is not None
    fp = secure.fixed_point(spec.max_participants, spec.sample_cap)
    delta = unflatten(fp.mean(total, total_weight), params)
    strategy = make_strategy(spec.strategy, spec.strategy_kwargs)
    if state:
        strategy.load_state_dict(state)
    return apply_delta(params, strategy.server_step(delta)), strategy.state_dict()


class SecureSum:
    """A sharded secure round's arithmetic (`gfl.scheduler.sharding.ShardArithmetic`):
    shard k is the sum of S's masked words ``[a_k, b_k)``, unmasked with the round's
    recovered secrets; a missing piece leaves the shard without a value (S is the chain's,
    no one may be left out of a sum of masks), as an incomplete recovery does."""

    excludes = False

    def __init__(
        self,
        spec: JobSpec,
        ctx: aggregation.Context,
        fp: FixedPoint,
        ranges: Ranges,
        total_weight: int,
        recovery: Callable[[], Awaitable[Recovery | Incomplete | None]],
    ) -> None:
        self.spec, self.ctx, self.fp, self.ranges = spec, ctx, fp, ranges
        self.bits = fp.word_bits
        self.total_weight = total_weight
        self.recovery = recovery  # None: a job without masks (the sum is the plain one)

    def check(self, part: bytes, k: int, hashes: list[bytes], u: Update) -> Pieces | str:
        return masked_part(part, k, hashes, u, self.ctx, self.ranges, self.bits)

    async def reduce(self, k: int, template: Pieces, used: list[tuple[Update, Pieces]]) -> (
        tuple[Pieces, bytes] | None
    ):  # fmt: skip
        recovery = await self.recovery()
        if isinstance(recovery, Incomplete):
            return None
        start, bits = self.ranges[k][0], self.bits

        def reduce() -> tuple[Pieces, bytes]:
            total = unmasked_sum([p[MASKED] for _u, p in used], recovery, start)
            frame = sum_frame(total, bits)
            return {SUM: pack(total, bits)}, frame

        return await trio.to_thread.run_sync(reduce)

    def _length(self, template: Pieces) -> int:
        return sum(int(a.size) for a in template.values())

    def fits(self, pieces: Pieces, template: Pieces) -> bool:
        return sum_words(pieces, self._length(template), self.bits) is not None

    def limit(self, template: Pieces) -> int:
        return self._length(template) * self.bits // 8 + (1 << 16)

    def model(
        self, layout: Layout, params: Pieces, state: Pieces, shards: list[Pieces]
    ) -> tuple[Pieces, Pieces]:
        words = []
        for (a, b), pieces in zip(self.ranges, shards, strict=True):
            got = sum_words(pieces, b - a, self.bits)
            if got is None:
                raise SecAggError("a reduced secure shard is not a sum of its words")
            words.append(got)
        return secure_step(self.spec, params, state, np.concatenate(words), self.total_weight)
