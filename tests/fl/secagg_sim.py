"""A secure-aggregation round played in memory with the library alone (no network, no
chain): the members deal, mask and reveal exactly as a node would, from seeded randomness."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np

from gfl.fl.secagg import (
    FixedPoint,
    MaskingKey,
    NeighbourGraph,
    RevealGuard,
    RoundContext,
    SecAggError,
    deal,
    encode,
    mask,
    recover,
    reveal,
    wrapping_sum,
)

JOB = bytes.fromhex("ab" * 32)


class Round:
    """n members, graph degree k, threshold t, updates of `length` coordinates."""

    def __init__(
        self,
        n: int,
        k: int,
        t: int,
        length: int = 64,
        seed: int = 0,
        clip: float = 1.0,
        max_weight: int = 1,
        round_no: int = 3,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.rand = rng.bytes
        self.ctx = RoundContext(JOB, round_no)
        self.members = sorted(self.rand(20) for _ in range(n))
        self.keys = {a: MaskingKey(self.rand(32)) for a in self.members}
        self.public = {a: key.public for a, key in self.keys.items()}
        self.graph = NeighbourGraph.build(self.rand(32), self.members, k, t)
        dealt = {
            a: deal(self.ctx, self.graph, a, self.keys[a], self.public, self.rand)
            for a in self.members
        }
        self.blobs = {a: blob for a, (blob, _) in dealt.items()}
        self.secrets = {a: s for a, (_, s) in dealt.items()}
        self.fp = FixedPoint.choose(clip, n, max_weight)
        self.x = {a: rng.normal(0.0, 0.4 * clip, length) for a in self.members}
        self.weight = {a: int(rng.integers(1, max_weight + 1)) for a in self.members}
        self.q = {a: self.fp.quantize(self.x[a]) for a in self.members}
        self.plain = {a: encode(self.q[a], self.weight[a]) for a in self.members}
        self.masked = {a: mask(self.secrets[a], self.plain[a]) for a in self.members}
        self.guards = {a: RevealGuard() for a in self.members}

    def reveals(self, survivors: Iterable[bytes], revealers: Iterable[bytes]) -> list:
        """The reveal sets of `revealers` (the members still there after S was fixed)."""
        out = []
        for h in revealers:
            # a holder that refuses (S split in the graph) sends nothing
            with contextlib.suppress(SecAggError):
                key, guard = self.keys[h], self.guards[h]
                out.append(reveal(self.ctx, self.graph, h, key, self.public, survivors, guard))
        return out

    def recover(self, survivors: Iterable[bytes], revealers: Iterable[bytes]):
        s = list(survivors)
        return recover(self.ctx, self.graph, s, self.blobs, self.reveals(s, revealers))

    def plain_sum(self, survivors: Iterable[bytes]) -> np.ndarray:
        return wrapping_sum(self.plain[a] for a in survivors)

    def masked_sum(self, survivors: Iterable[bytes]) -> np.ndarray:
        return wrapping_sum(self.masked[a] for a in survivors)
