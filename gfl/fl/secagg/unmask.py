"""Unmasking: the exact sum of the round's quantised updates from public data alone.

Inputs: the round's graph, its update set S (fixed by the chain), the dealers' shares
blobs and the holders' reveal sets. For each dealer d the unmasker uses only the kind the
rule calls for (SELF if d ∈ S, PAIR if d ∉ S has a neighbour in S; `reveal.needed_kind`);
a revealed key of the other kind is refused, never used, and reported. A share counts when
its key opens the holder's ciphertext in d's blob. Each needed secret is rebuilt from the
first t_r valid shares (holders ascending) and must match d's commitment.

Then Σ_{i∈S} y_i − Σ_{i∈S} PRG(b_i) − Σ_{i∈S, j∈N(i)∖S} ±PRG(s_ij) = Σ_{i∈S} ω_i q_i (mod 2^32):
pairs inside S cancel by themselves. `Recovery.unmask` does this on any coordinate range.

When S is not connected in the graph, or a needed secret has fewer than t_r valid shares or
shares that contradict its commitment, the result is `Incomplete`: the same verdict, with
the same dealers and holders named, on every node that has the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from gfl.fl.secagg import shamir
from gfl.fl.secagg.context import RoundContext
from gfl.fl.secagg.errors import SecAggError
from gfl.fl.secagg.graph import NeighbourGraph
from gfl.fl.secagg.keys import SELF
from gfl.fl.secagg.prg import add_words
from gfl.fl.secagg.reveal import KIND_NAMES, RevealSet, needed_kind, survivor_problem
from gfl.fl.secagg.shares import SharesBlob, commitment

MISMATCH = "its shares do not open to its commitment"


@dataclass(frozen=True)
class Missing:
    """A secret unmasking needs but cannot rebuild."""

    dealer: bytes
    kind: int
    valid: int  # valid shares found
    needed: int  # the round's threshold
    reason: str
    silent: tuple[bytes, ...]  # the dealer's holders that revealed no valid share of it


@dataclass(frozen=True)
class Incomplete:
    """Unmasking cannot finish: why, for which secrets, and which reveals were refused."""

    problem: str | None
    missing: tuple[Missing, ...]
    refused: tuple[tuple[bytes, bytes, int], ...]  # (holder, dealer, kind) of the wrong kind

    @property
    def faulty(self) -> tuple[bytes, ...]:
        """Dealers whose revealed shares contradict their own commitments (provably)."""
        return tuple(sorted({m.dealer for m in self.missing if m.reason == MISMATCH}))

    @property
    def reason(self) -> str:
        if self.problem:
            return f"secure aggregation cannot finish: {self.problem}"
        m = self.missing[0]
        more = f" (and {len(self.missing) - 1} more)" if len(self.missing) > 1 else ""
        return (
            f"secure aggregation cannot finish: the {KIND_NAMES[m.kind]} secret of "
            f"0x{m.dealer.hex()}: {m.reason}{more}"
        )


@dataclass(frozen=True)
class Recovery:
    """The secrets that take the masks off S's sum (self seeds of S, seeds of S's pairs
    with dropped neighbours)."""

    ctx: RoundContext
    survivors: tuple[bytes, ...]
    self_seeds: tuple[tuple[bytes, bytes], ...] = field(repr=False)
    pair_seeds: tuple[tuple[bytes, bytes, bytes], ...] = field(repr=False)  # (i ∈ S, j ∉ S, s)
    refused: tuple[tuple[bytes, bytes, int], ...] = ()

    def correction(self, start: int, count: int) -> np.ndarray:
        """The masks left in S's sum over words [start, start + count)."""
        acc = np.zeros(count, dtype=np.uint32)
        for _, seed in self.self_seeds:
            add_words(acc, seed, start)
        for i, j, seed in self.pair_seeds:
            add_words(acc, seed, start, 1 if i < j else -1)
        return acc

    def unmask(self, masked_sum: np.ndarray, start: int = 0) -> np.ndarray:
        """Σ_{i∈S} ω_i q_i over [start, start + len) from Σ_{i∈S} y_i over the same words."""
        v = np.asarray(masked_sum)
        if v.dtype != np.uint32 or v.ndim != 1:
            raise SecAggError("unmasking: the masked sum must be a 1-D uint32 vector")
        out: np.ndarray = v - self.correction(start, v.size)
        return out


