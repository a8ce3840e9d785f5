"""The JobRegistry's rules through `Registry`, on every backend (see conftest.py)."""

from __future__ import annotations

import os

import pytest

from gfl.chain import (
    AnnouncementRejected,
    ChainError,
    InvalidJobParams,
    JobParams,
    JobStatus,
    MemberStatus,
    Registry,
)
from gfl.chain.proofs import candidate_key, spec_hash_of
from gfl.fl.rounds import NO_SHARDS, mask_bytes

from .conftest import BOND, MODEL0, ChainEnv, h, job_params, new_job, refused


def joined(chain: ChainEnv, job_id: bytes, n: int) -> list[Registry]:
    members = [chain.first] + [chain.node() for _ in range(n - 1)]
    for m in members:
        m.join_job(job_id)
    return members


def names(registry: Registry, tx) -> list[str]:
    events, _ = registry.poll_events(tx.block_number, tx.block_number)
    return [e.name for e in events]


def test_register_and_read_back(chain):
    owner = chain.first
    salt, spec = os.urandom(32), b'{"job": 1}'
    params = job_params(owner, rounds=3, min_updates=2, round_timeout=90, max_samples=500)
    job_id, tx = owner.register_job(salt, spec_hash_of(spec), MODEL0, params)
    assert (
        job_id == owner._contract.functions.jobIdFor(owner.account, salt, spec_hash_of(spec)).call()
    )
    job = owner.get_job(job_id)
    assert (job.owner, job.spec_hash, job.model0_hash, job.params, job.bond) == (
        owner.account,
        spec_hash_of(spec),
        MODEL0,
        params,
        BOND,
    )
    assert job.status is JobStatus.ACTIVE
    assert (job.round, job.updates, job.eligible, job.voting, job.closed_at) == (0, 0, 0, False, 0)
    assert job.opens_at == owner._w3.eth.get_block(tx.block_number)["timestamp"]
    assert (job.log_seq, len(job.log_hash)) == (1, 24)
    assert owner.get_job(os.urandom(32)) is None
    events, _ = owner.poll_events(tx.block_number, tx.block_number)
    assert events[0].name == "JobRegistered" and events[0].seq == 1
    assert events[0].args["params"]["roundTimeout"] == 90 and events[0].args["salt"] == salt


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rounds", 0),
        ("rounds", 1_000_001),
        ("minUpdates", 0),
        ("minUpdates", 9),  # > maxParticipants
        ("maxParticipants", 0),
        ("maxParticipants", 2**24),
        ("roundTimeout", 0),
        ("roundTimeout", 7 * 86_400 + 1),
        ("voteTimeout", 0),
        ("maxSamples", 0),
        ("deadline", 0),
        ("deadline", 400 * 86_400),  # more than a year ahead
        ("maxMissed", 0),
        ("bond", 0),  # an open job needs a bond
    ],
)
def test_register_checks_every_bound(chain, field, value):
    owner = chain.first
    fields = list(job_params(owner).as_tuple())
    order = [
        "rounds",
        "minUpdates",
        "maxParticipants",
        "roundTimeout",
        "voteTimeout",
        "joinUntil",
        "maxSamples",
        "deadline",
        "maxMissed",
        "bond",
        "allowRoot",
    ]
    fields[order.index(field)] = value + (owner.chain_time() if field == "deadline" else 0)
    with refused("InvalidParameter") as info:
        owner._write("register", os.urandom(32), h(1), MODEL0, tuple(fields), what="registering")
    assert info.value.args_dict["field"] == field


def test_register_refuses_zero_hashes(chain):
    owner = chain.first
    params = job_params(owner)
    for spec_hash, model0, field in (
        (bytes(32), MODEL0, "specHash"),
        (h(1), bytes(32), "model0Hash"),
    ):
        with refused("InvalidParameter") as info:
            owner.register_job(os.urandom(32), spec_hash, model0, params)
        assert info.value.args_dict["field"] == field


