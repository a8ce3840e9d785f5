"""The embedded chain keeps its state across restarts by replaying its journal."""

from __future__ import annotations

import os

from gfl.chain import JobStatus, open_chain
from gfl.chain.embedded import JOURNAL_FILE, EmbeddedChain
from gfl.identity import NodeIdentity


def test_restart_replays_the_journal(tmp_path):
    owner, member = NodeIdentity.generate(), NodeIdentity.generate()
    a = open_chain("embedded", owner, state_dir=tmp_path)
    b = a.for_identity(member)
    job_id = os.urandom(32)
    a.register_job(job_id, b"\x01" * 32, 2, 2, 100)
    a.join_job(job_id)
    b.join_job(job_id)
    a.commit_update(job_id, 0, b"\xaa" * 32, 3)
    b.commit_update(job_id, 0, b"\xbb" * 32, 4)
    a.commit_update(job_id, 1, b"\xaa" * 32, 5)
    b.commit_update(job_id, 1, b"\xbb" * 32, 6)
    a.advance_time(50)
    before_events, cursor = a.poll_events(0)
    before = (a.get_job(job_id), a.get_round(job_id, 0), a.get_round(job_id, 1), a.block_number())
    a.close()

    a2 = open_chain("embedded", owner, state_dir=tmp_path)
    after = (
        a2.get_job(job_id),
        a2.get_round(job_id, 0),
        a2.get_round(job_id, 1),
        a2.block_number(),
    )
    assert after == before
    assert after[0].status is JobStatus.FINISHED
    events, _ = a2.poll_events(0)
    assert [(e.name, e.block_number, e.tx_hash) for e in events] == [
        (e.name, e.block_number, e.tx_hash) for e in before_events
    ]
    # the chain goes on from where it stopped: nonces and clock included
    a2.commit_model(job_id, 1, b"\xcc" * 32)
    assert a2.get_round(job_id, 1).models[0].participant == owner.eth_address
    new, _ = a2.poll_events(cursor)
    assert [e.name for e in new] == ["ModelCommitted"]
    a2.close()


def test_a_truncated_last_journal_line_is_dropped(tmp_path):
    identity = NodeIdentity.generate()
    a = open_chain("embedded", identity, state_dir=tmp_path)
    job_id = os.urandom(32)
    a.register_job(job_id, b"\x01" * 32, 1, 1, 10)
    a.close()
    with open(tmp_path / JOURNAL_FILE, "a") as f:
        f.write('{"ts": 12, "tx": "0x02f8')  # a crash in the middle of a write
    a = open_chain("embedded", identity, state_dir=tmp_path)
    assert a.get_job(job_id) is not None
    a.close()


def test_registry_address_is_the_same_on_every_embedded_chain():
    one, two = EmbeddedChain(), EmbeddedChain()
    assert one.registry_address == two.registry_address
    one.close()
    two.close()


def test_threads_share_one_registry(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from gfl.chain import JobParams

    a = open_chain("embedded", NodeIdentity.generate())
    params = JobParams(
        rounds=1,
        min_updates=1,
        max_participants=1,
        round_timeout=10,
        vote_timeout=10,
        deadline=a.chain_time() + 3600,
        bond=1,
    )
    with ThreadPoolExecutor(4) as pool:
        ids = list(
            pool.map(
                lambda _: a.register_job(os.urandom(32), b"\x01" * 32, b"\x02" * 32, params)[0],
                range(8),
            )
        )
    assert all(a.get_job(j).owner == a.account for j in ids)
    a.close()
