"""The round's masking graph (SecAgg+, Bell et al. 2020): who masks with whom.

Members are placed on a ring in the order of sha256("GFL graph" ‖ seed ‖ address); each is
joined to the k_r / 2 nearest members on either side (a Harary graph), or to everyone when
k_r = n − 1. The graph is symmetric and the same for everyone who knows the seed and the
member list. A member's holders are its closed neighbourhood: its neighbours and itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gfl.fl.secagg.context import addresses
from gfl.fl.secagg.errors import SecAggError
from gfl.fl.secagg.params import round_shape

MAX_MEMBERS = (1 << 24) - 1


@dataclass(frozen=True)
class NeighbourGraph:
    """Members (sorted), the round's degree k_r and threshold t_r, and the adjacency."""

    members: tuple[bytes, ...]
    degree: int
    threshold: int
    adjacency: Mapping[bytes, tuple[bytes, ...]] = field(repr=False)

    @classmethod
    def build(
        cls, seed: bytes, members: Iterable[str | bytes], neighbours: int, threshold: int
    ) -> NeighbourGraph:
        """The graph of a round from its seed, member list and the job's k and t."""
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise SecAggError("masking graph: the seed must be 32 bytes")
        sorted_members = addresses(members)
        n = len(sorted_members)
        if not 1 <= n <= MAX_MEMBERS:
            raise SecAggError(f"masking graph: {n} members (1..2^24 − 1)")
        k, t = round_shape(neighbours, threshold, n)
        ring = sorted(
            sorted_members, key=lambda a: (hashlib.sha256(b"GFL graph" + seed + a).digest(), a)
        )
        adjacency: dict[bytes, tuple[bytes, ...]] = {}
        for pos, a in enumerate(ring):
            if k == n - 1:
                near = set(sorted_members) - {a}
            else:
                near = {ring[(pos + d) % n] for d in range(1, k // 2 + 1)}
                near |= {ring[(pos - d) % n] for d in range(1, k // 2 + 1)}
            adjacency[a] = tuple(sorted(near))
        return cls(sorted_members, k, t, adjacency)

    def neighbours(self, member: bytes) -> tuple[bytes, ...]:
        """The member's neighbours, ascending (without itself)."""
        try:
            return self.adjacency[member]
        except KeyError:
            raise SecAggError(f"masking graph: 0x{member.hex()} is not a member") from None

    def holders(self, dealer: bytes) -> tuple[bytes, ...]:
        """Who holds the dealer's shares: its neighbours and itself, ascending."""
        return tuple(sorted((*self.neighbours(dealer), dealer)))

    def connected(self, subset: Iterable[bytes]) -> bool:
        """Whether the members of `subset` form one connected piece of the graph."""
        nodes = set(subset)
        if not nodes:
            return False
        start = min(nodes)
        seen, todo = {start}, [start]
        while todo:  # bounded: each node enters once
            for b in self.neighbours(todo.pop()):
                if b in nodes and b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen == nodes
