"""The JobRegistry contract through `Registry`, on every backend (see conftest.py)."""

from __future__ import annotations

import os

import pytest

from gfl.chain import (
    AnnouncementRejected,
    ChainError,
    ContractRevert,
    JobStatus,
    Registry,
    spec_hash_of,
)

H1, H2, H3 = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32


def new_job(
    owner: Registry,
    *,
    rounds: int = 2,
    min_updates: int = 2,
    timeout: int = 600,
    spec: bytes | None = None,
) -> tuple[bytes, bytes]:
    spec = (
        spec
        if spec is not None
        else b'{"model": "mlp", "salt": "%s"}' % os.urandom(4).hex().encode()
    )
    spec_hash = spec_hash_of(spec)
    job_id = owner.make_job_id(spec_hash, os.urandom(8))
    owner.register_job(job_id, spec_hash, rounds, min_updates, timeout)
    return job_id, spec


def refused(name: str):
    return pytest.raises(ContractRevert, match=rf"\b{name}\(")


def test_register_and_read_back(chain):
    owner = chain.first
    spec = b'{"job": 1}'
    job_id, _ = new_job(owner, rounds=3, min_updates=2, timeout=90, spec=spec)
    job = owner.get_job(job_id)
    assert job is not None
    assert (job.owner, job.spec_hash, job.status) == (
        owner.account,
        spec_hash_of(spec),
        JobStatus.ACTIVE,
    )
    assert (job.rounds, job.min_updates, job.round_timeout) == (3, 2, 90)
    assert (job.current_round, job.joined_count) == (0, 0)
    r0 = owner.get_round(job_id, 0)
    assert r0.opens_at > 0 and not r0.closed and r0.closed_at is None and r0.updates == ()
    assert owner.get_round(job_id, 1).opens_at == 0  # not open yet
    assert owner.get_job(os.urandom(32)) is None


def test_register_refusals(chain):
    owner = chain.first
    job_id, spec = new_job(owner)
    with refused("JobExists"):
        chain.node().register_job(job_id, spec_hash_of(spec), 1, 1, 10)
    sh = spec_hash_of(b"x")
    for args in [
        (b"\0" * 32, sh, 1, 1, 10),
        (os.urandom(32), b"\0" * 32, 1, 1, 10),
        (os.urandom(32), sh, 0, 1, 10),
        (os.urandom(32), sh, 1, 0, 10),
        (os.urandom(32), sh, 1, 1, 0),
    ]:
        with refused("InvalidJob"):
            owner.register_job(*args)
    with pytest.raises(ChainError, match="32 bytes"):
        owner.register_job(b"short", sh, 1, 1, 10)
    with pytest.raises(ChainError, match="rounds"):
        owner.register_job(os.urandom(32), sh, 2**32, 1, 10)


def test_join(chain):
    owner, other = chain.first, chain.node()
    job_id, _ = new_job(owner)
    owner.join_job(job_id)
    other.join_job(job_id)
    assert owner.get_job(job_id).joined_count == 2
    assert owner.participants(job_id) == [owner.account, other.account]
    assert owner.is_participant(job_id, other.account)
    assert not owner.is_participant(job_id, chain.node().account)
    with refused("AlreadyJoined"):
        other.join_job(job_id)
    with refused("UnknownJob"):
        other.join_job(os.urandom(32))


def test_updates_close_the_round_when_everyone_committed(chain):
    a, b = chain.first, chain.node()
    job_id, _ = new_job(a, rounds=2, min_updates=1)
    a.join_job(job_id)
    b.join_job(job_id)
    a.commit_update(job_id, 0, H1, 10)
    r0 = a.get_round(job_id, 0)
    assert not r0.closed, "one of two joined committed: still open before the timeout"
    tx = b.commit_update(job_id, 0, H2, 20)
    r0 = a.get_round(job_id, 0)
    assert r0.closed and r0.closed_at is not None
    assert [(u.participant, u.update_hash, u.samples) for u in r0.updates] == [
        (a.account, H1, 10),
        (b.account, H2, 20),
    ]
    job = a.get_job(job_id)
    assert job.current_round == 1 and job.status is JobStatus.ACTIVE
    r1 = a.get_round(job_id, 1)
    assert r1.opens_at == r0.closed_at and not r1.closed
    events, _ = a.poll_events(tx.block_number, tx.block_number)
    assert [e.name for e in events] == ["UpdateCommitted", "RoundClosed"]
    assert events[1].args["round"] == 0 and events[1].args["updates"] == 2
    assert all(e.job_id == job_id for e in events)