def recover(
    ctx: RoundContext,
    graph: NeighbourGraph,
    survivors: Iterable[bytes],
    blobs: Mapping[bytes, SharesBlob],
    reveals: Iterable[RevealSet],
    members: Iterable[bytes] | None = None,
) -> Recovery | Incomplete:
    """Rebuild what unmasking S needs, or say (the same way on every node) why it cannot.

    ``members`` (default: the graph's) are the round's M, the graph members that dealt in
    time: only their masks are in the vectors, so only their secrets are needed."""
    s = frozenset(survivors)
    dealers = _dealers(graph, members)
    need = {d: needed_kind(graph, s, d) for d in dealers}
    usable, blob_problem = _usable_blobs(ctx, graph, blobs, dealers)
    valid, refused = _valid_shares(ctx, graph, need, usable, reveals)
    problem = survivor_problem(graph, s)
    missing: list[Missing] = []
    self_seeds: list[tuple[bytes, bytes]] = []
    pair_seeds: list[tuple[bytes, bytes, bytes]] = []
    for d in dealers:
        kind = need[d]
        if kind is None or problem:
            continue
        shares = valid[d]
        silent = tuple(h for h in graph.holders(d) if h not in shares)
        if d in blob_problem or len(shares) < graph.threshold:
            why = blob_problem.get(d) or f"{len(shares)} valid shares, {graph.threshold} needed"
            missing.append(Missing(d, kind, len(shares), graph.threshold, why, silent))
            continue
        blob = usable[d]
        if kind == SELF:
            seeds = _rebuild(blob, shares, graph.threshold, [0])
            if seeds is not None:
                self_seeds.append((d, seeds[0]))
        else:
            gone_to = [j for j in blob.neighbours if j in s]  # d ∉ S: its pairs with S
            indices = [1 + blob.neighbours.index(j) for j in gone_to]
            seeds = _rebuild(blob, shares, graph.threshold, indices)
            if seeds is not None:
                pair_seeds += [(j, d, seed) for j, seed in zip(gone_to, seeds, strict=True)]
        if seeds is None:
            missing.append(Missing(d, kind, len(shares), graph.threshold, MISMATCH, silent))

    if problem or missing:
        return Incomplete(problem, tuple(missing), refused)
    return Recovery(ctx, tuple(sorted(s)), tuple(self_seeds), tuple(sorted(pair_seeds)), refused)


def _dealers(graph: NeighbourGraph, members: Iterable[bytes] | None) -> tuple[bytes, ...]:
    """The graph's members that are in M, ascending."""
    if members is None:
        return graph.members
    keep = frozenset(members)
    return tuple(d for d in graph.members if d in keep)


def _usable_blobs(
    ctx: RoundContext,
    graph: NeighbourGraph,
    blobs: Mapping[bytes, SharesBlob],
    dealers: Iterable[bytes],
) -> tuple[dict[bytes, SharesBlob], dict[bytes, str]]:
    """The blobs that belong to this round and graph, and why each other dealer has none."""
    usable: dict[bytes, SharesBlob] = {}
    problem: dict[bytes, str] = {}
    for d in dealers:
        blob = blobs.get(d)
        if blob is None:
            problem[d] = "no shares blob"
        elif blob.dealer != d:
            problem[d] = "the blob is another dealer's"
        elif why := blob.mismatch(ctx, graph):
            problem[d] = why
        else:
            usable[d] = blob
    return usable, problem


def _valid_shares(
    ctx: RoundContext,
    graph: NeighbourGraph,
    need: Mapping[bytes, int | None],
    usable: Mapping[bytes, SharesBlob],
    reveals: Iterable[RevealSet],
) -> tuple[dict[bytes, dict[bytes, list[int]]], tuple[tuple[bytes, bytes, int], ...]]:
    """Per dealer, the shares each holder's revealed key opens (needed kind only), and the
    (holder, dealer, kind) of keys of the other kind, which are refused."""
    valid: dict[bytes, dict[bytes, list[int]]] = {d: {} for d in need}
    refused: list[tuple[bytes, bytes, int]] = []
    for rs in sorted(reveals, key=lambda r: (r.holder, r.to_bytes())):  # any order: one result
        if rs.ctx != ctx:
            raise SecAggError("unmasking: a reveal set is for another job or round")
        for dealer, kind, key in rs.entries:
            if dealer not in need or rs.holder not in graph.holders(dealer):
                continue  # not a share this holder has
            if kind != need[dealer]:
                refused.append((rs.holder, dealer, kind))
                continue
            blob = usable.get(dealer)
            if blob is None or rs.holder in valid[dealer]:
                continue
            ys = blob.open(rs.holder, kind, key)
            if ys is not None:
                valid[dealer][rs.holder] = ys
    return valid, tuple(refused)


def _rebuild(
    blob: SharesBlob, shares: Mapping[bytes, list[int]], threshold: int, indices: list[int]
) -> list[bytes] | None:
    """The dealer's secrets at `indices` (0: b, 1 + m: its m-th pairwise seed) from the
    first `threshold` holders' shares, or None if one contradicts its commitment."""
    first = sorted(shares)[:threshold]
    out = []
    for index in indices:
        col = 0 if index == 0 else index - 1  # position in the holder's SELF or PAIR shares
        points = [(int.from_bytes(h, "big"), shares[h][col]) for h in first]
        seed = shamir.encode_element(shamir.reconstruct(points))
        if commitment(seed) != blob.commitments[index]:
            return None
        out.append(seed)
    return out
