"""The round state machine of one job, as pure logic: events in, decisions out.

It mirrors the JobRegistry contract's rules (see the chain layer) so a node can tell, from
the events it has seen, when a round closes, which updates count and in what order, which
model hash the majority committed, and what the node should do next. The node feeds it real
chain events and its clock; the simulator feeds it virtual ones. No I/O, no threads.

Round r is closed iff count >= min_updates and (count >= joined or now >= opens_at + timeout).
Closing is lazy, as on chain: `settle(now)` records it (closed_at = now) and opens r + 1.
The chain is the arbiter: `on_round_closed` applies its verdict even where the local clock
disagrees. Updates count in chain order; strategies then sort them canonically by address.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from gfl.errors import GflError


class RoundError(GflError):
    """An event contradicts the round rules (e.g. the chain closed a round short of updates)."""


@dataclass(frozen=True)
class UpdateCommit:
    """An update commitment the chain accepted for a round."""

    address: str
    update_hash: bytes
    samples: int


@dataclass(frozen=True)
class Train:
    """Train on M_round and commit the update."""

    round: int


@dataclass(frozen=True)
class Aggregate:
    """Fetch these updates (chain order), aggregate, commit hash(M_{round+1})."""

    round: int
    updates: tuple[UpdateCommit, ...]


@dataclass(frozen=True)
class Wait:
    """Nothing to do until an event arrives or the clock reaches `until` (None: no deadline)."""

    round: int
    until: float | None


@dataclass(frozen=True)
class Done:
    """The job is finished (or cancelled) and this node has committed all its models."""


Action = Train | Aggregate | Wait | Done


@dataclass(frozen=True)
class Consensus:
    """Model commitments for one round: the majority hash (None until one has > half)."""

    majority: bytes | None
    votes: int
    total: int
    dissenters: tuple[str, ...]


def consensus_of(models: Mapping[str, bytes]) -> Consensus:
    """Strict-majority model hash of one round's commitments (participant -> hash)."""
    if not models:
        return Consensus(None, 0, 0, ())
    (top, votes), *_rest = Counter(models.values()).most_common()
    total = len(models)
    if votes * 2 <= total:
        return Consensus(None, votes, total, ())
    dissent = tuple(sorted(a for a, h in models.items() if h != top))
    return Consensus(top, votes, total, dissent)


@dataclass
class _Round:
    opens_at: float
    closed_at: float | None = None
    updates: list[UpdateCommit] = field(default_factory=list)
    models: dict[str, bytes] = field(default_factory=dict)


class JobRounds:
    """One job's rounds, mirroring the chain's rules from the events a node observes."""

    def __init__(
        self, rounds: int, min_updates: int, round_timeout: float, registered_at: float
    ) -> None:
        if rounds < 1 or min_updates < 1 or round_timeout <= 0:
            raise RoundError("rounds and min_updates must be >= 1 and the timeout positive")
        self.rounds = rounds
        self.min_updates = min_updates
        self.round_timeout = round_timeout
        self.joined: list[str] = []
        self.current = 0
        self.finished = False
        self.cancelled = False
        self._rounds: list[_Round] = [_Round(opens_at=registered_at)]

    # -- rule ------------------------------------------------------------------------------

    def _rule(self, r: int, now: float) -> bool:
        rd = self._rounds[r]
        n = len(rd.updates)
        return n >= self.min_updates and (
            n >= len(self.joined) or now >= rd.opens_at + self.round_timeout
        )

    def is_closed(self, r: int, now: float) -> bool:
        """Whether round r is closed at `now` (as the chain's views compute it)."""
        if r < self.current or (self.finished and r < self.rounds):
            return True
        return r == self.current and self._rule(r, now)

    def settle(self, now: float) -> list[int]:
        """Record closure of the current round if the rule holds; returns rounds closed."""
        closed = []
        while not self.finished and not self.cancelled and self._rule(self.current, now):
            closed.append(self.current)
            self._close(self.current, now)
        return closed

    def _close(self, r: int, at: float) -> None:
        self._rounds[r].closed_at = at
        if r + 1 >= self.rounds:
            self.finished = True
            self.current = self.rounds
        else:
            self.current = r + 1
            self._rounds.append(_Round(opens_at=at))

    # -- events ----------------------------------------------------------------------------

    def on_join(self, address: str, now: float) -> bool:
        """A participant joined (settles first, as the contract's write does)."""
        self.settle(now)
        if self.finished or self.cancelled:
            return False
        key = address.lower()
        if key not in (a.lower() for a in self.joined):
            self.joined.append(address)
        return True

    def on_update(self, r: int, address: str, update_hash: bytes, samples: int, now: float) -> bool:
        """An update commitment; False when the chain would refuse it (and it is ignored)."""
        self.settle(now)
        if self.finished or self.cancelled or r != self.current or samples < 1:
            return False
        key = address.lower()
        if key not in (a.lower() for a in self.joined):
            return False
        rd = self._rounds[r]
        if any(u.address.lower() == key for u in rd.updates):
            return False
        rd.updates.append(UpdateCommit(address, bytes(update_hash), int(samples)))
        return True

    def on_round_closed(self, r: int, closed_at: float) -> None:
        """The chain says round r closed at `closed_at`; its word stands over our clock."""
        if r < self.current:
            return
        if r != self.current:
            raise RoundError(f"chain closed round {r} but round {self.current} is still open here")
        if len(self._rounds[r].updates) < self.min_updates:
            raise RoundError(
                f"chain closed round {r} with fewer updates than seen here; missed update events"
            )
        self._close(r, closed_at)

    def on_model(self, r: int, address: str, model_hash: bytes) -> bool:
        """A model commitment for a closed round; one per participant."""
        if r >= self.rounds or self.cancelled or not self.is_closed(r, float("-inf")):
            return False
        models = self._rounds[r].models
        key = address.lower()
        if key in models or key not in (a.lower() for a in self.joined):
            return False
        models[key] = bytes(model_hash)
        return True

    def on_cancel(self) -> None:
        self.cancelled = True

    # -- queries ---------------------------------------------------------------------------

    def opens_at(self, r: int) -> float:
        return self._rounds[r].opens_at

    def closed_at(self, r: int) -> float | None:
        return self._rounds[r].closed_at if r < len(self._rounds) else None

    def updates(self, r: int) -> tuple[UpdateCommit, ...]:
        """The updates that count for round r, in chain order (final once r is closed)."""
        return tuple(self._rounds[r].updates) if r < len(self._rounds) else ()

    def consensus(self, r: int) -> Consensus:
        """Majority model hash for round r, and who committed something else."""
        return consensus_of(self._rounds[r].models if r < len(self._rounds) else {})

    def diverged(self, r: int, my_hash: bytes) -> bool:
        """True when a majority exists for r and `my_hash` is not it: raise the alarm."""
        c = self.consensus(r)
        return c.majority is not None and c.majority != bytes(my_hash)

    def next_action(self, me: str, now: float) -> Action:
        """What node `me` should do now: aggregate a closed round, train, wait, or stop."""
        self.settle(now)
        key = me.lower()
        last = self.current if not self.finished else self.rounds
        for r in range(last):
            rd = self._rounds[r]
            if key in (a.lower() for a in self.joined) and key not in rd.models:
                return Aggregate(r, tuple(rd.updates))
        if self.finished or self.cancelled:
            return Done()
        r = self.current
        rd = self._rounds[r]
        if key in (a.lower() for a in self.joined) and not any(
            u.address.lower() == key for u in rd.updates
        ):
            return Train(r)
        return Wait(r, rd.opens_at + self.round_timeout)