def test_update_refusals(chain):
    a, b, outsider = chain.first, chain.node(), chain.node()
    job_id, _ = new_job(a, rounds=2, min_updates=2)
    a.join_job(job_id)
    b.join_job(job_id)
    with refused("NotParticipant"):
        outsider.commit_update(job_id, 0, H1, 1)
    with refused("WrongRound"):
        a.commit_update(job_id, 1, H1, 1)
    with refused("UnknownJob"):
        a.commit_update(os.urandom(32), 0, H1, 1)
    a.commit_update(job_id, 0, H1, 5)
    with refused("AlreadyCommitted"):
        a.commit_update(job_id, 0, H2, 5)
    assert a.has_committed(job_id, 0, a.account) == (True, False)
    assert a.has_committed(job_id, 0, b.account) == (False, False)
    # the record holds the sender, whoever sent it: nobody writes another's commitment
    b.commit_update(job_id, 0, H1, 7)
    assert [u.participant for u in a.get_round(job_id, 0).updates] == [a.account, b.account]


def test_timeout_closes_a_round_with_enough_updates(chain):
    a, b, c = chain.first, chain.node(), chain.node()
    job_id, _ = new_job(a, rounds=2, min_updates=2, timeout=100)
    for node in (a, b, c):
        node.join_job(job_id)
    a.commit_update(job_id, 0, H1, 1)
    b.commit_update(job_id, 0, H2, 2)
    opens_at = a.get_round(job_id, 0).opens_at
    assert not a.get_round(job_id, 0).closed
    a.advance_time(130)
    r0 = a.get_round(job_id, 0)
    assert r0.closed and r0.closed_at == opens_at + 100, (
        "closure time does not depend on who settles"
    )
    assert a.get_job(job_id).current_round == 1
    assert a.get_round(job_id, 1).opens_at == opens_at + 100
    with refused("WrongRound"):
        c.commit_update(job_id, 0, H3, 3)  # too late: S_0 is fixed
    assert len(a.get_round(job_id, 0).updates) == 2
    tx = c.settle(job_id)
    events, _ = a.poll_events(tx.block_number, tx.block_number)
    assert [(e.name, e.args["closedAt"]) for e in events] == [("RoundClosed", opens_at + 100)]
    c.commit_update(job_id, 1, H3, 3)
    assert a.get_round(job_id, 1).updates[0].participant == c.account


def test_timeout_without_enough_updates_keeps_the_round_open(chain):
    a, b = chain.first, chain.node()
    job_id, _ = new_job(a, rounds=1, min_updates=2, timeout=50)
    a.join_job(job_id)
    b.join_job(job_id)
    a.commit_update(job_id, 0, H1, 1)
    a.advance_time(200)
    assert not a.get_round(job_id, 0).closed
    assert a.get_job(job_id).status is JobStatus.ACTIVE
    b.commit_update(job_id, 0, H2, 1)  # the m-th update closes it at once
    r0 = a.get_round(job_id, 0)
    assert r0.closed and r0.closed_at >= r0.opens_at + 200
    assert a.get_job(job_id).status is JobStatus.FINISHED


def test_last_round_finishes_the_job(chain):
    a = chain.first
    job_id, _ = new_job(a, rounds=1, min_updates=1)
    a.join_job(job_id)
    start = a.block_number() + 1
    a.commit_update(job_id, 0, H1, 1)
    assert a.get_job(job_id).status is JobStatus.FINISHED
    events, _ = a.poll_events(start)
    assert [e.name for e in events] == ["UpdateCommitted", "RoundClosed", "JobFinished"]
    with refused("JobNotActive"):
        a.commit_update(job_id, 0, H2, 1)
    with refused("JobNotActive"):
        a.join_job(job_id)
    with refused("JobNotActive"):
        a.cancel_job(job_id)
    a.commit_model(job_id, 0, H3)  # models may follow the last round
    assert a.get_round(job_id, 0).models[0].model_hash == H3


