"""The two narrow doors through which a job's runner reaches the world.

- a `Ledger` (the chain, seen as one job): join, commit, vote, settle, and read the job and
  its rounds as the chain holds them now;
- an `Exchange` (the network, seen as one job): publish a blob (store it, announce it),
  fetch a blob by hash from whoever holds it, and pass round messages (shard statements).

The runner knows nothing of libp2p or web3; `gfl.scheduler.ledger` and
`gfl.scheduler.exchange` adapt the chain registry and the network to these ports, and
tests can drive a runner with in-process ones.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gfl.errors import GflError
from gfl.fl.data import ArrayDataset
from gfl.fl.rounds import NO_SHARDS, Vote

if TYPE_CHECKING:
    from gfl.chain.records import JobRecord
    from gfl.scheduler.joblog import JobLog


class JobStatus(enum.StrEnum):
    """A job's status on this node: the one vocabulary of the store, the API and the CLI."""

    QUEUED = "queued"  # accepted here, waiting for one of the node's max_concurrent slots
    ACTIVE = "active"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    ERROR = "error"

    @property
    def ended(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.ACTIVE)


class JobRole(enum.StrEnum):
    """How this node takes part in a job."""

    PARTICIPANT = "participant"  # trains and aggregates
    OBSERVER = "observer"  # follows the chain only
    OWNER = "owner"  # published it, does not train


class LedgerRefused(GflError):
    """The chain refused a write (round closed, already committed, not a member, ...)."""


class LedgerUnavailable(GflError):
    """The chain did not answer in time; the runner waits for it and asks again."""


@dataclass(frozen=True)
class Ballot:
    """A vote: the model hash a member computed for a round, the mask of the round's
    update positions it excluded (empty when it used them all) and, for a sharded round,
    the hash of the reduced shards it assembled the model from."""

    round: int
    model_hash: bytes
    mask: bytes = b""
    shards_hash: bytes = NO_SHARDS

    @property
    def vote(self) -> Vote:
        """The candidate, as the chain's rules count it."""
        return Vote("", self.model_hash, self.mask, self.shards_hash)


@dataclass(frozen=True)
class ShardLie:
    """An aggregator's signed statement for a shard of round ``round`` over the round's
    finalized mask, with a hash other than the finalized shard's: evidence for the
    contract's ``slashShardLie``."""

    round: int
    aggregator: str
    shard: int
    hash: bytes
    sig: bytes


@dataclass(frozen=True)
class JobState:
    """A job as the chain holds it now: the contract's hot state and the job's history."""

    record: JobRecord
    log: JobLog
    now: float  # this node's estimate of chain time (block times are wall-clock seconds)


class Ledger(Protocol):
    """The chain as one job sees it. Every method may block on the network, never forever:
    it raises `LedgerUnavailable` when the chain does not answer and `LedgerRefused` when
    the chain refuses a write."""

    address: str

    async def sync(self) -> JobState: ...

    async def join(self, mask_key: bytes = bytes(32)) -> None:
        """Join the job; ``mask_key``: this member's secure-aggregation public key."""
        ...

    async def deal(self, r: int, blob: bytes) -> None:
        """Publish this member's shares blob for round ``r`` (secure aggregation)."""
        ...

    async def leave(self) -> None: ...

    async def commit(
        self, r: int, update_hash: bytes, samples: int, ballot: Ballot | None = None
    ) -> None: ...

    async def vote(self, ballot: Ballot) -> None: ...

    async def settle(self) -> None: ...

    async def eject(self, member: str) -> None: ...

    async def eject_withholder(self, member: str, final: Ballot) -> None: ...

    async def slash_dissenter(self, member: str, theirs: Ballot, final: Ballot) -> None: ...

    async def slash_shard_lie(
        self, lie: ShardLie, final: Ballot, shard_hashes: Sequence[bytes]
    ) -> None:
        """``lie`` contradicts ``final``, whose reduced shards are ``shard_hashes``."""
        ...

    async def report_equivocation(
        self, r: int, first: tuple[bytes, bytes], second: tuple[bytes, bytes]
    ) -> None: ...

    def sign_update(self, r: int, update_hash: bytes) -> bytes: ...

    def sign_shard(self, r: int, shard: int, reduced_hash: bytes, mask: bytes) -> bytes: ...


class Exchange(Protocol):
    """Blob storage and transfer for one job."""

    async def publish(
        self, kind: str, r: int, data: bytes, samples: int = 0, signature: bytes = b""
    ) -> bytes: ...

    async def fetch(
        self, blob: bytes, owner: str | None, max_size: int, timeout: float
    ) -> bytes: ...

    async def fetch_many(
        self, blobs: Sequence[bytes], owner: str, max_size: int, timeout: float
    ) -> dict[bytes, bytes]:
        """Those of ``blobs`` that ``owner``'s node has, in one request (a batch); raises
        `GflError` when the request fails. The caller fetches what is missing one by one."""
        ...

    async def load_local(self, blob: bytes) -> bytes | None: ...

    async def hold(self, data: bytes) -> bytes:
        """Store a blob and serve it, without announcing it on gossip or in the DHT (a
        shard of an update, a reduced shard: their fetchers know whom to ask)."""
        ...

    async def post(self, body: dict[str, Any]) -> None:
        """Send a round message (a shard statement) to the job's members, ourselves too."""
        ...

    def heard(self, kind: str, r: int) -> list[dict[str, Any]]:
        """The round messages of ``kind`` for round ``r`` heard so far (unverified)."""
        ...

    async def ask(self, owner: str, r: int, shards: Sequence[int]) -> int:
        """Ask ``owner``'s node for its statements on ``shards`` of round ``r`` (gossip may
        have lost them); they are heard as if gossiped. How many came (0: no answer)."""
        ...


@dataclass
class NodeData:
    """What this node trains and evaluates on for a job."""

    train: ArrayDataset
    test: ArrayDataset | None
