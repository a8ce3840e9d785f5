"""Sharded updates, as pure logic: how a model splits into shards, the manifest that commits
to an update's shards, which round contributors aggregate which shard, and whether a round
is aggregated sharded at all (docs/protocol.md, section 8).

The **layout** depends on the model's tensor shapes and the shard count only, so every node
derives the same one from M_0: tensors sorted by name, cut only between rows of their first
axis (a row range of a matrix is still a matrix), into S shards of about equal element
counts. An update is always encoded in this layout (one frame per shard plus a manifest when
S > 1), whichever way a round is aggregated; the arithmetic is per coordinate, so the two
ways give the same bits.
"""

from __future__ import annotations

import enum
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from eth_utils.crypto import keccak

from gfl.errors import GflError
from gfl.fl.codec import ErrorFeedback, UpdateMeta, encode_frame, encode_params
from gfl.fl.strategies import ClientUpdate, make_strategy
from gfl.fl.strategies.base import StrategyError, canonical, reduced_dtype

if TYPE_CHECKING:
    from gfl.fl.spec import JobSpec

#: Elements per shard the derived shard count aims at (1 MiB of float32).
SHARD_ELEMENTS = 1 << 18
MAX_SHARDS = 256
MAX_REPLICAS = 9
MANIFEST_MAGIC = b"GFLS"
_MANIFEST_PREFIX = 6  # magic, u16le shard count
MAX_MANIFEST = _MANIFEST_PREFIX + 32 * MAX_SHARDS


class ShardError(GflError):
    """A manifest or a shard does not fit the job's layout."""


class Mode(enum.StrEnum):
    """How one round's updates are aggregated."""

    ALL = "all"  # every member fetches every update whole
    SHARDED = "sharded"  # replicas reduce shards, members assemble the settled ones


@dataclass(frozen=True)
class Piece:
    """Rows ``start:stop`` of a tensor's first axis (the whole of a 0-d tensor: 0:1)."""

    tensor: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        """The piece's name inside a shard's frame."""
        return f"{self.tensor}[{self.start}:{self.stop}]"

    def cut(self, array: np.ndarray) -> np.ndarray:
        """This piece of ``array`` (a view)."""
        return array if array.ndim == 0 else array[self.start : self.stop]


