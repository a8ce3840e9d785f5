"""What the chain holds about jobs and members, as frozen dataclasses."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from gfl.chain.errors import InvalidJobParams

MAX_ROUNDS = 1_000_000
MAX_PARTICIPANTS = 2**24 - 1
MAX_TIMEOUT = 7 * 86_400
MAX_LIFETIME = 365 * 86_400
#: The contract's "no round" in member views.
NO_ROUND = 2**32 - 1
_UINT32 = 2**32 - 1
_UINT64 = 2**64 - 1
_UINT96 = 2**96 - 1


class JobStatus(enum.IntEnum):
    """Mirrors ``JobRegistry.Status``."""

    NONE = 0
    ACTIVE = 1
    FINISHED = 2
    CANCELLED = 3
    EXPIRED = 4


class MemberStatus(enum.IntEnum):
    """Mirrors ``JobRegistry.MemberStatus``."""

    NONE = 0
    ACTIVE = 1
    LEFT = 2
    EJECTED = 3
    SLASHED = 4


class LeaveReason(enum.IntEnum):
    """Why a member left the set (the ``Left`` event)."""

    LEFT = 0
    MISSED_ROUNDS = 1
    WITHHELD = 2
    SLASHED = 3


class SlashReason(enum.IntEnum):
    EQUIVOCATION = 0
    DISSENT = 1
    SHARD_LIE = 2


@dataclass(frozen=True)
class JobParams:
    """A job's rules, fixed at registration; the bounds the contract enforces are checked here
    too (all but the deadline's distance from chain time)."""

    rounds: int
    min_updates: int
    max_participants: int
    round_timeout: int
    vote_timeout: int
    deadline: int
    bond: int = 0
    join_until: int = _UINT32
    max_samples: int = _UINT64
    max_missed: int = 3
    allow_root: bytes = bytes(32)

    def __post_init__(self) -> None:
        _bound("rounds", self.rounds, 1, MAX_ROUNDS)
        _bound("max_participants", self.max_participants, 1, MAX_PARTICIPANTS)
        _bound("min_updates", self.min_updates, 1, self.max_participants)
        _bound("round_timeout", self.round_timeout, 1, MAX_TIMEOUT)
        _bound("vote_timeout", self.vote_timeout, 1, MAX_TIMEOUT)
        _bound("join_until", self.join_until, 0, _UINT32)
        _bound("max_samples", self.max_samples, 1, _UINT64)
        _bound("deadline", self.deadline, 1, _UINT64)
        _bound("max_missed", self.max_missed, 1, 255)
        _bound("bond", self.bond, 0, _UINT96)
        if not isinstance(self.allow_root, bytes) or len(self.allow_root) != 32:
            raise InvalidJobParams("allow_root must be 32 bytes")
        if self.allow_root == bytes(32) and self.bond == 0:
            raise InvalidJobParams("an open job (no allow-list) needs a bond > 0")

    def as_tuple(self) -> tuple[Any, ...]:
        """The contract's ``Params`` struct, in field order."""
        return (
            self.rounds,
            self.min_updates,
            self.max_participants,
            self.round_timeout,
            self.vote_timeout,
            self.join_until,
            self.max_samples,
            self.deadline,
            self.max_missed,
            self.bond,
            self.allow_root,
        )

    @classmethod
    def from_tuple(cls, t: tuple[Any, ...] | list[Any]) -> JobParams:
        return cls(
            rounds=t[0],
            min_updates=t[1],
            max_participants=t[2],
            round_timeout=t[3],
            vote_timeout=t[4],
            join_until=t[5],
            max_samples=t[6],
            deadline=t[7],
            max_missed=t[8],
            bond=t[9],
            allow_root=bytes(t[10]),
        )


@dataclass(frozen=True)
class JobRecord:
    """A job as the chain sees it now, pending transitions applied.

    `round` is the collecting round c (== rounds once the last one closed); the vote
    fields describe round c - 1: the top candidate by its 10-byte key prefix, and its full
    key only where the contract keeps it (a non-empty mask). `log_seq`/`log_hash` are the
    stored running hash.
    """

    job_id: bytes
    owner: str
    bond: int
    spec_hash: bytes
    model0_hash: bytes
    params: JobParams
    status: JobStatus
    round: int
    updates: int
    opens_at: int
    eligible: int
    closed_at: int
    closed_updates: int
    top_votes: int
    second_votes: int
    top_excluded: int
    voting: bool
    dissent: bool
    top_prefix: bytes
    top_key: bytes | None
    pending: int
    active: int
    joined: int
    withdrawable_at: int
    log_seq: int
    log_hash: bytes

    @classmethod
    def from_view(cls, job_id: bytes, v: dict[str, Any]) -> JobRecord:
        """From the contract's JobView, by field name."""
        return cls(
            job_id=job_id,
            owner=v["owner"],
            bond=v["bond"],
            spec_hash=bytes(v["specHash"]),
            model0_hash=bytes(v["model0Hash"]),
            params=JobParams.from_tuple(v["params"]),
            status=JobStatus(v["status"]),
            round=v["round"],
            updates=v["updates"],
            opens_at=v["opensAt"],
            eligible=v["eligible"],
            closed_at=v["closedAt"],
            closed_updates=v["closedUpdates"],
            top_votes=v["topVotes"],
            second_votes=v["secondVotes"],
            top_excluded=v["topExcluded"],
            voting=v["voting"],
            dissent=v["dissent"],
            top_prefix=bytes(v["topPrefix"]),
            top_key=bytes(v["topKey"]) if any(v["topKey"]) else None,
            pending=v["pending"],
            active=v["active"],
            joined=v["joined"],
            withdrawable_at=v["withdrawableAt"],
            log_seq=v["logSeq"],
            log_hash=v["logHash"].to_bytes(24, "big"),
        )

    @property
    def rounds(self) -> int:
        return self.params.rounds

    @property
    def min_updates(self) -> int:
        return self.params.min_updates

    @property
    def round_timeout(self) -> int:
        return self.params.round_timeout

    @property
    def vote_deadline(self) -> int | None:
        """When the vote on round - 1 closes (None before any round closed)."""
        return self.closed_at + self.params.vote_timeout if self.round > 0 else None


@dataclass(frozen=True)
class MemberRecord:
    """One member's slot: rounds are None where the contract says NO_ROUND."""

    account: str
    status: MemberStatus
    withdrawn: bool
    join_round: int
    last_round: int | None
    last_position: int
    prev_round: int | None
    prev_position: int
    vote_round: int | None
    vote_key_prefix: bytes  # the first 10 bytes of the key of the member's last vote

    @classmethod
    def from_view(cls, v: tuple[Any, ...] | list[Any]) -> MemberRecord:
        """From the contract's MemberView."""

        def rnd(r: int) -> int | None:
            return None if r == NO_ROUND else r

        return cls(
            account=v[0],
            status=MemberStatus(v[1]),
            withdrawn=v[2],
            join_round=v[3],
            last_round=rnd(v[4]),
            last_position=v[5],
            prev_round=rnd(v[6]),
            prev_position=v[7],
            vote_round=rnd(v[8]),
            vote_key_prefix=bytes(v[9]),
        )

    def position_in(self, round: int) -> int | None:
        """This member's position in S_round, when the slot still remembers it."""
        if self.last_round == round:
            return self.last_position
        if self.prev_round == round:
            return self.prev_position
        return None


@dataclass(frozen=True)
class ChainEvent:
    """A decoded registry event. `args` holds the event's fields (bytes32 as bytes,
    addresses checksummed, the JobRegistered params as a dict)."""

    name: str
    job_id: bytes
    seq: int
    args: dict[str, Any] = field(hash=False)
    block_number: int
    log_index: int
    tx_hash: bytes


def _bound(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidJobParams(f"{name} must be an integer in [{low}, {high}], not {value!r}")