def test_model_commitments(chain):
    a, b, outsider = chain.first, chain.node(), chain.node()
    job_id, _ = new_job(a, rounds=2, min_updates=2)
    a.join_job(job_id)
    b.join_job(job_id)
    a.commit_update(job_id, 0, H1, 1)
    with refused("RoundNotClosed"):
        a.commit_model(job_id, 0, H3)
    b.commit_update(job_id, 0, H2, 1)
    b.commit_model(job_id, 0, H3)
    a.commit_model(job_id, 0, H1)
    with refused("AlreadyCommitted"):
        a.commit_model(job_id, 0, H3)
    with refused("NotParticipant"):
        outsider.commit_model(job_id, 0, H3)
    with refused("RoundOutOfRange"):
        a.commit_model(job_id, 2, H3)
    with refused("RoundNotClosed"):
        a.commit_model(job_id, 1, H3)
    with refused("UnknownJob"):
        a.commit_model(os.urandom(32), 0, H3)
    r0 = a.get_round(job_id, 0)
    assert [(m.participant, m.model_hash) for m in r0.models] == [(b.account, H3), (a.account, H1)]
    assert a.has_committed(job_id, 0, a.account) == (True, True)
    with refused("RoundOutOfRange"):
        a.get_round(job_id, 2)


def test_cancel(chain):
    a, b = chain.first, chain.node()
    job_id, _ = new_job(a, rounds=2, min_updates=1)
    a.join_job(job_id)
    b.join_job(job_id)
    a.commit_update(job_id, 0, H1, 1)
    b.commit_update(job_id, 0, H2, 1)
    with refused("NotOwner"):
        b.cancel_job(job_id)
    tx = a.cancel_job(job_id)
    assert a.get_job(job_id).status is JobStatus.CANCELLED
    events, _ = a.poll_events(tx.block_number, tx.block_number)
    assert [e.name for e in events] == ["JobCancelled"]
    with refused("JobNotActive"):
        b.commit_update(job_id, 1, H1, 1)
    with refused("JobNotActive"):
        a.commit_model(job_id, 0, H3)
    with refused("JobNotActive"):
        a.cancel_job(job_id)
    with refused("UnknownJob"):
        a.cancel_job(os.urandom(32))


def test_verify_announcement_accepts_the_real_job(chain):
    owner = chain.first
    spec = b'{"dataset": "digits"}'
    job_id, _ = new_job(owner, spec=spec)
    job = chain.node().verify_announcement(job_id, spec, owner.account.lower())
    assert job.owner == owner.account and job.status is JobStatus.ACTIVE


@pytest.mark.parametrize(
    "forgery", ["wrong spec", "wrong signer", "unknown id", "cancelled", "malformed id"]
)
def test_verify_announcement_rejects_forgeries(chain, forgery):
    owner, verifier = chain.first, chain.node()
    spec = b'{"dataset": "digits", "lr": 0.1}'
    job_id, _ = new_job(owner, spec=spec)
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
    cursor = a.block_number() + 1
    job_id, _ = new_job(a, rounds=1, min_updates=2)
    a.join_job(job_id)
    first, cursor = a.poll_events(cursor)
    assert [e.name for e in first] == ["JobRegistered", "Joined"]
    assert first[0].args["owner"] == a.account and first[0].args["rounds"] == 1
    assert first[1].args["participant"] == a.account and first[1].args["joinedCount"] == 1
    again, same = a.poll_events(cursor)
    assert again == [] and same == cursor
    b.join_job(job_id)
    a.commit_update(job_id, 0, H1, 3)
    tx = b.commit_update(job_id, 0, H2, 4)
    a.commit_model(job_id, 0, H3)
    rest, cursor = a.poll_events(cursor)
    assert [e.name for e in rest] == [
        "Joined",
        "UpdateCommitted",
        "UpdateCommitted",
        "RoundClosed",
        "JobFinished",
        "ModelCommitted",
    ]
    assert rest[2].tx_hash == tx.tx_hash and rest[2].args["index"] == 1
    keys = [(e.block_number, e.log_index) for e in first + rest]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert cursor == a.block_number() + 1
