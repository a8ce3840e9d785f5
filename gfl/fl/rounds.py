"""The round rules of a job, as pure logic: the JobRegistry contract's rules, said once in Python.

The contract is the arbiter on a live network; this module mirrors it so that `gfl
simulate` follows the same rules and a node can reason about what the chain will do
(``tests/chain`` runs the same sequences against both and compares). Times are block times
in seconds. No I/O, no threads.

A job's rounds run like this (``docs/protocol.md``, "Rounds", says it for implementers):

- **Collecting** round c accepts one update per active member; the members it waits for
  (eligible for c) are those that joined before c received its first update, not left or
  ejected (a later joiner may contribute, but counts from c + 1 on). Updates for c may
  arrive while c-1 is still being voted on; c's timeout clock starts only when c-1 is
  decided.
- **Closing** c: at least ``min_updates`` updates and either every eligible member committed
  or the timeout passed, and c-1 decided. Closing fixes the update set S_c (chain order,
  positions 0..n-1). It closes "at" the block that completes it, or at opens_at + timeout.
- **Voting** on c: each member in S_c may vote once, before closed_at + vote_timeout, for a
  model hash together with the mask of S_c positions it excluded (unavailable or invalid
  updates) and, in a sharded round, the hash of the reduced shards the model was assembled
  from. The candidate (model, mask, shards) with votes * 2 > |S_c| is finalized at once; at the
  deadline the unique top candidate is finalized if votes * 2 > |S_c| - |its mask|; any
  other outcome leaves the round void (the model stays what it was).
- c+1's clock starts at the decision (at the deadline for a deadline decision); the job is
  finished when its last round is decided.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from gfl.errors import GflError

MAX_PARTICIPANTS = (1 << 24) - 1
MAX_TIMEOUT_S = 7 * 86400
MAX_ROUNDS = 1_000_000


class RoundRuleError(GflError):
    """The contract would refuse this (wrong round, not eligible, too late, ...)."""


# -- masks: the S_r positions a vote excluded ----------------------------------------------


def mask_bytes(excluded: Iterable[int], n: int) -> bytes:
    """The canonical mask of ``excluded`` positions of an update set of size ``n``: empty
    when nothing is excluded, else ceil(n / 8) bytes, bit i of byte i // 8 (LSB first)."""
    positions = sorted(set(excluded))
    if not positions:
        return b""
    if positions[0] < 0 or positions[-1] >= n:
        raise RoundRuleError(f"an excluded position is outside the update set of {n}")
    out = bytearray((n + 7) // 8)
    for i in positions:
        out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def excluded_positions(mask: bytes, n: int) -> list[int]:
    """The positions a canonical mask excludes (`RoundRuleError` for a malformed mask)."""
    if not mask:
        return []
    if len(mask) != (n + 7) // 8:
        raise RoundRuleError(f"a mask over {n} updates has {(n + 7) // 8} bytes, not {len(mask)}")
    out = [i for i in range(n) if mask[i // 8] >> (i % 8) & 1]
    if not out:
        raise RoundRuleError("a mask that excludes nothing must be empty")
    if n % 8 and mask[-1] >> (n % 8):
        raise RoundRuleError("a mask sets bits beyond the update set")
    return out


# -- the state -------------------------------------------------------------------------------


class Decision(enum.Enum):
    """How a round ended."""

    FINALIZED = "finalized"
    VOID = "void"


@dataclass(frozen=True)
class RoundParams:
    """What the contract's rules read from a job's registration."""

    rounds: int
    min_updates: int = 1
    max_participants: int = 64
    round_timeout: int = 300
    vote_timeout: int = 60
    join_until: int = MAX_ROUNDS
    max_samples: int = 1
    max_missed: int = 2

    def __post_init__(self) -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise RoundRuleError(what)

        need(1 <= self.rounds <= MAX_ROUNDS, f"rounds must be in [1, {MAX_ROUNDS}]")
        need(
            1 <= self.max_participants <= MAX_PARTICIPANTS,
            f"max_participants must be in [1, {MAX_PARTICIPANTS}]",
        )
        need(
            1 <= self.min_updates <= self.max_participants,
            "min_updates must be in [1, max_participants]",
        )
        for name in ("round_timeout", "vote_timeout"):
            need(1 <= getattr(self, name) <= MAX_TIMEOUT_S, f"{name} must be in [1, 7 days]")
        need(self.max_samples >= 1, "max_samples must be at least 1")
        need(1 <= self.max_missed <= 255, "max_missed must be in [1, 255]")
        need(self.join_until >= 0, "join_until must be >= 0")


@dataclass(frozen=True)
class Update:
    """An update the chain accepted: its author, hash, claimed samples, position in S_r."""

    author: str
    update_hash: bytes
    samples: int
    position: int


NO_SHARDS = bytes(32)  # the shards hash of an all-to-all round's candidate


@dataclass(frozen=True)
class Vote:
    """A member's vote: the model, the mask of the positions it excluded and, for a
    sharded round, the hash of the reduced shards it assembled the model from."""

    voter: str
    model_hash: bytes
    mask: bytes
    shards_hash: bytes = NO_SHARDS

    @property
    def candidate(self) -> tuple[bytes, bytes, bytes]:
        """What votes are counted under (the contract's key hashes exactly this)."""
        return (self.model_hash, self.mask, self.shards_hash)


@dataclass
class Round:
    """One round as the rules see it."""

    number: int
    opens_at: float | None = None  # when its timeout clock started (None: not yet)
    closed_at: float | None = None
    updates: list[Update] = field(default_factory=list)
    votes: dict[str, Vote] = field(default_factory=dict)  # voter (lower case) -> vote
    decision: Decision | None = None
    decided_at: float | None = None
    final: Vote | None = None  # the finalized candidate

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def tally(self) -> dict[tuple[bytes, bytes, bytes], int]:
        """Votes per candidate (model hash, mask, shards hash)."""
        out: dict[tuple[bytes, bytes, bytes], int] = {}
        for v in self.votes.values():
            out[v.candidate] = out.get(v.candidate, 0) + 1
        return out

    def excluded(self, mask: bytes) -> list[int]:
        return excluded_positions(mask, len(self.updates))


@dataclass
class Member:
    address: str
    join_round: int
    left: bool = False
    last_update: int = -1  # the last round it committed an update for


def finalizes_now(votes: int, set_size: int) -> bool:
    """A candidate with a strict majority of the whole update set is finalized at once."""
    return votes * 2 > set_size


def wins_at_deadline(top: int, second: int, set_size: int, top_excluded: int) -> bool:
    """At the vote deadline the unique top candidate wins with a strict majority of the
    updates it used."""
    return top > second and top * 2 > set_size - top_excluded


class JobRounds:
    """One job's rounds under the contract's rules (``now``: block time, non-decreasing)."""

    def __init__(self, params: RoundParams, registered_at: float) -> None:
        self.params = params
        self.members: dict[str, Member] = {}
        self.rounds: list[Round] = [Round(0, opens_at=registered_at)]
        self.collecting = 0  # the round that accepts updates (== params.rounds when done)
        self.finished = False
        self.cancelled = False

    # -- queries ----------------------------------------------------------------------------

    def round(self, r: int) -> Round:
        if not 0 <= r < len(self.rounds):
            raise RoundRuleError(f"round {r} has not started")
        return self.rounds[r]

    @property
    def voting(self) -> Round | None:
        """The round being voted on, if any (always the one before the collecting round)."""
        if self.collecting == 0:
            return None
        prev = self.rounds[self.collecting - 1]
        return prev if prev.closed and prev.decision is None else None

    def eligible(self, r: int) -> list[str]:
        """The members eligible for round r (in join order)."""
        return [m.address for m in self.members.values() if m.join_round <= r and not m.left]

    def is_eligible(self, address: str, r: int) -> bool:
        m = self.members.get(address.lower())
        return m is not None and not m.left and m.join_round <= r

    # -- membership -------------------------------------------------------------------------

    def join(self, address: str, now: float) -> int:
        """A member joins; returns the first round it is eligible for."""
        self.settle(now)
        key = address.lower()
        if self.finished or self.cancelled:
            raise RoundRuleError("the job is not active")
        if self.collecting > self.params.join_until:
            raise RoundRuleError("joining has closed")
        if key in self.members:
            raise RoundRuleError(f"{address} already joined")
        if sum(not m.left for m in self.members.values()) >= self.params.max_participants:
            raise RoundRuleError("the job is full")
        current = self.rounds[self.collecting]
        first = self.collecting if not current.updates else self.collecting + 1
        self.members[key] = Member(address, first)
        return first

    def leave(self, address: str, now: float) -> None:
        self.settle(now)
        m = self.members.get(address.lower())
        if m is None or m.left:
            raise RoundRuleError(f"{address} is not a member")
        if m.last_update == self.collecting:
            raise RoundRuleError("a member that committed in the collecting round cannot leave")
        m.left = True
        self._try_close(now)

    # -- updates and votes ------------------------------------------------------------------

    def commit(self, address: str, r: int, update_hash: bytes, samples: int, now: float) -> Update:
        """An update for round r (raises `RoundRuleError` where the contract refuses it)."""
        self.settle(now)
        if self.finished or self.cancelled:
            raise RoundRuleError("the job is not active")
        if r != self.collecting:
            raise RoundRuleError(f"round {r} is not collecting (round {self.collecting} is)")
        m = self.members.get(address.lower())
        if m is None or m.left:  # a mid-round joiner may contribute; the round does not wait
            raise RoundRuleError(f"{address} is not a member")
        if m.last_update == r:
            raise RoundRuleError(f"{address} already committed in round {r}")
        if not 1 <= samples <= self.params.max_samples:
            raise RoundRuleError(f"samples must be in [1, {self.params.max_samples}]")
        rd = self.rounds[r]
        update = Update(address, bytes(update_hash), int(samples), len(rd.updates))
        rd.updates.append(update)
        m.last_update = r
        self._try_close(now)
        return update

    def vote(
        self,
        address: str,
        r: int,
        model_hash: bytes,
        mask: bytes,
        now: float,
        shards_hash: bytes = NO_SHARDS,
    ) -> None:
        """A vote on round r (raises `RoundRuleError` where the contract refuses it). Votes
        stay open until the deadline also after a decision: they are then only recorded."""
        self.settle(now)
        rd = self.rounds[r] if 0 <= r == self.collecting - 1 else None
        if rd is None or rd.closed_at is None:
            raise RoundRuleError(f"round {r} is not being voted on")
        if now >= rd.closed_at + self.params.vote_timeout:
            raise RoundRuleError(f"the vote on round {r} has closed")
        key = address.lower()
        member = self.members.get(key)
        if member is None or member.left:
            raise RoundRuleError(f"{address} is not a member")
        mine = [u for u in rd.updates if u.author.lower() == key]
        if not mine:
            raise RoundRuleError(f"{address} has no update in round {r}")
        if key in rd.votes:
            raise RoundRuleError(f"{address} already voted on round {r}")
        excluded = rd.excluded(mask)
        if mine[0].position in excluded:
            raise RoundRuleError("a vote cannot exclude the voter's own update")
        vote = Vote(address, bytes(model_hash), bytes(mask), bytes(shards_hash))
        rd.votes[key] = vote
        votes = rd.tally()[vote.candidate]
        if rd.decision is None and finalizes_now(votes, len(rd.updates)):
            self._decide(rd, Decision.FINALIZED, now, rd.votes[key])
            self._try_close(now)

    def cancel(self) -> None:
        self.cancelled = True

    # -- time -------------------------------------------------------------------------------

    def settle(self, now: float) -> None:
        """Apply every closure and decision that time alone has made due by ``now`` (what
        the contract's `settle`, and the start of each of its writes, does). A round that
        closes by its timeout closes at opens_at + round_timeout; one whose every eligible
        member committed before its clock started closes when the clock starts; a vote
        that reaches its deadline is decided at the deadline: recorded times never depend
        on who settles or when."""
        while True:
            rd = self.voting
            if rd is not None:
                assert rd.closed_at is not None
                deadline = rd.closed_at + self.params.vote_timeout
                if now < deadline:
                    return
                self._decide_at_deadline(rd, deadline)
                continue
            if not self._try_close(now, lazy=True):
                return

    def _decide_at_deadline(self, rd: Round, deadline: float) -> None:
        ranked = sorted(rd.tally().items(), key=lambda kv: kv[1], reverse=True)
        top = ranked[0][1] if ranked else 0
        second = ranked[1][1] if len(ranked) > 1 else 0
        if ranked:
            (model, mask, shards), _ = ranked[0]
            if wins_at_deadline(top, second, len(rd.updates), len(rd.excluded(mask))):
                self._decide(rd, Decision.FINALIZED, deadline, Vote("", model, mask, shards))
                return
        self._decide(rd, Decision.VOID, deadline, None)

    def _decide(self, rd: Round, decision: Decision, at: float, final: Vote | None) -> None:
        rd.decision, rd.decided_at, rd.final = decision, at, final
        if rd.number + 1 >= self.params.rounds:
            self.finished = True
        else:
            self.rounds[rd.number + 1].opens_at = at

    def _try_close(self, now: float, *, lazy: bool = False) -> bool:
        """Close the collecting round if the rule holds at ``now``; True if it closed.

        A write (``lazy`` False) that completes the rule closes the round at ``now``;
        `settle` closes it at the moment time alone completed it."""
        c = self.collecting
        if self.finished or self.cancelled or c >= self.params.rounds or self.voting is not None:
            return False
        rd = self.rounds[c]
        if rd.opens_at is None:  # c-1 undecided: c's clock has not started
            return False
        n = len(rd.updates)
        if n < self.params.min_updates:
            return False
        deadline = rd.opens_at + self.params.round_timeout
        everyone = n >= len(self.eligible(c))
        if not everyone and now < deadline:
            return False
        if not lazy:
            rd.closed_at = now
        else:
            rd.closed_at = rd.opens_at if everyone else deadline
        self.collecting = c + 1
        if c + 1 < self.params.rounds:
            self.rounds.append(Round(c + 1))
        return True

    # -- what a member is to do ---------------------------------------------------------------

    def model_after(self, r: int) -> tuple[Decision, Vote | None] | None:
        """How round r ended (None while undecided)."""
        rd = self.round(r)
        return None if rd.decision is None else (rd.decision, rd.final)