@dataclass(frozen=True)
class Layout:
    """The job's shards: shard k is ``shards[k]``, a tuple of pieces in tensor-name order."""

    shards: tuple[tuple[Piece, ...], ...]

    @property
    def count(self) -> int:
        return len(self.shards)

    def split(self, params: Mapping[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
        """Shard k of ``params``, by piece name."""
        return {p.name: p.cut(np.asarray(params[p.tensor])) for p in self.shards[k]}

    def join(self, parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The whole tensors from every shard's pieces (the inverse of `split`)."""
        if len(parts) != self.count:
            raise ShardError(f"{len(parts)} shards given, the layout has {self.count}")
        pieces: dict[str, list[np.ndarray]] = {}
        for shard, part in zip(self.shards, parts, strict=True):
            for p in shard:
                pieces.setdefault(p.tensor, []).append(np.asarray(part[p.name]))
        out = {}
        for name, arrays in pieces.items():
            out[name] = arrays[0] if arrays[0].ndim == 0 else np.concatenate(arrays, axis=0)
        return out


def shard_count(param_count: int, requested: int = 0) -> int:
    """The shard count of a job: ``requested`` when set, else ``clamp(ceil(P / 2^18), 1,
    256)`` for a model of P parameters (the same on every node: P is M_0's)."""
    if requested:
        return requested
    return max(1, min(MAX_SHARDS, math.ceil(param_count / SHARD_ELEMENTS)))


def make_layout(shapes: Mapping[str, Sequence[int]], shards: int) -> Layout:
    """Split tensors (sorted by name) into ``shards`` shards of about equal element counts,
    cutting only between first-axis rows; fewer shards when the model has fewer rows."""
    names = sorted(shapes)
    rows, widths = [], []
    for name in names:
        shape = tuple(int(d) for d in shapes[name])
        rows.append(shape[0] if shape else 1)
        widths.append(math.prod(shape[1:]) if shape else 1)
    total_rows = sum(rows)
    s = max(1, min(int(shards), total_rows))
    # cum[i]: elements before global row i
    per_row = np.repeat(np.asarray(widths, dtype=np.int64), rows)
    cum = np.concatenate([[0], np.cumsum(per_row, dtype=np.int64)])
    total = int(cum[-1])
    scaled = cum * s
    cuts = [0]
    for k in range(1, s):
        # the row boundary nearest to k/s of the elements (ties: the earlier), integers only
        target = total * k
        i = int(np.searchsorted(scaled, target, side="left"))
        if i > 0 and target - int(scaled[i - 1]) <= int(scaled[i]) - target:
            i -= 1
        cuts.append(min(max(i, cuts[-1] + 1), total_rows - (s - k)))
    cuts.append(total_rows)
    out: list[list[Piece]] = [[] for _ in range(s)]
    g = 0  # the tensor's first global row
    for name, n in zip(names, rows, strict=True):
        if n == 0:  # no rows (an empty first axis): a whole, empty piece where it falls
            out[_shard_at(cuts, g)].append(Piece(name, 0, 0))
            continue
        for k in range(s):
            lo, hi = max(g, cuts[k]), min(g + n, cuts[k + 1])
            if lo < hi:
                out[k].append(Piece(name, lo - g, hi - g))
        g += n
    return Layout(tuple(tuple(shard) for shard in out))


def _shard_at(cuts: list[int], row: int) -> int:
    for k in range(len(cuts) - 1):
        if cuts[k] <= row < cuts[k + 1]:
            return k
    return len(cuts) - 2


def word_ranges(layout: Layout, params: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Shard k's coordinates ``[start, stop)`` in the model as one vector (tensors sorted by
    name, each in C order: the vector secure aggregation masks). Contiguous and in shard
    order: a shard is a run of whole rows of tensors taken in name order."""
    out, at = [], 0
    for shard in layout.shards:
        size = sum(int(np.size(p.cut(np.asarray(params[p.tensor])))) for p in shard)
        out.append((at, at + size))
        at += size
    return out


def layout_of(params: Mapping[str, Any], requested: int = 0) -> Layout:
    """The layout a job uses for a model with these tensors (M_0, or any M_r: same shapes)."""
    shapes = {n: np.shape(a) for n, a in params.items()}
    count = sum(math.prod(s) for s in shapes.values())
    return make_layout(shapes, shard_count(count, requested))


# -- the manifest ------------------------------------------------------------------------------


def encode_manifest(hashes: Sequence[bytes]) -> bytes:
    """``b"GFLS" ‖ u16le S ‖ h_0 ‖ … ‖ h_{S−1}``; its sha256 is the committed update hash."""
    if not 2 <= len(hashes) <= MAX_SHARDS or any(len(h) != 32 for h in hashes):
        raise ShardError(f"a manifest names 2..{MAX_SHARDS} shard hashes of 32 bytes")
    return MANIFEST_MAGIC + struct.pack("<H", len(hashes)) + b"".join(hashes)


def decode_manifest(blob: bytes, shards: int) -> list[bytes]:
    """The shard hashes of a manifest for a layout of ``shards`` shards (`ShardError` else)."""
    data = bytes(blob)
    if len(data) < _MANIFEST_PREFIX or data[:4] != MANIFEST_MAGIC:
        raise ShardError("not a shard manifest")
    (count,) = struct.unpack_from("<H", data, 4)
    if count != shards:
        raise ShardError(f"the manifest names {count} shards, the job's layout has {shards}")
    if len(data) != _MANIFEST_PREFIX + 32 * count:
        raise ShardError("the manifest's length does not match its shard count")
    return [data[_MANIFEST_PREFIX + 32 * k : _MANIFEST_PREFIX + 32 * (k + 1)] for k in range(count)]


def manifest_hashes(blob: bytes) -> list[bytes] | None:
    """The shard hashes when ``blob`` is a manifest, else None (an update frame starts with
    zstd's magic, never with ``GFLS``)."""
    data = bytes(blob[:_MANIFEST_PREFIX])
    if len(data) < _MANIFEST_PREFIX or data[:4] != MANIFEST_MAGIC:
        return None
    try:
        return decode_manifest(blob, struct.unpack_from("<H", data, 4)[0])
    except ShardError:
        return None


# -- who aggregates what -------------------------------------------------------------------------


def aggregators(seed: bytes, shard: int, authors: Sequence[str], replicas: int) -> list[str]:
    """The aggregators of ``shard``: the distinct authors of S_r in ascending order of
    ``keccak256(seed ‖ author)`` (20 address bytes) form a ring; shard k takes the
    ``replicas`` places from ``k · replicas`` on (all authors when fewer). Every author
    reduces ⌊S·r/n⌋ or ⌈S·r/n⌉ shards: no one draws more than its share."""
    if len(seed) != 32:
        raise ShardError("a round's seed is 32 bytes")

    def rank(author: str) -> bytes:
        return keccak(bytes(seed) + bytes.fromhex(author.removeprefix("0x").lower()))

    ring = sorted(dict.fromkeys(a.lower() for a in authors), key=rank)
    take = min(max(1, replicas), len(ring))
    return [ring[(shard * take + j) % len(ring)] for j in range(take)]


def shard_grace(vote_timeout: float, availability_timeout: float) -> float:
    """How long after the availability deadline members wait for the shards to settle (and
    leave for recomputing before the vote deadline): a third of what is left for the vote."""
    return max(1.0, (vote_timeout - availability_timeout) / 3)


def quorum(replicas: int) -> int:
    """Agreeing statements that settle a shard: a strict majority of its aggregators."""
    return replicas // 2 + 1


def round_mode(
    aggregation: str, shards: int, updates: int, replicas: int, *, coordinatewise: bool
) -> Mode:
    """How a round of ``updates`` updates is aggregated, from the spec and chain data alone:
    ``"sharded"`` whenever the layout has shards, ``"auto"`` only when the update set is
    larger than twice the replicas; never for a strategy that is not per coordinate."""
    if shards <= 1 or not coordinatewise or aggregation == "all":
        return Mode.ALL
    if aggregation == "sharded" or updates > 2 * replicas:
        return Mode.SHARDED
    return Mode.ALL


def job_round_mode(spec: JobSpec, shards: int, updates: int) -> Mode:
    """`round_mode` for a job: its aggregation, replicas and strategy."""
    coordinatewise = make_strategy(spec.strategy, spec.strategy_kwargs).coordinatewise
    return round_mode(
        spec.aggregation, shards, updates, spec.replicas, coordinatewise=coordinatewise
    )


def reduce_shard(
    spec: JobSpec, template: Mapping[str, np.ndarray], usable: Sequence[ClientUpdate]
) -> tuple[dict[str, np.ndarray], bytes]:
    """A shard reduced over its ``usable`` pieces (chain order) with the job's strategy:
    the float64 pieces and their lossless frame in each tensor's `reduced_dtype`, whose
    sha256 its aggregators state and the round's shards hash covers (docs/protocol.md,
    section 8)."""
    strategy = make_strategy(spec.strategy, spec.strategy_kwargs)
    if not strategy.coordinatewise:
        raise StrategyError(f"{strategy.name} compares whole updates: it cannot reduce a shard")
    pieces = strategy.reduce(template, canonical(template, usable))
    narrow = {n: a.astype(reduced_dtype(template[n].dtype)) for n, a in pieces.items()}
    return pieces, encode_frame(narrow)


# -- encoding an update ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardedBlobs:
    """An update encoded in a layout of S > 1 shards: the manifest (its sha256 is what the
    author commits) and one blob per shard (shard k's sha256 is the manifest's h_k)."""

    manifest: bytes
    parts: tuple[bytes, ...]


def encode_update(
    delta: Mapping[str, np.ndarray],
    layout: Layout,
    compression: str,
    *,
    meta: UpdateMeta,
    feedback: ErrorFeedback | None = None,
) -> ShardedBlobs:
    """One update frame per shard, compressed piece by piece (int8 scales and top-k indices
    stay inside a piece; error feedback is kept per piece), and the manifest over them."""
    parts = tuple(
        encode_params(
            layout.split(delta, k),
            compression,
            feedback=feedback,
            meta=meta.for_shard(k, layout.count),
        )
        for k in range(layout.count)
    )
    return ShardedBlobs(encode_manifest([hashlib.sha256(p).digest() for p in parts]), parts)
