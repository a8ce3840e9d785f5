"""Which jobs this node takes part in: the operator's policy from config ``[jobs]``, and the
admission rules a join must pass, said once for auto-join, ``gfl job join`` and the queue."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gfl.fl.spec import JobSpec

if TYPE_CHECKING:
    from collections.abc import Collection

    from gfl.chain.records import JobRecord, MemberRecord

_ENDED = {2: "finished", 3: "cancelled", 4: "expired"}
_GONE = {2: "left", 3: "was ejected from", 4: "was slashed in"}


@dataclass(frozen=True)
class JoinPolicy:
    """``auto_join``: join every verified job whose dataset we have; ``allow_owners``: or
    only jobs of these owners; ``max_concurrent``: jobs run at once (the rest wait queued);
    ``max_epsilon``: the most ε of differential privacy this node spends on one job
    (config ``[privacy]``; a job without ``[privacy]`` spends without limit)."""

    auto_join: bool
    allow_owners: frozenset[str]
    max_concurrent: int
    max_epsilon: float = math.inf

    @classmethod
    def from_config(
        cls,
        auto_join: bool,
        allow_owners: list[str],
        max_concurrent: int,
        max_epsilon: float = math.inf,
    ) -> JoinPolicy:
        owners = frozenset(a.lower() for a in allow_owners)
        return cls(auto_join, owners, max(1, max_concurrent), max_epsilon)

    def refusal(self, spec: JobSpec, owner: str, me: str, datasets: Collection[str]) -> str | None:
        """Why this node (address ``me``) cannot take part in ``owner``'s job, from what it
        knows without the chain; None when it can. The node's own jobs pass allow_owners."""
        if spec.dataset not in datasets:
            return f"this node has no dataset {spec.dataset!r} in [data]"
        mine = owner.lower() == me.lower()
        if not mine and self.allow_owners and owner.lower() not in self.allow_owners:
            return f"the job's owner {owner} is not in [jobs] allow_owners"
        if spec.allow_list and me.lower() not in spec.allow_list:
            return f"this node's address {me} is not on the job's allow-list ([admission] allow)"
        epsilon = spec.privacy.get("epsilon", math.inf)
        if epsilon > self.max_epsilon:
            budget = f"ε = {epsilon:g}" if spec.privacy else "no [privacy] table: ε unbounded"
            return (
                f"the job's privacy budget ({budget}) exceeds this node's ceiling "
                f"([privacy] max_epsilon = {self.max_epsilon:g})"
            )
        return None

    def decide(
        self, spec: JobSpec, owner: str, me: str, datasets: Collection[str]
    ) -> tuple[bool, str]:
        """(join?, why) for a verified job heard by gossip: auto-join's choice."""
        why = self.refusal(spec, owner, me, datasets)
        if why is not None:
            return False, why
        if not self.auto_join and not self.allow_owners:
            return False, "[jobs] auto_join is off: join it by hand (gfl job join ID)"
        return True, "policy"


def ether(wei: int) -> str:
    """An amount for people: ``0.001 ETH``."""
    return f"{wei / 10**18:.6g} ETH"


def bond_refusal(bond: int, balance: int, me: str) -> str | None:
    """Why account ``me`` cannot pay a job's bond (and the gas after it); None when it can."""
    if bond and balance <= bond:
        return (
            f"joining takes a bond of {ether(bond)} and account {me} holds {ether(balance)}: "
            "fund it first (gfl chain fund, on a dev chain)"
        )
    return None


def chain_refusal(
    rec: JobRecord | None, member: MemberRecord | None, balance: int, me: str
) -> str | None:
    """Why the chain would refuse ``me`` as a member of the job now (None when it would
    not, or ``me`` is a member already): the contract's join rules, checked before paying."""
    if rec is None:
        return "the chain holds no such job"
    if int(rec.status) != 1:
        return f"the job is {_ENDED.get(int(rec.status), 'not active')} on chain"
    status = int(member.status) if member is not None else 0
    if status == 1:
        return None  # a member already: it resumes
    if status in _GONE:
        return f"{me} {_GONE[status]} the job; the registry admits an account once"
    if rec.round >= rec.params.rounds:
        return "the job's rounds are all done"
    if rec.round > rec.params.join_until:
        return (
            f"the job takes no more members (it is at round {rec.round + 1}; "
            f"joins closed after round {rec.params.join_until + 1})"
        )
    if rec.active >= rec.params.max_participants:
        return f"the job is full ({rec.params.max_participants} members)"
    return bond_refusal(rec.bond, balance, me)
