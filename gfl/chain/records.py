"""What the chain holds about jobs and rounds, as frozen dataclasses."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class JobStatus(enum.IntEnum):
    """Mirrors ``JobRegistry.Status``."""

    NONE = 0
    ACTIVE = 1
    FINISHED = 2
    CANCELLED = 3


@dataclass(frozen=True)
class JobRecord:
    """A job as the chain sees it now (pending timeout closures applied)."""

    job_id: bytes
    owner: str
    spec_hash: bytes
    status: JobStatus
    rounds: int
    min_updates: int
    round_timeout: int
    current_round: int
    joined_count: int


@dataclass(frozen=True)
class UpdateCommitment:
    participant: str
    update_hash: bytes
    samples: int


@dataclass(frozen=True)
class ModelCommitment:
    participant: str
    model_hash: bytes


@dataclass(frozen=True)
class RoundRecord:
    """One round: its updates and model commitments in chain order.

    `closed_at` is None while the round is open; `opens_at` is 0 for a round
    that has not opened yet.
    """

    job_id: bytes
    round: int
    opens_at: int
    closed_at: int | None
    closed: bool
    updates: tuple[UpdateCommitment, ...]
    models: tuple[ModelCommitment, ...]


@dataclass(frozen=True)
class ChainEvent:
    """A decoded registry event. `args` holds the event's fields (bytes32 as bytes)."""

    name: str
    job_id: bytes
    args: dict[str, Any] = field(hash=False)
    block_number: int
    log_index: int
    tx_hash: bytes
