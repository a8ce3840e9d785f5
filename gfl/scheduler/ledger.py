"""The chain registry as one job's `Ledger`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from gfl.chain.errors import ChainUnavailable, ContractRevert
from gfl.chain.records import JobStatus as ChainStatus
from gfl.errors import GflError
from gfl.scheduler.ports import JobStatus, LedgerJob, LedgerRefused, LedgerRound, LedgerUnavailable

if TYPE_CHECKING:
    from gfl.chain.registry import Registry

T = TypeVar("T")
ChainCall = Callable[..., Awaitable[Any]]

_STATUS = {
    ChainStatus.ACTIVE: JobStatus.ACTIVE,
    ChainStatus.FINISHED: JobStatus.FINISHED,
    ChainStatus.CANCELLED: JobStatus.CANCELLED,
}


class UnknownJob(GflError):
    """The chain holds no job with this id."""


class ChainLedger:
    """One job's view of the `Registry`.

    ``call`` runs a blocking registry method off the trio thread, one at a time (the
    node's chain executor): web3 is synchronous and the node runs on trio.
    """

    def __init__(self, registry: Registry, job_id: bytes, call: ChainCall) -> None:
        self._chain = registry
        self._job_id = job_id
        self._run = call
        self.address: str = registry.account
        self._participants: tuple[str, ...] = ()
        self._joined_count = -1

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            result: T = await self._run(fn, *args)
        except ContractRevert as exc:
            raise LedgerRefused(str(exc)) from None
        except ChainUnavailable as exc:
            raise LedgerUnavailable(str(exc)) from None
        return result

    async def job(self) -> LedgerJob:
        rec = await self._call(self._chain.get_job, self._job_id)
        if rec is None:
            raise UnknownJob(f"the chain holds no job 0x{self._job_id.hex()}")
        if rec.joined_count != self._joined_count:
            self._participants = tuple(await self._call(self._chain.participants, self._job_id))
            self._joined_count = rec.joined_count
        return LedgerJob(
            status=_STATUS.get(rec.status, JobStatus.CANCELLED),
            rounds=rec.rounds,
            min_updates=rec.min_updates,
            round_timeout=rec.round_timeout,
            current_round=rec.current_round,
            joined=self._participants,
        )

    async def round(self, r: int) -> LedgerRound:
        rec = await self._call(self._chain.get_round, self._job_id, r)
        return LedgerRound(
            round=r,
            opens_at=float(rec.opens_at),
            closed=bool(rec.closed),
            closed_at=None if rec.closed_at is None else float(rec.closed_at),
            updates=tuple((u.participant, u.update_hash, u.samples) for u in rec.updates),
            models=tuple((m.participant, m.model_hash) for m in rec.models),
        )

    async def join(self) -> None:
        await self._call(self._chain.join_job, self._job_id)

    async def commit_update(self, r: int, update_hash: bytes, samples: int) -> None:
        await self._call(self._chain.commit_update, self._job_id, r, update_hash, samples)

    async def commit_model(self, r: int, model_hash: bytes) -> None:
        await self._call(self._chain.commit_model, self._job_id, r, model_hash)

    async def settle(self) -> None:
        await self._call(self._chain.settle, self._job_id)