def test_job_params_check_their_bounds_offline():
    good = {
        "rounds": 1,
        "min_updates": 1,
        "max_participants": 1,
        "round_timeout": 1,
        "vote_timeout": 1,
        "deadline": 2**40,
        "bond": 1,
    }
    JobParams(**good)
    for key, value in [
        ("rounds", 0),
        ("min_updates", 2),
        ("round_timeout", 10**6),
        ("max_missed", 0),
        ("bond", 0),
        ("rounds", True),
    ]:
        with pytest.raises(InvalidJobParams, match=key if key != "bond" else "bond"):
            JobParams(**(good | {key: value}))


def test_joining_before_and_after_the_first_update(chain):
    job_id = new_job(chain.first, min_updates=2, rounds=3)
    a, b = joined(chain, job_id, 2)
    assert [a.member(job_id, m.account).join_round for m in (a, b)] == [0, 0]
    a.commit_update(job_id, 0, h(1), 1)
    c = chain.node()
    c.join_job(job_id)  # round 0 has an update: c counts from round 1
    record = a.member(job_id, c.account)
    assert (record.status, record.join_round, record.last_round) == (MemberStatus.ACTIVE, 1, None)
    job = a.get_job(job_id)
    assert (job.eligible, job.pending, job.active, job.joined) == (2, 1, 3, 3)
    b.commit_update(job_id, 0, h(2), 1)  # every eligible member committed: closes
    job = a.get_job(job_id)
    assert (job.round, job.eligible, job.pending) == (1, 3, 0)
    c.commit_update(job_id, 1, h(3), 1)  # a pre-open update: round 0's vote is on
    assert a.member(job_id, c.account).position_in(1) == 0


def test_a_mid_round_joiner_may_contribute_so_an_early_update_cannot_stall_the_round(chain):
    """One fast member commits before anyone else joined: the others join "mid-round", and
    with minUpdates 2 the round could never close if they could not contribute to it."""
    job_id = new_job(chain.first, min_updates=2, rounds=2)
    (a,) = joined(chain, job_id, 1)
    a.commit_update(job_id, 0, h(1), 1)
    late = chain.node()
    late.join_job(job_id)
    assert a.get_job(job_id).eligible == 1  # the round does not wait for it...
    late.commit_update(job_id, 0, h(2), 1)  # ...but it may contribute
    job = a.get_job(job_id)
    assert job.round == 1 and job.closed_updates == 2


def test_leave(chain):
    job_id = new_job(chain.first, min_updates=1)
    a, b = joined(chain, job_id, 2)
    a.commit_update(job_id, 0, h(1), 1)
    with refused("AlreadyCommitted"):
        a.leave_job(job_id)
    tx = b.leave_job(job_id)  # the round stops waiting for b: it closes
    assert names(a, tx) == ["Left", "RoundClosed"]
    assert a.member(job_id, b.account).status is MemberStatus.LEFT
    with refused("NotMember"):
        b.leave_job(job_id)
    with refused("AlreadyJoined"):
        b.join_job(job_id)


def test_updates(chain):
    job_id = new_job(chain.first, min_updates=2)
    a, _ = joined(chain, job_id, 2)
    with refused("WrongRound"):
        a.commit_update(job_id, 1, h(1), 1)
    with refused("RoundOutOfRange"):
        a.commit_update(job_id, 2, h(1), 1)
    with refused("UnknownJob"):
        a.commit_update(os.urandom(32), 0, h(1), 1)
    tx = a.commit_update(job_id, 0, h(1), 5)
    with refused("AlreadyCommitted"):
        a.commit_update(job_id, 0, h(2), 5)
    events, _ = a.poll_events(tx.block_number, tx.block_number)
    assert events[0].args == {
        "jobId": job_id,
        "round": 0,
        "author": a.account,
        "seq": 4,
        "updateHash": h(1),
        "samples": 5,
        "position": 0,
    }
    with pytest.raises(ChainError, match="32 bytes"):
        a.commit_update(job_id, 0, b"short", 1)
    with pytest.raises(ChainError, match="samples"):
        a.commit_update(job_id, 0, h(1), -1)


