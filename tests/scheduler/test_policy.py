"""Which jobs a node takes part in: its [data] and [jobs] policy, the job's allow-list, and the
registry's join rules read from real records of the embedded chain."""

from __future__ import annotations

import pytest
from support import registered_job

from gfl.fl.spec import JobSpec
from gfl.identity import NodeIdentity
from gfl.scheduler.policy import JoinPolicy, bond_refusal, chain_refusal

OWNER = "0x1111111111111111111111111111111111111111"
OTHER = "0x2222222222222222222222222222222222222222"
ME = "0x3333333333333333333333333333333333333333"
DATA = ["digits"]
BOND = 10**15


def _policy(auto_join: bool = False, allow_owners=(), max_concurrent: int = 2) -> JoinPolicy:
    return JoinPolicy.from_config(auto_join, list(allow_owners), max_concurrent)


def _spec(dataset: str = "digits", allow=(), **kw) -> JobSpec:
    spec = JobSpec.builder("p").model("mlp", in_features=64).data(dataset).rounds(2).build()
    admission = {"allow": list(allow)} if allow else {"bond": str(BOND)}
    return spec.replace(max_samples=1000, admission=admission, **kw)


def test_auto_join_needs_the_dataset():
    policy = _policy(auto_join=True)
    assert policy.decide(_spec(), OWNER, ME, DATA) == (True, "policy")
    joined, why = policy.decide(_spec("mnist"), OWNER, ME, DATA)
    assert not joined and "no dataset 'mnist'" in why


def test_without_auto_join_or_allow_owners_a_job_waits_for_a_join_by_hand():
    joined, why = _policy(auto_join=False).decide(_spec(), OWNER, ME, DATA)
    assert not joined and "auto_join is off" in why and "gfl job join" in why
    assert _policy(auto_join=False).refusal(_spec(), OWNER, ME, DATA) is None


def test_allow_owners_admits_only_its_owners_and_the_nodes_own_jobs():
    policy = _policy(allow_owners=[OWNER.upper().replace("0X", "0x")])
    assert policy.decide(_spec(), OWNER, ME, DATA)[0]
    joined, why = policy.decide(_spec(), OTHER, ME, DATA)
    assert not joined and f"owner {OTHER} is not in [jobs] allow_owners" in why
    assert policy.refusal(_spec(), ME.upper().replace("0X", "0x"), ME, DATA) is None


def test_the_jobs_allow_list_must_name_this_node():
    policy = _policy(auto_join=True)
    assert policy.refusal(_spec(allow=[ME]), OWNER, ME.upper().replace("0X", "0x"), DATA) is None
    why = policy.refusal(_spec(allow=[OTHER]), OWNER, ME, DATA)
    assert why is not None and f"{ME} is not on the job's allow-list" in why


def test_max_concurrent_queues_instead_of_refusing():
    """A busy node accepts the job: the queue starts it when a slot is free."""
    policy = _policy(auto_join=True, max_concurrent=1)
    assert policy.max_concurrent == 1
    assert policy.decide(_spec(), OWNER, ME, DATA) == (True, "policy")


@pytest.mark.parametrize(
    ("bond", "balance", "refused"),
    [(0, 0, False), (BOND, BOND + 1, False), (BOND, BOND, True), (BOND, 0, True)],
)
def test_a_bond_is_affordable_with_something_left_for_gas(bond, balance, refused):
    why = bond_refusal(bond, balance, ME)
    assert (why is not None) == refused
    if refused:
        assert "0.001 ETH" in why and ME in why and "fund it" in why


def test_the_registrys_join_rules_on_real_records(tmp_path):
    me, other = NodeIdentity.generate(), NodeIdentity.generate()
    spec = _spec(join_until=0, max_participants=1)
    owner, job_id, _ = registered_job(tmp_path, spec, b"\x07")
    mine, theirs = owner.for_identity(me), owner.for_identity(other)
    rich = 10**18

    def why(who):
        return chain_refusal(
            owner.get_job(job_id), owner.member(job_id, who.eth_address), rich, who.eth_address
        )

    assert chain_refusal(None, None, rich, me.eth_address) == "the chain holds no such job"
    assert why(me) is None
    assert "fund it" in chain_refusal(owner.get_job(job_id), None, 0, me.eth_address)
    mine.join_job(job_id)
    assert why(me) is None  # a member already: it resumes
    assert why(other) == "the job is full (1 members)"
    mine.leave_job(job_id)
    assert "left the job; the registry admits an account once" in why(me)
    owner.cancel_job(job_id)
    assert why(other) == "the job is cancelled on chain"
    theirs.close()
    mine.close()
    owner.close()
