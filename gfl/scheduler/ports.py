"""The two narrow doors through which a job's runner reaches the world.

- a `Ledger` (the chain, seen as one job): join, commit, vote, settle, and read the job and
  its rounds as the chain holds them now;
- an `Exchange` (the network, seen as one job): publish a blob (store it, announce it) and
  fetch a blob by hash from whoever holds it.

The runner knows nothing of libp2p or web3; `gfl.scheduler.ledger` and
`gfl.scheduler.exchange` adapt the chain registry and the network to these ports, and
tests can drive a runner with in-process ones.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from gfl.errors import GflError
from gfl.fl.data import ArrayDataset


class JobStatus(enum.StrEnum):
    """A job's status on this node: the one vocabulary of the store, the API and the CLI."""

    ACTIVE = "active"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    ERROR = "error"

    @property
    def ended(self) -> bool:
        return self is not JobStatus.ACTIVE


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
class LedgerJob:
    """A job as the chain holds it now."""

    status: JobStatus
    rounds: int
    min_updates: int
    round_timeout: int
    current_round: int
    joined: tuple[str, ...]


@dataclass(frozen=True)
class LedgerRound:
    """One round as the chain holds it now: its updates and model commitments in chain order."""

    round: int
    opens_at: float
    closed_at: float | None
    closed: bool
    updates: tuple[tuple[str, bytes, int], ...]  # (participant, hash, samples)
    models: tuple[tuple[str, bytes], ...]  # (participant, model hash)


class Ledger(Protocol):
    """The chain as one job sees it. Every method may block on the network, never forever:
    it raises `LedgerUnavailable` when the chain does not answer and `LedgerRefused` when
    the chain refuses a write."""

    address: str

    async def job(self) -> LedgerJob: ...

    async def round(self, r: int) -> LedgerRound: ...

    async def join(self) -> None: ...

    async def commit_update(self, r: int, update_hash: bytes, samples: int) -> None: ...

    async def commit_model(self, r: int, model_hash: bytes) -> None: ...

    async def settle(self) -> None: ...


class Exchange(Protocol):
    """Blob storage and transfer for one job."""

    async def publish(self, kind: str, r: int, data: bytes, samples: int = 0) -> bytes: ...

    async def fetch(
        self, blob: bytes, owner: str | None, max_size: int, timeout: float
    ) -> bytes: ...

    async def load_local(self, blob: bytes) -> bytes | None: ...


@dataclass
class NodeData:
    """What this node trains and evaluates on for a job."""

    train: ArrayDataset
    test: ArrayDataset | None
