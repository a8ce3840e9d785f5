"""The embedded chain keeps its state across restarts by replaying its journal."""

from __future__ import annotations

import os

import pytest
from support import small_job_params

from gfl.chain import ChainError, JobStatus, open_chain
from gfl.chain.embedded import JOURNAL_FILE, EmbeddedChain
from gfl.chain.journal import encode_record, read_records
from gfl.identity import NodeIdentity

from .conftest import h, new_job


def _two_members(tmp_path, ids: list[NodeIdentity], **overrides: object):
    """An embedded chain journaled in tmp_path, two accounts (``ids``) on it and a job of
    the first, both joined."""
    owner = open_chain("embedded", ids[0], state_dir=tmp_path)
    other = owner.for_identity(ids[1])
    job_id = new_job(owner, **overrides)
    owner.join_job(job_id)
    other.join_job(job_id)
    return owner, other, job_id


def _snapshot(chain, job_id: bytes) -> tuple:
    """Everything the chain says about the job, and its height."""
    members, _ = chain.members(job_id)
    return chain.get_job(job_id), members, chain.log_head(job_id), chain.block_number()


def test_restart_replays_the_journal(tmp_path):
    ids = [NodeIdentity.generate(), NodeIdentity.generate()]
    a, b, job_id = _two_members(tmp_path, ids, rounds=2, min_updates=2)
    a.commit_update(job_id, 0, h(0xA0), 3)
    b.commit_update(job_id, 0, h(0xB0), 4)  # round 0 closes: every member committed
    a.commit_and_vote(job_id, 1, h(0xA1), 5, h(0xC0))
    b.commit_and_vote(job_id, 1, h(0xB1), 6, h(0xC0))  # round 0 finalized, round 1 closes
    a.advance_time(50)
    before_events, cursor = a.poll_events(0)
    before = _snapshot(a, job_id)
    assert before[0].round == 2 and before[0].voting and before[0].status is JobStatus.ACTIVE
    a.close()

    a2 = open_chain("embedded", ids[0], state_dir=tmp_path)
    assert _snapshot(a2, job_id) == before
    events = a2.verify_log(job_id)  # the replayed events still add up to the contract's hash
    assert [(e.name, e.block_number, e.tx_hash) for e in a2.poll_events(0)[0]] == [
        (e.name, e.block_number, e.tx_hash) for e in before_events
    ]
    assert [e.name for e in events].count("RoundFinalized") == 1
    # the chain goes on from where it stopped: nonces and clock included
    b2 = a2.for_identity(ids[1])
    a2.vote(job_id, 1, h(0xC1))
    b2.vote(job_id, 1, h(0xC1))
    assert a2.get_job(job_id).status is JobStatus.FINISHED
    new, _ = a2.poll_events(cursor)
    assert [e.name for e in new] == ["Voted", "Voted", "RoundFinalized", "JobFinished"]
    a2.close()


def test_replay_stamps_each_block_with_its_recorded_time(tmp_path):
    """A restart long after the transactions ran reaches the same state: the blocks get
    the times the journal recorded, not the time of the replay (the contract's round
    windows depend on them)."""
    ids = [NodeIdentity.generate(), NodeIdentity.generate()]
    a, _, job_id = _two_members(tmp_path, ids, min_updates=1, round_timeout=60)
    a.commit_update(job_id, 0, h(0xA0), 3)  # round 0 waits for the other member
    before = a.get_job(job_id)
    a.close()
    # the same journal as if it had been written a day earlier
    path, day = tmp_path / JOURNAL_FILE, 86_400
    shifted = []
    for record in read_records(path.read_bytes())[0]:
        for key in ("ts", "genesis_timestamp"):
            if key in record:
                record[key] -= day
        shifted.append(encode_record(record))
    path.write_bytes(b"".join(shifted))
    a = open_chain("embedded", ids[0], state_dir=tmp_path)
    after = a.get_job(job_id)
    assert (after.opens_at, after.updates) == (before.opens_at - day, before.updates)
    # the round's clock runs from the recorded time: a day later it closed by its timeout
    a.settle(job_id)
    closed = a.get_job(job_id)
    assert (closed.round, closed.closed_at) == (1, before.opens_at - day + 60)
    a.close()


def _register(chain, jobs: list[bytes]) -> bytes:
    job_id = new_job(chain, rounds=1, min_updates=1)
    jobs.append(job_id)
    return job_id