def test_a_round_closes_by_timeout_with_enough_updates(chain):
    job_id = new_job(chain.first, min_updates=2, round_timeout=100)
    a, b, c = joined(chain, job_id, 3)
    a.commit_update(job_id, 0, h(1), 1)
    a.advance_time(150)
    job = a.get_job(job_id)
    assert job.round == 0, "one update of min_updates 2 keeps the round open past its timeout"
    opens_at = job.opens_at
    b.commit_update(job_id, 0, h(2), 1)  # the second update completes the rule: closes now
    job = a.get_job(job_id)
    assert job.round == 1 and job.closed_at >= opens_at + 150
    with refused("WrongRound"):
        c.commit_update(job_id, 0, h(3), 1)

    job_id = new_job(chain.first, min_updates=2, round_timeout=100)
    a, b, c = joined(chain, job_id, 3)
    a.commit_update(job_id, 0, h(1), 1)
    b.commit_update(job_id, 0, h(2), 1)
    opens_at = a.get_job(job_id).opens_at
    a.advance_time(130)
    job = a.get_job(job_id)  # views apply the due closure
    assert (job.round, job.closed_at, job.closed_updates) == (1, opens_at + 100, 2)
    tx = c.settle(job_id)  # and anyone records it, at the time it became due
    events, _ = a.poll_events(tx.block_number, tx.block_number)
    assert [(e.name, e.args["closedAt"]) for e in events] == [("RoundClosed", opens_at + 100)]


def test_round_closed_carries_a_seed_from_the_closing_block_and_the_rounds_updates(chain):
    """seed = keccak256(abi.encode(block.prevrandao, running hash before RoundClosed)): the
    draw of a sharded round's aggregators (docs/protocol.md, section 8)."""
    from eth_abi.abi import encode as abi_encode
    from eth_utils.crypto import keccak

    from gfl.chain.logchain import GENESIS, event_hash_step

    seeds = []
    for salt in (1, 2):
        start = chain.first.block_number()  # eth-tester scans every block it is asked for
        job_id = new_job(chain.first, min_updates=2)
        a, b = joined(chain, job_id, 2)
        a.commit_update(job_id, 0, h(salt), 1)
        tx = b.commit_update(job_id, 0, h(salt + 10), 1)
        events = a.verify_log(job_id, start)
        closed = next(e for e in events if e.name == "RoundClosed")
        head = GENESIS
        for e in events[: closed.seq - 1]:
            head = event_hash_step(head, e)
        # py-evm (the embedded chain, served or not) executes with prevrandao 0; a real
        # chain's block says its value (mixHash since the merge)
        block = a._w3.eth.get_block(tx.block_number)
        randao = bytes(32) if chain.backend != "anvil" else bytes(block["mixHash"])
        expected = keccak(abi_encode(["bytes32", "uint256"], [randao, int.from_bytes(head)]))
        assert closed.args["seed"] == expected
        seeds.append(closed.args["seed"])
    assert seeds[0] != seeds[1], "other updates, another seed"


def test_votes_finalize_with_a_majority_and_open_the_next_round(chain):
    job_id = new_job(chain.first, min_updates=3, rounds=2)
    a, b, c = joined(chain, job_id, 3)
    for i, m in enumerate((a, b, c)):
        m.commit_update(job_id, 0, h(i + 1), 10)
    a.commit_and_vote(job_id, 1, h(1), 10, h(50))  # the vote rides on the next update
    job = a.get_job(job_id)
    assert (job.voting, job.top_votes, job.updates, job.opens_at) == (True, 1, 1, 0)
    assert job.top_prefix == candidate_key(h(50), b"", NO_SHARDS)[:10]
    tx = b.commit_and_vote(job_id, 1, h(2), 10, h(50))  # 2 of 3: finalized
    assert names(a, tx) == ["Voted", "RoundFinalized", "UpdateCommitted"]
    events, _ = a.poll_events(tx.block_number, tx.block_number)
    assert (
        events[1].args["key"] == candidate_key(h(50), b"", NO_SHARDS)
        and events[1].args["votes"] == 2
    )
    job = a.get_job(job_id)
    assert not job.voting and job.opens_at == events[1].args["at"]
    assert a.final_key(job_id, 0) is None, "no dissent, no mask: the event is the record"
    tx = c.commit_and_vote(job_id, 1, h(3), 10, h(50))  # a late vote still counts
    assert names(a, tx) == ["Voted", "UpdateCommitted", "RoundClosed"]
    assert a.get_job(job_id).top_votes == 0  # round 1's vote has begun
    assert a.tally(job_id, 0, candidate_key(h(50), b"", NO_SHARDS)) == 0, "round 0's tally is over"
    for m in (a, b):
        m.vote(job_id, 1, h(60))
    job = a.get_job(job_id)
    assert job.status is JobStatus.FINISHED and job.withdrawable_at > 0


