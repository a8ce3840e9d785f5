"""This node's membership of jobs on chain: whether it may join one, and leaving one.

A join by hand, auto-join and the queue's start of a job ask the same questions, in order:
the operator's policy and the job's allow-list (`JoinPolicy.refusal`), whether this node
could train the job on its data (`check_runnable`), then the chain's rules (`chain_refusal`:
the job is active and open, this account is not a former member, it can pay the bond).
The registry lets a member leave only before it commits to the collecting round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from gfl.errors import GflError
from gfl.scheduler.checks import check_runnable
from gfl.scheduler.policy import JoinPolicy, chain_refusal

if TYPE_CHECKING:
    from gfl.chain.records import JobRecord, MemberRecord
    from gfl.chain.registry import Registry
    from gfl.fl.spec import JobSpec
    from gfl.scheduler.sources import DataSources

ChainCall = Callable[..., Awaitable[Any]]
ChainView = tuple["JobRecord | None", "MemberRecord | None", int]

ACTIVE = 1  # JobStatus.ACTIVE and MemberStatus.ACTIVE on chain


class Membership:
    """Join and leave checks for the node with account ``address``."""

    def __init__(
        self,
        registry: Registry,
        chain_call: ChainCall,
        sources: DataSources,
        policy: JoinPolicy,
        address: str,
    ) -> None:
        self._chain = registry
        self._call = chain_call
        self._sources = sources
        self._policy = policy
        self.address = address

    async def chain_view(self, job_id: bytes) -> ChainView:
        """The job's record, this node's member slot and its balance (when the job has a
        bond), as the chain holds them now."""
        rec = await self._call(self._chain.get_job, job_id)
        if rec is None:
            return None, None, 0
        member = await self._call(self._chain.member, job_id, self.address)
        balance = await self._call(self._chain.balance) if rec.bond else 0
        return rec, member, balance

    async def fit_refusal(self, spec: JobSpec) -> str | None:
        """Why this node could not train ``spec`` on its data (None when it could)."""
        try:
            data = await self._sources.load(spec.dataset)
            await trio.to_thread.run_sync(check_runnable, spec, data.train)
        except GflError as exc:
            return str(exc)
        return None

    async def join_refusal(self, spec: JobSpec, owner: str, job_id: bytes) -> str | None:
        """Why this node may not join the job now (None when it may), every check in turn."""
        why = self._policy.refusal(spec, owner, self.address, self._sources.names())
        why = why or await self.fit_refusal(spec)
        if why is not None:
            return why
        try:
            return chain_refusal(*await self.chain_view(job_id), self.address)
        except GflError as exc:
            return f"the chain cannot be read now ({exc})"

    async def leave_refusal(self, job_id: bytes) -> str | None:
        """Why the registry would refuse this node's leave now (None when it would not)."""
        try:
            rec, member, _ = await self.chain_view(job_id)
        except GflError as exc:
            return f"the chain cannot be read now ({exc})"
        if rec is None or member is None or int(rec.status) != ACTIVE:
            return None
        if int(member.status) == ACTIVE and member.last_round == rec.round:
            return (
                f"this node committed an update to round {rec.round + 1}, the round collecting "
                "now: the registry lets a member leave only before it commits; try again once "
                "the round closed"
            )
        return None

    async def leave(self, job_id: bytes) -> bool:
        """Leave the job's member set on chain; False when this node was not a member."""
        member = await self._call(self._chain.member, job_id, self.address)
        if int(member.status) != ACTIVE:
            return False
        await self._call(self._chain.leave_job, job_id)
        return True
