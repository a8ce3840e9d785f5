"""Crashes during chain writes: the embedded chain's journal cut at many offsets, and real
SIGKILLs of a `gfl up` node in the middle of a job.

A process killed while appending leaves the records it had synced and a prefix of the one
it was writing; cutting a finished journal at an offset recreates exactly that. At each
kill point the chain must open, hold every transaction whose record was whole, and take
the next one so that it survives the next restart too.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

from support import local_config, on_event

from gfl.chain import open_chain
from gfl.chain.embedded import JOURNAL_FILE
from gfl.chain.journal import read_records
from gfl.identity import NodeIdentity
from gfl.node.datadir import DataDir
from gfl.node.devnet import demo_spec

JOBS = 4
LAST_RECORD_STRIDE = 7  # every 7th byte of the last record (~600 bytes): ~90 kill points


def _kill_points(ends: list[int], stride: int) -> list[int]:
    """Offsets to cut the journal at: around every record's end, and along the last one."""
    points = {0}
    start = 0
    for end in ends:
        points |= {start + 1, (start + end) // 2, end - 1, end}
        start = end
    points |= set(range(ends[-2], ends[-1] + 1, stride))
    return sorted(points)


def test_chain_journal_cut_at_each_kill_point_keeps_every_whole_transaction(tmp_path):
    identity = NodeIdentity.generate()
    source = tmp_path / "source"
    chain = open_chain("embedded", identity, state_dir=source)
    journal = source / JOURNAL_FILE
    jobs: dict[bytes, int] = {}  # job id -> journal size once its registration returned
    for _ in range(JOBS):
        job_id = os.urandom(32)
        chain.register_job(job_id, b"\x01" * 32, 1, 1, 10)
        jobs[job_id] = journal.stat().st_size
    chain.close()
    data = journal.read_bytes()
    assert read_records(data)[1] == len(data)
    ends = sorted(set(jobs.values()) | {i + 1 for i, b in enumerate(data) if b == ord("\n")})

    points = _kill_points(ends, LAST_RECORD_STRIDE)
    assert 80 <= len(points) <= 200
    for cut in points:
        state = tmp_path / f"cut-{cut}"
        state.mkdir()
        (state / JOURNAL_FILE).write_bytes(data[:cut])
        chain = open_chain("embedded", identity, state_dir=state)
        try:
            for job_id, acknowledged_at in jobs.items():
                whole = acknowledged_at <= cut
                assert (chain.get_job(job_id) is not None) == whole, (cut, acknowledged_at)
            after = os.urandom(32)
            chain.register_job(after, b"\x02" * 32, 1, 1, 10)
        finally:
            chain.close()
        chain = open_chain("embedded", identity, state_dir=state)
        try:
            assert chain.get_job(after) is not None, f"the write after a cut at {cut} was lost"
            kept = [j for j, at in jobs.items() if at <= cut]
            assert all(chain.get_job(j) is not None for j in kept), cut
        finally:
            chain.close()
    print(f"crash: chain journal, {len(points)} kill points, every whole record kept")


def _node_home(init_home) -> Path:
    config = dataclasses.replace(local_config(), data={"digits": ""})
    return init_home("victim", config=config.replace("jobs", auto_join=True))


def _chain_of(home: Path):
    """The node's embedded chain, opened from its journal while the node is down."""
    identity = DataDir(home).load_identity()
    return open_chain("embedded", identity, state_dir=home / "chain"), identity.eth_address


def _sigkill(node) -> None:
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)


def test_sigkill_of_a_node_mid_job_loses_no_acknowledged_transaction(init_home, start_node):
    """Four real SIGKILLs of `gfl up`: right after a job is registered, after an update
    commitment, after a model commitment, and while a round trains; each time the chain
    replayed from the journal holds what the node had reported done, and the node comes
    back up and finishes the job."""
    home = _node_home(init_home)
    node = start_node(home)
    spec = demo_spec(1, data="digits", rounds=6).replace(min_updates=1, round_timeout=30)
    with node.client(timeout=30) as client:
        job_id = client.request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
    _sigkill(node)  # 1: the registration returned; the node is joining and training
    chain, me = _chain_of(home)
    assert chain.get_job(bytes.fromhex(job_id)) is not None
    chain.close()
    kills = ["registered"]

    def phase(kind: str, min_round: int = 0):
        def matches(ev: dict) -> bool:
            data = ev.get("data") or {}
            return ev.get("type") == f"job.{kind}" and data.get("round", -1) >= min_round

        return matches

    node = start_node(home)
    # 2: our update for round r is on chain (the event follows the receipt)
    ev = on_event(node.client(), phase("update_committed", 1), lambda: _sigkill(node), 120)
    r = ev["data"]["round"]
    chain, me = _chain_of(home)
    updates = chain.get_round(bytes.fromhex(job_id), r).updates
    assert (me, ev["data"]["hash"]) in [(u.participant, u.update_hash.hex()) for u in updates]
    chain.close()
    kills.append(f"update committed, round {r}")

    node = start_node(home)
    # 3: our model for round r' is on chain
    ev = on_event(node.client(), phase("round_finished", r), lambda: _sigkill(node), 120)
    r = ev["data"]["round"]
    chain, me = _chain_of(home)
    models = chain.get_round(bytes.fromhex(job_id), r).models
    assert (me, ev["data"]["model_hash"]) in [(m.participant, m.model_hash.hex()) for m in models]
    chain.close()
    kills.append(f"model committed, round {r}")

    node = start_node(home)
    # 4: in the middle of training the next round (no chain write of ours in flight)
    ev = on_event(node.client(), phase("training", r + 1), lambda: _sigkill(node), 120)
    kills.append(f"training, round {ev['data']['round']}")
    assert ev["data"]["round"] < spec.rounds - 1, f"the job ended before the last kill: {kills}"

    node = start_node(home)
    on_event(node.client(), lambda ev: ev.get("type") == "job.finished", lambda: None, 240)
    with node.client(timeout=30) as client:
        job = client.request("GET", f"/jobs/{job_id}")
        checks = client.request("GET", f"/jobs/{job_id}/verify")
    assert job["status"] == "finished" and job["round"] == spec.rounds
    assert [c["round"] for c in checks] == list(range(spec.rounds))
    assert all(c["verified"] for c in checks), checks
    print(f"crash: gfl up SIGKILLed {len(kills)} times ({'; '.join(kills)}), job finished")