def _restart(tmp_path, identity, jobs: list[bytes]):
    """Reopen the chain from its journal; every job registered so far must be there."""
    chain = open_chain("embedded", identity, state_dir=tmp_path)
    missing = [j.hex()[:8] for j in jobs if chain.get_job(j) is None]
    assert not missing, f"jobs lost across a restart: {missing}"
    return chain


def _journal_lines(tmp_path) -> list[bytes]:
    data = (tmp_path / JOURNAL_FILE).read_bytes()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def _whole(tmp_path) -> bool:
    """True when the journal holds whole, checksummed records only."""
    data = (tmp_path / JOURNAL_FILE).read_bytes()
    return read_records(data)[1] == len(data)


def test_a_crash_mid_record_loses_only_that_record_through_several_restarts(tmp_path):
    """write, tear, restart, write, restart, write, restart: nothing committed goes."""
    identity = NodeIdentity.generate()
    path = tmp_path / JOURNAL_FILE
    jobs: list[bytes] = []
    chain = open_chain("embedded", identity, state_dir=tmp_path)
    _register(chain, jobs)
    size = path.stat().st_size
    new_job(chain, rounds=1, min_updates=1)
    chain.close()
    # a crash half-way through writing the second job's record: it was never acknowledged
    with open(path, "r+b") as f:
        f.truncate(size + (path.stat().st_size - size) // 2)

    # then two more crashes mid-record: a whole line whose checksum fails, a line cut short
    for tear in (b'0badc0de {"ts":1,"tx":"0x02"}\n', b'1234abcd {"t', None):
        chain = _restart(tmp_path, identity, jobs)
        _register(chain, jobs)
        chain.close()
        chain = _restart(tmp_path, identity, jobs)
        _register(chain, jobs)
        chain.close()
        # the file holds whole records only: the next one cannot glue onto torn bytes
        assert _whole(tmp_path)
        if tear is not None:
            with open(path, "ab") as f:
                f.write(tear)
    chain = _restart(tmp_path, identity, jobs)
    assert len(jobs) == 7
    chain.close()


def test_a_corrupt_record_is_reported_and_not_replayed(tmp_path):
    identity = NodeIdentity.generate()
    chain = open_chain("embedded", identity, state_dir=tmp_path)
    for _ in range(3):
        new_job(chain, rounds=1, min_updates=1)
    chain.close()
    path = tmp_path / JOURNAL_FILE
    lines = _journal_lines(tmp_path)
    for n in (0, 2, len(lines) - 2):  # the header, a transaction, the one before the last
        bad = list(lines)
        body = bytearray(bad[n])
        body[20] ^= 0x01  # one flipped bit: still JSON-shaped, caught by the checksum only
        bad[n] = bytes(body)
        data = b"\n".join(bad) + b"\n"
        path.write_bytes(data)
        with pytest.raises(ChainError, match=f"corrupt at line {n + 1}") as err:
            open_chain("embedded", identity, state_dir=tmp_path)
        assert "\n" not in str(err.value)
        assert path.read_bytes() == data  # left as it was, for whoever restores it


def test_a_journal_without_checksums_is_rewritten_with_them(tmp_path):
    identity = NodeIdentity.generate()
    chain = open_chain("embedded", identity, state_dir=tmp_path)
    jobs: list[bytes] = []
    _register(chain, jobs)
    chain.close()
    path = tmp_path / JOURNAL_FILE
    legacy = b"".join(line[9:] + b"\n" for line in _journal_lines(tmp_path))
    path.write_bytes(legacy + b'{"ts": 12, "tx": "0x02f8')  # the old format, torn at the end
    chain = _restart(tmp_path, identity, jobs)
    _register(chain, jobs)
    chain.close()
    assert _whole(tmp_path)
    _restart(tmp_path, identity, jobs).close()


def test_registry_address_is_the_same_on_every_embedded_chain():
    one, two = EmbeddedChain(), EmbeddedChain()
    assert one.registry_address == two.registry_address
    one.close()
    two.close()


def test_threads_share_one_registry(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    a = open_chain("embedded", NodeIdentity.generate())
    params = small_job_params(a)
    with ThreadPoolExecutor(4) as pool:
        ids = list(
            pool.map(
                lambda _: a.register_job(os.urandom(32), b"\x01" * 32, b"\x02" * 32, params)[0],
                range(8),
            )
        )
    assert all(a.get_job(j).owner == a.account for j in ids)
    a.close()
