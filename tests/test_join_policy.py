"""Which verified jobs a node joins: its [data] and [jobs] policy (no network needed)."""

from __future__ import annotations

from gfl.fl.spec import JobSpec
from gfl.scheduler.policy import JoinPolicy

OWNER = "0x1111111111111111111111111111111111111111"
OTHER = "0x2222222222222222222222222222222222222222"
DATA = ["digits"]


def _policy(auto_join: bool = False, allow_owners=(), max_concurrent: int = 2) -> JoinPolicy:
    return JoinPolicy.from_config(auto_join, list(allow_owners), max_concurrent)


def _spec(dataset: str = "digits") -> JobSpec:
    return JobSpec.builder("p").model("mlp", in_features=64).data(dataset).rounds(1).build()


def test_auto_join_needs_the_dataset():
    policy = _policy(auto_join=True)
    assert policy.decide(_spec(), OWNER, DATA, running=0)[0]
    joined, why = policy.decide(_spec("mnist"), OWNER, DATA, running=0)
    assert not joined and "mnist" in why


def test_without_auto_join_or_allow_list_nothing_is_joined():
    joined, why = _policy(auto_join=False).decide(_spec(), OWNER, DATA, running=0)
    assert not joined and "auto_join" in why


def test_the_allow_list_admits_only_its_owners():
    policy = _policy(allow_owners=[OWNER.upper().replace("0X", "0x")])
    assert policy.decide(_spec(), OWNER, DATA, running=0)[0]
    joined, why = policy.decide(_spec(), OTHER, DATA, running=0)
    assert not joined and "allow_owners" in why


def test_max_concurrent_caps_running_jobs():
    joined, why = _policy(auto_join=True, max_concurrent=1).decide(_spec(), OWNER, DATA, running=1)
    assert not joined and "max_concurrent" in why