def test_pre_open_updates_close_the_round_when_its_vote_is_decided(chain):
    job_id = new_job(chain.first, min_updates=2, rounds=3)
    a, b = joined(chain, job_id, 2)
    a.commit_update(job_id, 0, h(1), 1)
    b.commit_update(job_id, 0, h(2), 1)
    a.commit_and_vote(job_id, 1, h(1), 1, h(50))
    tx = b.commit_and_vote(job_id, 1, h(2), 1, h(50))
    assert names(a, tx) == ["Voted", "RoundFinalized", "UpdateCommitted", "RoundClosed"]
    job = a.get_job(job_id)
    assert (job.round, job.closed_updates, job.voting) == (2, 2, True)


def test_plurality_at_the_vote_deadline(chain):
    job_id = new_job(chain.first, min_updates=3, max_participants=3, vote_timeout=100)
    a, b, c = joined(chain, job_id, 3)
    for i, m in enumerate((a, b, c)):
        m.commit_update(job_id, 0, h(i + 1), 1)
    mask = mask_bytes([2], 3)  # c's update could not be fetched
    with pytest.raises(ChainError, match="own update excluded"):
        c.vote(job_id, 0, h(50), mask)
    with refused("InvalidMask"):
        a.vote(job_id, 0, h(50), b"\x04\x00")  # too long
    with refused("InvalidMask"):
        a.vote(job_id, 0, h(50), b"\x08")  # a bit past position 2
    with refused("InvalidMask"):
        a.vote(job_id, 0, h(50), b"\x00")  # excludes nothing: send b""
    a.vote(job_id, 0, h(50), mask)
    job = a.get_job(job_id)
    assert (job.top_votes, job.top_excluded, job.top_key) == (
        1,
        1,
        candidate_key(h(50), mask, NO_SHARDS),
    )
    a.advance_time(101)
    # 1 vote, 1 excluded: 1 * 2 > 3 - 1 is false, so the round is void
    tx = b.settle(job_id)
    assert names(a, tx) == ["RoundVoid"]

    job_id = new_job(chain.first, rounds=1, min_updates=3, max_participants=3)
    a, b, c = joined(chain, job_id, 3)
    for i, m in enumerate((a, b, c)):
        m.commit_update(job_id, 0, h(i + 1), 1)
    a.vote(job_id, 0, h(50), mask)
    b.vote(job_id, 0, h(50), mask)  # 2 * 2 > 3: a majority anyway
    assert a.get_job(job_id).status is JobStatus.FINISHED


def test_a_dissent_overtakes_and_the_second_count_holds(chain):
    job_id = new_job(chain.first, rounds=1, min_updates=5, max_participants=5, vote_timeout=100)
    ms = joined(chain, job_id, 5)
    for i, m in enumerate(ms):
        m.commit_update(job_id, 0, h(i + 1), 1)
    excl = mask_bytes([3, 4], 5)
    ms[0].vote(job_id, 0, h(50))
    ms[1].vote(job_id, 0, h(51), excl)
    ms[2].vote(job_id, 0, h(51), excl)  # h51 overtakes h50
    job = ms[0].get_job(job_id)
    assert (job.top_votes, job.second_votes, job.top_excluded, job.dissent) == (2, 1, 2, True)
    assert job.top_key == candidate_key(h(51), excl, NO_SHARDS)
    assert ms[0].tally(job_id, 0, candidate_key(h(50), b"", NO_SHARDS)) == 1
    assert ms[0].tally(job_id, 0, candidate_key(h(51), excl, NO_SHARDS)) == 2
    ms[0].advance_time(101)
    tx = ms[0].settle(job_id)  # 2 > 1 and 2 * 2 > 5 - 2: finalized by plurality
    assert names(ms[0], tx) == ["RoundFinalized", "JobFinished"]
    assert ms[0].final_key(job_id, 0) == candidate_key(h(51), excl, NO_SHARDS)[:10]


