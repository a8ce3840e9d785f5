"""Outsiders with fresh funded keys and no node try to bend the record; the contract refuses.

Each test plays the attack first, straight against the registry, then shows what the
honest members still get. Every backend (see conftest.py).
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from gfl.chain import JobStatus, LeaveReason, LogChainBroken, MemberStatus, Registry
from gfl.chain.logchain import verify_log_chain
from gfl.chain.proofs import merkle_proof, merkle_root, shards_hash, spec_hash_of
from gfl.chain.records import SlashReason
from gfl.fl.rounds import NO_SHARDS, Vote

from .conftest import BOND, MODEL0, ChainEnv, h, job_params, new_job, refused


def V(model_hash: bytes, mask: bytes = b"", shards: bytes = NO_SHARDS) -> Vote:
    """A candidate (model, mask, shards hash)."""
    return Vote("", model_hash, mask, shards)


def joined(chain: ChainEnv, job_id: bytes, n: int) -> list[Registry]:
    """The owner and n - 1 fresh accounts, all members of `job_id`."""
    members = [chain.first] + [chain.node() for _ in range(n - 1)]
    for m in members:
        m.join_job(job_id)
    return members


def closed_round_0(chain: ChainEnv, n: int, **overrides: object) -> tuple[bytes, list[Registry]]:
    """A job whose round 0 holds one update from each of n members and is being voted on."""
    job_id = new_job(chain.first, **{"min_updates": n, **overrides})
    members = joined(chain, job_id, n)
    for i, m in enumerate(members):
        m.commit_update(job_id, 0, h(i + 1), 10)
    job = chain.first.get_job(job_id)
    assert (job.round, job.closed_updates, job.voting) == (1, n, True)
    return job_id, members


def test_sybil_votes_are_refused(chain):
    job_id, (a, b) = closed_round_0(chain, 2, rounds=3, vote_timeout=100)
    outsider = chain.node()
    with refused("NotMember"):
        outsider.vote(job_id, 0, h(66))  # no membership, no vote
    sybil = chain.node()
    sybil.join_job(job_id)  # a paid-up member that joined after round 0 closed
    assert sybil.member(job_id, sybil.account).join_round == 1
    with refused("NotContributor"):
        sybil.vote(job_id, 0, h(66))  # only round 0's contributors vote on it
    with refused("VoteNotOpen"):
        a.vote(job_id, 1, h(66))  # round 1 has not closed
    a.vote(job_id, 0, h(50))
    with refused("AlreadyVoted"):
        a.vote(job_id, 0, h(50))
    a.advance_time(101)
    with refused("VoteClosed"):
        b.vote(job_id, 0, h(50))  # after the deadline
    tx = outsider.settle(job_id)
    events, _ = a.poll_events(tx.block_number, tx.block_number, job_id=job_id)
    assert [e.name for e in events] == ["RoundVoid"], "one vote of two is no majority"
    assert events[0].args["round"] == 0


def test_joins_the_admission_rule_forbids(chain):
    owner = chain.first
    listed, stranger = chain.node(), chain.node()
    allowed = [owner.account, listed.account]
    job_id = new_job(owner, allow_root=merkle_root(allowed), bond=0)
    with refused("NotAllowed"):
        stranger.join_job(job_id)
    with refused("NotAllowed"):  # someone else's proof proves nothing about the sender
        stranger.join_job(job_id, merkle_proof(allowed, listed.account))
    listed.join_job(job_id, merkle_proof(allowed, listed.account))
    with refused("AlreadyJoined"):
        listed.join_job(job_id, merkle_proof(allowed, listed.account))

    open_job = new_job(owner, bond=BOND, max_participants=2)
    for value in (0, BOND - 1, BOND + 1):
        with refused("WrongBond"):
            stranger.join_job(open_job, value=value)
    owner.join_job(open_job)
    stranger.join_job(open_job)
    assert owner.balance(owner.registry_address) >= 2 * BOND
    with refused("JobFull"):
        chain.node().join_job(open_job)

    late = new_job(owner, join_until=0, min_updates=1, max_participants=3)
    owner.join_job(late)
    owner.commit_update(late, 0, h(1), 1)  # closes round 0: the job collects round 1
    with refused("JoinClosed"):
        chain.node().join_job(late)


def test_a_front_run_registration_gets_another_id(chain):
    owner, attacker = chain.first, chain.node()
    salt, spec_hash = os.urandom(32), spec_hash_of(b'{"job": "mine"}')
    params = job_params(owner)
    expected = owner.job_id_for(owner.account, salt, spec_hash)
    # the attacker copies the registration from the mempool and gets in first
    copied, _ = attacker.register_job(salt, spec_hash, MODEL0, params)
    job_id, _ = owner.register_job(salt, spec_hash, MODEL0, params)
    assert job_id == expected != copied
    assert owner.get_job(job_id).owner == owner.account
    assert owner.get_job(copied).owner == attacker.account
    with refused("JobExists"):
        owner.register_job(salt, spec_hash, MODEL0, params)


def test_a_copied_hash_is_accepted_but_samples_are_bounded(chain):
    job_id = new_job(chain.first, max_samples=1000)
    honest, copier = joined(chain, job_id, 2)
    honest.commit_update(job_id, 0, h(1), 600)
    for samples in (0, 1001):
        with refused("InvalidSamples"):
            copier.commit_update(job_id, 0, h(1), samples)
    with refused("ZeroHash"):
        copier.commit_update(job_id, 0, bytes(32), 5)
    # Binding a hash to its author is the nodes' job (the frame header names the author):
    # the chain records the copy under the copier's name, at its own position.
    tx = copier.commit_update(job_id, 0, h(1), 1000)
    events, _ = honest.poll_events(tx.block_number, tx.block_number, job_id=job_id)
    update = events[0]
    assert update.name == "UpdateCommitted"
    assert (update.args["author"], update.args["position"]) == (copier.account, 1)


def test_a_dissenter_is_slashed(chain):
    # Two members who disagree decide nothing: neither can force its model.
    job_id, (a, b) = closed_round_0(chain, 2, vote_timeout=100)
    a.vote(job_id, 0, h(50))
    b.vote(job_id, 0, h(51))
    a.advance_time(101)
    a.settle(job_id)
    with refused("BadEvidence"):  # nothing finalized, nothing to dissent from
        a.slash_dissenter(job_id, 0, b.account, V(h(51), b""), V(h(50), b""))

    # Three members: two agree and finalize, the third's other model from the same
    # updates is provably wrong arithmetic.
    job_id, (a, b, c) = closed_round_0(chain, 3)
    a.vote(job_id, 0, h(50))
    b.vote(job_id, 0, h(50))  # 2 of 3: finalized
    c.vote(job_id, 0, h(51))
    assert a.final_key(job_id, 0) is not None, "dissent keeps the final key as evidence"
    reporter = chain.node()
    with refused("BadEvidence"):  # the vote must be the member's
        reporter.slash_dissenter(job_id, 0, c.account, V(h(52), b""), V(h(50), b""))
    with refused("BadEvidence"):  # the final model must be the round's
        reporter.slash_dissenter(job_id, 0, c.account, V(h(51), b""), V(h(52), b""))
    tx = reporter.slash_dissenter(job_id, 0, c.account, V(h(51), b""), V(h(50), b""))
    events, _ = a.poll_events(tx.block_number, tx.block_number, job_id=job_id)
    assert [e.name for e in events] == ["Slashed", "Left"]
    assert events[0].args["reporter"] == reporter.account and events[0].args["amount"] == BOND
    assert events[1].args["reason"] == LeaveReason.SLASHED
    assert a.member(job_id, c.account).status is MemberStatus.SLASHED
    with refused("NothingToSlash"):
        reporter.slash_dissenter(job_id, 0, c.account, V(h(51), b""), V(h(50), b""))


def test_a_vote_with_another_mask_is_not_punished(chain):
    from gfl.fl.rounds import mask_bytes

    job_id, (a, b, c) = closed_round_0(chain, 3)
    a.vote(job_id, 0, h(50))
    b.vote(job_id, 0, h(50))
    c.vote(job_id, 0, h(51), mask_bytes([0], 3))  # "a's update was unavailable to me"
    with refused("BadEvidence"):
        a.slash_dissenter(
            job_id, 0, c.account, V(h(51), mask_bytes([0], 3)), V(h(50), mask_bytes([0], 3))
        )


SHARDS = [h(70), h(71), h(72)]  # a sharded round's reduced shards, in shard order


def sharded_round_0(chain: ChainEnv) -> tuple[bytes, list[Registry]]:
    """Round 0 of three members, finalized by a and b on model h(50) from SHARDS; c (who
    aggregates shards too) voted the same."""
    job_id, members = closed_round_0(chain, 3)
    for m in members:
        m.vote(job_id, 0, h(50), b"", shards_hash(SHARDS))
    assert members[0].final_key(job_id, 0) is not None, "a sharded final key is evidence"
    return job_id, members


def test_a_lying_shard_aggregator_is_slashed(chain):
    from gfl.fl.rounds import mask_bytes

    job_id, (a, _b, c) = sharded_round_0(chain)
    final = V(h(50), b"", shards_hash(SHARDS))
    lie = c.sign_shard(job_id, 0, 1, h(99), b"")  # c states shard 1 is h(99): it is h(71)
    reporter = chain.node()  # a fresh outsider may report
    with refused("BadEvidence"):  # an honest statement is no evidence
        reporter.slash_shard_lie(
            job_id, 0, 1, h(71), c.sign_shard(job_id, 0, 1, h(71), b""), final, SHARDS
        )
    with refused("BadEvidence"):  # the shards must be the finalized ones
        reporter.slash_shard_lie(job_id, 0, 1, h(99), lie, final, [h(70), h(98), h(72)])
    with refused("BadEvidence"):  # ... and so must the model
        reporter.slash_shard_lie(job_id, 0, 1, h(99), lie, V(h(51), b"", final.shards_hash), SHARDS)
    with refused("BadEvidence"):  # no shard 3
        reporter.slash_shard_lie(job_id, 0, 3, h(99), lie, final, SHARDS)
    with refused("NothingToSlash"):  # over another hash the signature names a stranger
        reporter.slash_shard_lie(job_id, 0, 1, h(98), lie, final, SHARDS)
    with refused("BadEvidence"):  # a malformed signature
        reporter.slash_shard_lie(job_id, 0, 1, h(99), b"\x01" * 64 + b"\x05", final, SHARDS)
    # over another mask, a shard is another sum: "I could not use a's piece" is no lie
    other = mask_bytes([0], 3)
    honest_elsewhere = c.sign_shard(job_id, 0, 1, h(99), other)
    with refused("BadEvidence"):
        reporter.slash_shard_lie(
            job_id, 0, 1, h(99), honest_elsewhere, V(h(50), other, final.shards_hash), SHARDS
        )
    # an outsider's own false statement slashes no one: it has no bond here
    with refused("NothingToSlash"):
        reporter.slash_shard_lie(
            job_id, 0, 1, h(99), reporter.sign_shard(job_id, 0, 1, h(99), b""), final, SHARDS
        )
    before = reporter.balance()
    tx = reporter.slash_shard_lie(job_id, 0, 1, h(99), lie, final, SHARDS)
    assert reporter.balance() - before > BOND - 10**16  # the bond, less the gas
    events, _ = reporter.poll_events(tx.block_number, tx.block_number, job_id=job_id)
    assert [e.name for e in events] == ["Slashed", "Left"]
    assert events[0].args["member"] == c.account
    assert events[0].args["reason"] == SlashReason.SHARD_LIE and events[0].args["round"] == 0
    assert a.member(job_id, c.account).status is MemberStatus.SLASHED
    with refused("NothingToSlash"):
        reporter.slash_shard_lie(job_id, 0, 1, h(99), lie, final, SHARDS)


def test_a_shard_statement_proves_nothing_against_an_all_to_all_round(chain):
    job_id, (a, b, c) = closed_round_0(chain, 3)
    a.vote(job_id, 0, h(50))
    b.vote(job_id, 0, h(50))  # finalized, no shards named, no dissent: no key kept
    assert a.final_key(job_id, 0) is None
    lie = c.sign_shard(job_id, 0, 0, h(99), b"")
    with refused("BadEvidence"):
        a.slash_shard_lie(job_id, 0, 0, h(99), lie, V(h(50)), [h(70)])


def test_a_vote_naming_other_shards_is_dissent(chain):
    """The same model from other reduced shards: one of the two shard sets is wrong (the
    arithmetic is deterministic), and the majority's is the round's."""
    job_id, (a, b, c) = closed_round_0(chain, 3)
    final = V(h(50), b"", shards_hash(SHARDS))
    theirs = V(h(50), b"", shards_hash([h(70), h(99), h(72)]))
    a.vote(job_id, 0, *final.candidate)
    b.vote(job_id, 0, *final.candidate)
    c.vote(job_id, 0, *theirs.candidate)
    with refused("BadEvidence"):
        a.slash_dissenter(job_id, 0, c.account, final, final)
    a.slash_dissenter(job_id, 0, c.account, theirs, final)
    assert a.member(job_id, c.account).status is MemberStatus.SLASHED


def test_an_equivocation_report_pays_the_reporter(chain):
    bond = 10**18
    job_id = new_job(chain.first, bond=bond)
    cheat = chain.node()
    cheat.join_job(job_id)
    sig_a = cheat.sign_update(job_id, 0, h(1))
    sig_b = cheat.sign_update(job_id, 0, h(2))
    reporter = chain.node()
    with refused("BadEvidence"):
        reporter.report_equivocation(job_id, 0, h(1), sig_a, h(1), sig_a)
    other = reporter.sign_update(job_id, 0, h(2))
    with refused("BadEvidence"):  # two accounts' statements prove nothing
        reporter.report_equivocation(job_id, 0, h(1), sig_a, h(2), other)
    before = reporter.balance()
    tx = reporter.report_equivocation(job_id, 0, h(1), sig_a, h(2), sig_b)
    assert reporter.balance() - before > bond - 10**16  # the bond, less the gas
    events, _ = reporter.poll_events(tx.block_number, tx.block_number, job_id=job_id)
    assert [e.name for e in events] == ["Slashed", "Left"]
    assert events[0].args["member"] == cheat.account
    with refused("NotMember"):
        cheat.commit_update(job_id, 0, h(1), 1)
    with refused("NothingToSlash"):
        reporter.report_equivocation(job_id, 0, h(1), sig_a, h(2), sig_b)


def test_a_withholder_is_ejected(chain):
    from gfl.fl.rounds import mask_bytes

    job_id, (a, b, c) = closed_round_0(chain, 3, rounds=3, min_updates=2)
    mask = mask_bytes([2], 3)  # c's update (position 2) could not be fetched
    a.commit_and_vote(job_id, 1, h(1), 10, h(50), mask)
    b.commit_and_vote(job_id, 1, h(2), 10, h(50), mask)  # 2 of 3: finalized
    outsider = chain.node()
    with refused("BadEvidence"):  # a's update was not excluded
        outsider.eject_withholder(job_id, 0, a.account, V(h(50), mask))
    with refused("BadEvidence"):  # not the finalized mask
        outsider.eject_withholder(job_id, 0, c.account, V(h(50), mask_bytes([1, 2], 3)))
    tx = outsider.eject_withholder(job_id, 0, c.account, V(h(50), mask))
    events, _ = a.poll_events(tx.block_number, tx.block_number, job_id=job_id)
    assert [e.name for e in events] == ["Left", "RoundClosed"], "round 1 stops waiting for c"
    assert events[0].args["reason"] == LeaveReason.WITHHELD
    record = a.member(job_id, c.account)
    assert record.status is MemberStatus.EJECTED and not record.withdrawn
    with refused("NotMember"):
        c.commit_update(job_id, 2, h(3), 10)


def test_missed_rounds_ejection_makes_the_round_stop_waiting(chain):
    job_id = new_job(chain.first, rounds=3, min_updates=2, max_missed=1, round_timeout=100)
    a, b, idle = joined(chain, job_id, 3)
    a.commit_update(job_id, 0, h(1), 1)
    b.commit_update(job_id, 0, h(2), 1)
    outsider = chain.node()
    with refused("NotEjectable"):
        outsider.eject(job_id, idle.account)  # round 0 is still open to it
    a.advance_time(101)  # round 0 closes by its timeout without idle
    a.commit_and_vote(job_id, 1, h(1), 1, h(50))
    b.commit_and_vote(job_id, 1, h(2), 1, h(50))
    job = a.get_job(job_id)
    assert (job.round, job.updates, job.eligible) == (1, 2, 3), "round 1 waits for idle"
    with refused("NotEjectable"):
        outsider.eject(job_id, a.account)
    tx = outsider.eject(job_id, idle.account)
    events, _ = a.poll_events(tx.block_number, tx.block_number, job_id=job_id)
    assert [e.name for e in events] == ["Left", "RoundClosed"]
    assert events[0].args["reason"] == LeaveReason.MISSED_ROUNDS
    assert events[1].args["closedAt"] < job.opens_at + 100, "closed at once, not by timeout"


def test_the_deadline_and_expire(chain):
    owner = chain.first
    deadline = owner.chain_time() + 500
    job_id = new_job(owner, deadline=deadline, vote_timeout=60)
    (member,) = joined(chain, job_id, 1)
    outsider = chain.node()
    with refused("DeadlineNotReached"):
        outsider.expire_job(job_id)
    owner.advance_time(501)
    with refused("JobNotActive"):
        member.commit_update(job_id, 0, h(1), 1)
    assert owner.get_job(job_id).status is JobStatus.EXPIRED
    tx = outsider.expire_job(job_id)
    events, _ = owner.poll_events(tx.block_number, tx.block_number, job_id=job_id)
    assert [(e.name, e.args["at"]) for e in events] == [("JobExpired", deadline)]
    with refused("NotWithdrawable"):  # the evidence window runs a vote timeout longer
        member.withdraw(job_id)
    owner.advance_time(61)
    before = owner.balance(owner.registry_address)
    member.withdraw(job_id)
    assert before - owner.balance(owner.registry_address) == BOND
    with refused("NothingToWithdraw"):
        member.withdraw(job_id)
    with refused("NothingToWithdraw"):
        outsider.withdraw(job_id)


def test_votes_after_cancel_on_a_closed_round(chain):
    job_id, (a, b, c) = closed_round_0(chain, 3, rounds=3, vote_timeout=100)
    with refused("NotOwner"):
        b.cancel_job(job_id)
    a.cancel_job(job_id)
    with refused("JobNotActive"):
        b.commit_update(job_id, 1, h(2), 1)
    a.vote(job_id, 0, h(50))
    tx = b.vote(job_id, 0, h(50))  # round 0 closed before the cancel: its vote goes on
    events, _ = a.poll_events(tx.block_number, tx.block_number, job_id=job_id)
    assert [e.name for e in events] == ["Voted", "RoundFinalized"]
    job = a.get_job(job_id)
    assert job.status is JobStatus.CANCELLED and job.round == 1 and not job.voting
    a.advance_time(101)
    with refused("VoteClosed"):
        c.vote(job_id, 0, h(50))


def test_the_running_hash_detects_a_dropped_or_altered_event(chain):
    start = chain.first.block_number()
    job_id, (a, b) = closed_round_0(chain, 2, rounds=2)
    a.commit_and_vote(job_id, 1, h(1), 1, h(50))
    b.commit_and_vote(job_id, 1, h(2), 1, h(50))
    events = a.verify_log(job_id, start)  # every event, checked against logHead
    seq, head = a.log_head(job_id)
    assert [e.seq for e in events] == list(range(1, seq + 1))
    assert a.get_job(job_id).log_hash == head
    dropped = events[:5] + events[6:]
    with pytest.raises(LogChainBroken, match="event 6 is missing"):
        verify_log_chain(dropped, seq, head)
    with pytest.raises(LogChainBroken, match="read 11 events"):
        verify_log_chain(events[:-1], seq, head)
    forged = list(events)
    i = next(k for k, e in enumerate(events) if e.name == "UpdateCommitted")
    forged[i] = dataclasses.replace(events[i], args=dict(events[i].args, updateHash=h(99)))
    with pytest.raises(LogChainBroken, match="altered"):
        verify_log_chain(forged, seq, head)
