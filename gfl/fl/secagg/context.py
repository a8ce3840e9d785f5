"""Which round a secret belongs to, and the byte form of addresses.

Every secret, share key and blob of secure aggregation is bound to one (job, round): the
job id already names the chain and the registry (docs/protocol.md 2.3), so nothing derived
for one round is valid in another.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gfl.fl.secagg.errors import SecAggError

MAX_ROUND = (1 << 32) - 1


@dataclass(frozen=True)
class RoundContext:
    """The job (32-byte id) and round (0..2^32-1) a secure-aggregation step belongs to."""

    job: bytes
    round: int

    def __post_init__(self) -> None:
        if not isinstance(self.job, bytes) or len(self.job) != 32:
            raise SecAggError("secure aggregation: the job id must be 32 bytes")
        if isinstance(self.round, bool) or not isinstance(self.round, int):
            raise SecAggError("secure aggregation: the round must be an integer")
        if not 0 <= self.round <= MAX_ROUND:
            raise SecAggError(f"secure aggregation: round {self.round} is outside 0..2^32-1")

    def encode(self) -> bytes:
        """job ‖ u32be round: the context bytes every derivation and blob starts with."""
        return self.job + self.round.to_bytes(4, "big")


def address(value: str | bytes) -> bytes:
    """A member address as its 20 bytes, from bytes or from '0x' + 40 hex digits."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str) and value[:2].lower() == "0x" and len(value) == 42:
        try:
            raw = bytes.fromhex(value[2:])
        except ValueError:
            raw = b""
    else:
        raw = b""
    if len(raw) != 20:
        raise SecAggError(f"secure aggregation: {value!r} is not a 20-byte address")
    return raw


def addresses(values: Iterable[str | bytes]) -> tuple[bytes, ...]:
    """Distinct addresses as bytes, sorted ascending (that is, as integers)."""
    out = sorted({address(v) for v in values})
    return tuple(out)