def test_cancel(chain):
    job_id = new_job(chain.first, min_updates=1)
    a, b = joined(chain, job_id, 2)
    with refused("NotOwner"):
        b.cancel_job(job_id)
    tx = a.cancel_job(job_id)
    assert names(a, tx) == ["JobCancelled"]
    assert a.get_job(job_id).status is JobStatus.CANCELLED
    with refused("JobNotActive"):
        a.cancel_job(job_id)
    with refused("JobNotActive"):
        b.commit_update(job_id, 0, h(1), 1)
    with refused("UnknownJob"):
        a.cancel_job(os.urandom(32))


def test_bonds_come_back_after_the_job_and_its_evidence_window(chain):
    job_id = new_job(chain.first, rounds=1, min_updates=2, vote_timeout=50)
    a, b = joined(chain, job_id, 2)
    a.commit_update(job_id, 0, h(1), 1)
    with refused("NotWithdrawable"):
        a.withdraw(job_id)
    b.commit_update(job_id, 0, h(2), 1)
    a.vote(job_id, 0, h(50))
    b.vote(job_id, 0, h(50))
    job = a.get_job(job_id)
    assert job.status is JobStatus.FINISHED and job.withdrawable_at == job.closed_at + 100
    with refused("NotWithdrawable"):
        a.withdraw(job_id)
    a.advance_time(101)
    tx = a.withdraw(job_id)
    assert names(a, tx) == ["Withdrawn"]
    assert a.member(job_id, a.account).withdrawn


def test_members_are_paginated(chain):
    job_id = new_job(chain.first, max_participants=5)
    ms = joined(chain, job_id, 5)
    page, total = ms[0].members(job_id, 0, 2)
    assert total == 5 and [m.account for m in page] == [ms[0].account, ms[1].account]
    page, _ = ms[0].members(job_id, 4, 10)
    assert [m.account for m in page] == [ms[4].account]
    assert ms[0].members(job_id, 5, 10) == ([], 5)
    page, _ = ms[0].members(job_id, 0, 10**9)  # the contract caps the page
    assert len(page) == 5
    assert ms[0].members(os.urandom(32), 0, 10) == ([], 0)


def test_verify_announcement_accepts_the_real_job(chain):
    owner = chain.first
    spec = b'{"dataset": "digits"}'
    job_id = new_job(owner, spec=spec)
    job = chain.node().verify_announcement(job_id, spec, owner.account.lower())
    assert job.owner == owner.account and job.status is JobStatus.ACTIVE


@pytest.mark.parametrize(
    "forgery", ["wrong spec", "wrong signer", "unknown id", "cancelled", "malformed id"]
)
def test_verify_announcement_rejects_forgeries(chain, forgery):
    owner, verifier = chain.first, chain.node()
    spec = b'{"dataset": "digits", "lr": 0.1}'
    job_id = new_job(owner, spec=spec)
    args = (job_id, spec, owner.account)
    if forgery == "wrong spec":
        args = (job_id, spec.replace(b"0.1", b"9.9"), owner.account)
        reason = "spec does not match"
    elif forgery == "wrong signer":
        args = (job_id, spec, verifier.account)
        reason = "belongs to"
    elif forgery == "unknown id":
        args = (os.urandom(32), spec, owner.account)
        reason = "holds no job"
    elif forgery == "cancelled":
        owner.cancel_job(job_id)
        reason = "cancelled"
    else:
        args = (b"\x01" * 31, spec, owner.account)
        reason = "32 bytes"
    with pytest.raises(AnnouncementRejected, match=reason):
        verifier.verify_announcement(*args)


