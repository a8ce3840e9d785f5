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

from support import local_config, on_event, register_small_job

from gfl.chain import open_chain
from gfl.chain.embedded import JOURNAL_FILE
from gfl.chain.journal import read_records
from gfl.fl.rounds import Vote
from gfl.identity import NodeIdentity
from gfl.node.datadir import DataDir
from gfl.node.devnet import demo_spec
from gfl.scheduler.joblog import JobLog

JOBS = 4
LAST_RECORD_STRIDE = 10  # every 10th byte of the last record (~1,200 bytes): ~120 kill points


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
        job_id = register_small_job(chain)
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
            after = register_small_job(chain)
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


def _chain_log(home: Path, job_id: str) -> tuple[JobLog, str]:
    """The job's history on the node's embedded chain, opened from its journal while the
    node is down (checked against the contract's running hash), and the node's address."""
    identity = DataDir(home).load_identity()
    chain = open_chain("embedded", identity, state_dir=home / "chain")
    try:
        log = JobLog(bytes.fromhex(job_id))
        log.apply(chain.verify_log(bytes.fromhex(job_id)))
    finally:
        chain.close()
    return log, identity.eth_address


def _sigkill(node) -> None:
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)


def _phase(kind: str, min_round: int = 0):
    def matches(ev: dict) -> bool:
        data = ev.get("data") or {}
        return ev.get("type") == f"job.{kind}" and data.get("round", -1) >= min_round

    return matches


def _vote_cast(models: dict[int, str], min_round: int):
    """Matches the event of this node's vote on a round >= min_round being on chain (alone,
    or riding on the next round's update); `models` collects the node's round models."""

    def matches(ev: dict) -> bool:
        kind, data = ev.get("type"), ev.get("data") or {}
        if kind == "job.round_finished":
            models[data["round"]] = data["model_hash"]
        voted = data.get("round", -1) if kind == "job.voted" else -1
        if kind == "job.update_committed" and data.get("vote"):
            voted = data["round"] - 1
        return voted >= min_round and voted in models

    return matches


def test_sigkill_of_a_node_mid_job_loses_no_acknowledged_transaction(init_home, start_node):
    """Four real SIGKILLs of `gfl up`: right after a job is registered, after an update
    commitment, after a vote, and while a round trains (its vote on the round before not
    sent yet); each time the chain replayed from the journal holds what the node had
    reported done, and the node comes back up and finishes the job, every round finalized
    on the model the node holds."""
    home = _node_home(init_home)
    node = start_node(home)
    spec = demo_spec(1, data="digits", rounds=6).replace(min_updates=1, round_timeout=30)
    with node.client(timeout=30) as client:
        job_id = client.request("POST", "/jobs", json={"spec": spec.to_dict()})["job_id"]
    _sigkill(node)  # 1: the registration returned; the node is joining and training
    log, me = _chain_log(home, job_id)
    assert log.owner == me and log.seq >= 1
    kills = ["registered"]

    node = start_node(home)
    # 2: our update for round r is on chain (the event follows the receipt)
    ev = on_event(node.client(), _phase("update_committed", 1), lambda: _sigkill(node), 120)
    r = ev["data"]["round"]
    log, me = _chain_log(home, job_id)
    mine = log.rounds[r].update_of(me)
    assert mine is not None and mine.update_hash.hex() == ev["data"]["hash"]
    kills.append(f"update committed, round {r}")

    node = start_node(home)
    # 3: our vote on round r' is on chain, for the model the node computed
    models: dict[int, str] = {}
    ev = on_event(node.client(), _vote_cast(models, r), lambda: _sigkill(node), 120)
    r = ev["data"]["round"] - (ev["type"] == "job.update_committed")
    log, me = _chain_log(home, job_id)
    vote = log.rounds[r].votes[me.lower()]
    assert (vote.model_hash.hex(), vote.mask) == (models[r], b"")
    assert log.rounds[r].final == Vote("", vote.model_hash, b""), "one member: its vote decides"
    kills.append(f"voted, round {r}")

    node = start_node(home)
    # 4: in the middle of training the next round: its model is checkpointed, and our vote
    # on the round before waits to ride on this update (the restart must cast it)
    ev = on_event(node.client(), _phase("training", r + 2), lambda: _sigkill(node), 120)
    r = ev["data"]["round"]
    kills.append(f"training, round {r}")
    assert r < spec.rounds - 1, f"the job ended before the last kill: {kills}"
    log, me = _chain_log(home, job_id)
    voted = log.rounds[r - 1].decision is not None or me.lower() in log.rounds[r - 1].votes
    assert not voted, "killed only after its update and vote went out: the machine is too slow"

    node = start_node(home)
    on_event(node.client(), lambda ev: ev.get("type") == "job.finished", lambda: None, 240)
    with node.client(timeout=30) as client:
        job = client.request("GET", f"/jobs/{job_id}")
        checks = client.request("GET", f"/jobs/{job_id}/verify")
    assert job["status"] == "finished" and job["round"] == spec.rounds
    assert [c["round"] for c in checks] == list(range(spec.rounds))
    rows = [(c["round"], c["decision"], c["local_model"], c["chain_model"]) for c in checks]
    assert all(c["decision"] == "finalized" and c["verified"] for c in checks), rows
    assert job["model_hash"] == checks[-1]["chain_model"]
    print(f"crash: gfl up SIGKILLed {len(kills)} times ({'; '.join(kills)}), job finished")
