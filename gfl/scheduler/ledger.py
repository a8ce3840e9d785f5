"""The chain registry as one job's `Ledger`: its hot state read each pass, its history kept
as a `JobLog` fed by the node's chain watch and read again whenever a gap shows."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from gfl.chain.errors import ChainError, ChainUnavailable, ContractRevert
from gfl.chain.proofs import merkle_proof
from gfl.errors import GflError
from gfl.scheduler.joblog import JobLog, LogGap
from gfl.scheduler.ports import (
    Ballot,
    JobState,
    LedgerRefused,
    LedgerUnavailable,
    ShardLie,
)

if TYPE_CHECKING:
    from gfl.chain.records import ChainEvent
    from gfl.chain.registry import Registry

log = logging.getLogger(__name__)
T = TypeVar("T")
ChainCall = Callable[..., Awaitable[Any]]


class UnknownJob(GflError):
    """The chain holds no job with this id."""


class ChainLedger:
    """One job's view of the `Registry`.

    ``call`` runs a blocking registry method off the trio thread, one at a time (the
    node's chain executor): web3 is synchronous and the node runs on trio. ``allow`` is the
    job's allow-list (from its spec), to prove this node's admission when it joins.
    """

    def __init__(
        self,
        registry: Registry,
        job_id: bytes,
        call: ChainCall,
        *,
        allow: Sequence[str] = (),
        from_block: int = 0,
    ) -> None:
        self._chain = registry
        self._job_id = job_id
        self._run = call
        self._allow = tuple(allow)
        self._from_block = from_block
        self.address: str = registry.account
        self.log = JobLog(job_id)
        self._stale = True  # read the whole history on the next sync
        self._cursor = from_block  # the block of the last event folded

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            result: T = await self._run(fn, *args)
        except ContractRevert as exc:
            raise LedgerRefused(str(exc)) from None
        except ChainUnavailable as exc:
            raise LedgerUnavailable(str(exc)) from None
        return result

    # -- the job's history --------------------------------------------------------------------

    def feed(self, events: Iterable[ChainEvent]) -> None:
        """This job's new events, from the node's chain watch (a gap marks the log stale)."""
        try:
            self.log.apply(events)
        except LogGap as exc:
            log.info("%s; reading the job's events again", exc)
            self._stale = True
            return
        for ev in events:
            self._cursor = max(self._cursor, ev.block_number)

    async def _reload(self) -> None:
        """The job's whole history, checked against the contract's running hash."""
        events = await self._call(self._chain.verify_log, self._job_id, self._from_block)
        fresh = JobLog(self._job_id)
        fresh.apply(events)
        self.log = fresh
        self._cursor = max((ev.block_number for ev in events), default=self._from_block)
        self._stale = False

    async def _catch_up(self) -> None:
        """The job's events since the last one folded (re-reading its block is harmless)."""
        poll = functools.partial(self._chain.poll_events, self._cursor, job_id=self._job_id)
        events, _next = await self._call(poll)
        self.feed(events)

    async def sync(self) -> JobState:
        rec = await self._call(self._chain.get_job, self._job_id)
        if rec is None:
            raise UnknownJob(f"the chain holds no job 0x{self._job_id.hex()}")
        if not self._stale and rec.log_seq > self.log.seq:
            await self._catch_up()
        if self._stale:
            try:
                await self._reload()
            except ChainError as exc:  # e.g. an endpoint whose logs lag its state
                raise LedgerUnavailable(f"the job's events do not add up yet: {exc}") from None
        return JobState(record=rec, log=self.log, now=time.time())

    # -- writes -------------------------------------------------------------------------------

    async def join(self, mask_key: bytes = bytes(32)) -> None:
        proof = merkle_proof(self._allow, self.address) if self._allow else []
        await self._call(self._chain.join_job, self._job_id, proof, None, mask_key)

    async def deal(self, r: int, blob: bytes) -> None:
        await self._call(self._chain.deal, self._job_id, r, blob)

    async def leave(self) -> None:
        await self._call(self._chain.leave_job, self._job_id)

    async def commit(
        self, r: int, update_hash: bytes, samples: int, ballot: Ballot | None = None
    ) -> None:
        if ballot is None:
            await self._call(self._chain.commit_update, self._job_id, r, update_hash, samples)
            return
        await self._call(
            self._chain.commit_and_vote,
            self._job_id,
            r,
            update_hash,
            samples,
            ballot.model_hash,
            ballot.mask,
            ballot.shards_hash,
        )

    async def vote(self, ballot: Ballot) -> None:
        await self._call(
            self._chain.vote,
            self._job_id,
            ballot.round,
            ballot.model_hash,
            ballot.mask,
            ballot.shards_hash,
        )

    async def settle(self) -> None:
        await self._call(self._chain.settle, self._job_id)

    async def eject(self, member: str) -> None:
        await self._call(self._chain.eject, self._job_id, member)

    async def eject_withholder(self, member: str, final: Ballot) -> None:
        await self._call(
            self._chain.eject_withholder, self._job_id, final.round, member, final.vote
        )

    async def slash_dissenter(self, member: str, theirs: Ballot, final: Ballot) -> None:
        await self._call(
            self._chain.slash_dissenter,
            self._job_id,
            final.round,
            member,
            theirs.vote,
            final.vote,
        )

    async def slash_shard_lie(
        self, lie: ShardLie, final: Ballot, shard_hashes: Sequence[bytes]
    ) -> None:
        await self._call(
            self._chain.slash_shard_lie,
            self._job_id,
            lie.round,
            lie.shard,
            lie.hash,
            lie.sig,
            final.vote,
            list(shard_hashes),
        )

    async def report_equivocation(
        self, r: int, first: tuple[bytes, bytes], second: tuple[bytes, bytes]
    ) -> None:
        await self._call(
            self._chain.report_equivocation, self._job_id, r, first[0], first[1], *second
        )

    def sign_update(self, r: int, update_hash: bytes) -> bytes:
        return self._chain.sign_update(self._job_id, r, update_hash)

    def sign_shard(self, r: int, shard: int, reduced_hash: bytes, mask: bytes) -> bytes:
        return self._chain.sign_shard(self._job_id, r, shard, reduced_hash, mask)