def test_poll_events_from_a_cursor(chain, monkeypatch):
    import gfl.chain.registry as registry_module

    monkeypatch.setattr(registry_module, "LOG_CHUNK", 2)  # force several getLogs ranges
    a, b = chain.first, chain.node()
    cursor = start = a.block_number() + 1
    job_id = new_job(a, rounds=1, min_updates=2)
    other = new_job(a)
    a.join_job(job_id)
    first, cursor = a.poll_events(cursor)
    assert [e.name for e in first] == ["JobRegistered", "JobRegistered", "Joined"]
    assert first[0].args["owner"] == a.account and first[0].args["params"]["rounds"] == 1
    assert first[2].args["member"] == a.account and first[2].args["joinRound"] == 0
    again, same = a.poll_events(cursor)
    assert again == [] and same == cursor
    b.join_job(job_id)
    a.commit_update(job_id, 0, h(1), 3)
    tx = b.commit_update(job_id, 0, h(2), 4)
    rest, cursor = a.poll_events(cursor)
    assert [e.name for e in rest] == ["Joined", "UpdateCommitted", "UpdateCommitted", "RoundClosed"]
    assert rest[2].tx_hash == tx.tx_hash and rest[2].args["position"] == 1
    assert [e.seq for e in rest] == [3, 4, 5, 6]
    keys = [(e.block_number, e.log_index) for e in first + rest]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert cursor == a.block_number() + 1
    mine, _ = a.poll_events(start, job_id=other)
    assert [e.name for e in mine] == ["JobRegistered"]


def test_gas_per_participant_per_round_is_bounded(chain):
    """One commitAndVote per participant per round (the old design took ~193k: an update and
    a model commitment); bench/chain.py reports the exact figures."""
    job_id = new_job(chain.first, rounds=4, min_updates=2, max_participants=2)
    a, b = joined(chain, job_id, 2)
    a.commit_update(job_id, 0, h(1), 1)
    b.commit_update(job_id, 0, h(2), 1)
    gas = []
    for r in range(1, 4):
        gas += [m.commit_and_vote(job_id, r, h(r), 1, h(50 + r)).gas_used for m in (a, b)]
    assert max(gas) < 70_000 and sum(gas) / len(gas) < 62_000, gas
    assert a.get_job(job_id).round == 4, "every round closed by its last update"


def test_a_vote_estimated_before_it_decides_still_has_the_gas_to_decide(chain, monkeypatch):
    """Gas is estimated against the chain as it stands; another member's vote may land
    first, so that ours decides the round (and, in a sharded round, keeps its key) and
    finishes the job. The headroom on the estimate pays for that."""
    job_id = new_job(chain.first, min_updates=4, rounds=1)
    a, b, c, d = joined(chain, job_id, 4)
    for i, m in enumerate((a, b, c, d)):
        m.commit_update(job_id, 0, h(i + 1), 10)
    shards = h(77)
    a.vote(job_id, 0, h(50), b"", shards)
    web3 = c._contract.functions.vote(job_id, 0, h(50), b"", shards)
    stale = web3.estimate_gas({"from": c.account})  # the second of four votes: no decision
    b.vote(job_id, 0, h(50), b"", shards)
    eth = c._sender._w3.eth
    monkeypatch.setattr(eth, "estimate_gas", lambda tx, *args, **kw: stale)
    tx = c.vote(job_id, 0, h(50), b"", shards)  # the third: decides, keeps the key, finishes
    assert names(a, tx) == ["Voted", "RoundFinalized", "JobFinished"]
    assert tx.gas_used > stale * 5 // 4 + 10_000, "the old headroom would have run out"
    assert a.final_key(job_id, 0) is not None


def test_transitions_due_before_the_deadline_are_recorded_then_it_expires(chain):
    owner = chain.first
    deadline = owner.chain_time() + 400
    job_id = new_job(owner, min_updates=2, round_timeout=100, vote_timeout=200, deadline=deadline)
    a, b, _ = joined(chain, job_id, 3)
    a.commit_update(job_id, 0, h(1), 1)
    b.commit_update(job_id, 0, h(2), 1)
    opens_at = a.get_job(job_id).opens_at
    a.advance_time(1_000)  # round 0's timeout, its vote's deadline and the job's all passed
    tx = chain.node().expire_job(job_id)
    events, _ = a.poll_events(tx.block_number, tx.block_number)
    assert [(e.name, e.args.get("at", e.args.get("closedAt"))) for e in events] == [
        ("RoundClosed", opens_at + 100),
        ("RoundVoid", opens_at + 300),  # no votes by its deadline, before the job's
        ("JobExpired", deadline),
    ]
