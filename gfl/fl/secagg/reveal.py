"""Revealing: after the round's update set S is fixed, each holder opens one kind of share
of each dealer it holds for, and never the other.

For dealer d: the SELF share if d ∈ S (its self mask must come off the sum), the PAIR
shares if d ∉ S and a neighbour of d is in S (its pairwise masks must come off), nothing
otherwise. A holder reveals a share by publishing its share key; anyone opens the public
ciphertext with it. A holder refuses to reveal a dealer's other kind once it revealed one
(`RevealGuard`, kept across restarts), and refuses to reveal at all when S is not connected
in the masking graph: the pieces' separate sums would then be exposed.

Reveal set (integers big-endian):

    "GFLR" ‖ u8 1 ‖ job (32) ‖ u32 round ‖ holder (20) ‖ u16 count
    ‖ count × (dealer (20) ‖ u8 kind ‖ share key (32)), dealers strictly ascending
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gfl.fl.secagg.context import RoundContext
from gfl.fl.secagg.errors import SecAggError
from gfl.fl.secagg.graph import NeighbourGraph
from gfl.fl.secagg.keys import KINDS, PAIR, SELF, MaskingKey, share_key

MAGIC = b"GFLR"
VERSION = 1
HEADER_BYTES = 4 + 1 + 32 + 4 + 20 + 2
ENTRY_BYTES = 20 + 1 + 32
KIND_NAMES = {SELF: "self-mask", PAIR: "pairwise"}


def needed_kind(graph: NeighbourGraph, survivors: frozenset[bytes], dealer: bytes) -> int | None:
    """Which of the dealer's secrets unmasking S needs: SELF, PAIR or None."""
    if dealer in survivors:
        return SELF
    if any(j in survivors for j in graph.neighbours(dealer)):
        return PAIR
    return None


def survivor_problem(graph: NeighbourGraph, survivors: Iterable[bytes]) -> str | None:
    """Why S cannot be unmasked safely (None when it can): empty, not members, or split."""
    s = frozenset(survivors)
    if not s:
        return "the round has no update"
    if not s <= set(graph.members):
        return "an update's author is not in the round's masking graph"
    if not graph.connected(s):
        return "the updates' authors are not connected in the masking graph"
    return None


@dataclass(frozen=True)
class RevealSet:
    """One holder's share keys for one round: (dealer, kind, key), dealers ascending."""

    ctx: RoundContext
    holder: bytes
    entries: tuple[tuple[bytes, int, bytes], ...]

    def __post_init__(self) -> None:
        dealers = [d for d, _, _ in self.entries]
        if dealers != sorted(set(dealers)):
            raise SecAggError("reveal: one entry per dealer, dealers ascending")
        for d, kind, k in self.entries:
            if len(d) != 20 or kind not in KINDS or len(k) != 32:
                raise SecAggError("reveal: an entry is (20-byte dealer, kind 0/1, 32-byte key)")
        if len(self.holder) != 20 or len(self.entries) > 0xFFFF:
            raise SecAggError("reveal: malformed holder or too many entries")

    def to_bytes(self) -> bytes:
        head = MAGIC + bytes([VERSION]) + self.ctx.encode() + self.holder
        body = b"".join(d + bytes([kind]) + k for d, kind, k in self.entries)
        return head + len(self.entries).to_bytes(2, "big") + body

    @classmethod
    def from_bytes(cls, data: bytes) -> RevealSet:
        if len(data) < HEADER_BYTES or data[:4] != MAGIC or data[4] != VERSION:
            raise SecAggError("reveal: not a version-1 GFLR message")
        ctx = RoundContext(data[5:37], int.from_bytes(data[37:41], "big"))
        holder = data[41:61]
        count = int.from_bytes(data[61:63], "big")
        if len(data) != HEADER_BYTES + count * ENTRY_BYTES:
            raise SecAggError(f"reveal: {len(data)} bytes do not match {count} entries")
        entries = []
        for i in range(count):
            e = data[HEADER_BYTES + i * ENTRY_BYTES : HEADER_BYTES + (i + 1) * ENTRY_BYTES]
            entries.append((e[:20], e[20], e[21:]))
        return cls(ctx, holder, tuple(entries))


class RevealGuard:
    """The kinds a holder has revealed, per (job, round, dealer): it refuses the other kind.

    The node persists `entries()` and rebuilds the guard from them after a restart.
    """

    def __init__(self, entries: Iterable[tuple[bytes, int, bytes, int]] = ()) -> None:
        self._kinds: dict[tuple[bytes, int, bytes], int] = {}
        for job, rnd, dealer, kind in entries:
            self._kinds[(job, rnd, dealer)] = kind

    def entries(self) -> list[tuple[bytes, int, bytes, int]]:
        return [(*key, kind) for key, kind in sorted(self._kinds.items())]

    def allow(self, ctx: RoundContext, plan: Mapping[bytes, int]) -> None:
        """Record the plan (dealer → kind), or refuse all of it if any dealer's other kind
        was revealed before."""
        for dealer, kind in plan.items():
            before = self._kinds.get((ctx.job, ctx.round, dealer))
            if before is not None and before != kind:
                raise SecAggError(
                    f"refusing to reveal the {KIND_NAMES[kind]} share of 0x{dealer.hex()}: its "
                    f"{KIND_NAMES[before]} share was revealed for this round"
                )
        for dealer, kind in plan.items():
            self._kinds[(ctx.job, ctx.round, dealer)] = kind


def reveal(
    ctx: RoundContext,
    graph: NeighbourGraph,
    me: bytes,
    key: MaskingKey,
    public_keys: Mapping[bytes, bytes],
    survivors: Iterable[bytes],
    guard: RevealGuard,
    members: Iterable[bytes] | None = None,
) -> RevealSet:
    """This holder's reveal set for the round whose update set is `survivors`; only the
    shares of ``members`` (the round's M, default: every graph member) are revealed."""
    s = frozenset(survivors)
    dealt = frozenset(graph.members if members is None else members)
    problem = survivor_problem(graph, s)
    if problem:
        raise SecAggError(f"refusing to reveal shares: {problem}")
    plan = {}
    for dealer in graph.holders(me):  # the dealers whose shares this member holds
        if dealer not in dealt:
            continue
        kind = needed_kind(graph, s, dealer)
        if kind is not None:
            plan[dealer] = kind
    guard.allow(ctx, plan)
    entries = []
    for dealer, kind in sorted(plan.items()):
        pk = key.public if dealer == me else public_keys.get(dealer)
        if not isinstance(pk, bytes) or len(pk) != 32:
            raise SecAggError(f"reveal: no 32-byte public key for 0x{dealer.hex()}")
        entries.append((dealer, kind, share_key(key, pk, ctx, dealer, me, kind)))
    return RevealSet(ctx, me, tuple(entries))
