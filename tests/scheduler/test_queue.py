"""The job queue on a real node.db: its order (priority, then first come), places kept
across restarts, the drain that starts jobs as slots free up, and the schema migration."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from gfl.node.store import Store
from gfl.scheduler.ports import JobRole, JobStatus
from gfl.scheduler.queue import BadPriority, JobQueue, check_priority


def _store(tmp_path, names) -> Store:
    store = Store(tmp_path / "node.db")
    for name in names:
        store.add_job(name, b"spec", "ab", "0xowner", name, 2, JobStatus.ACTIVE, JobRole.OBSERVER)
    return store


def test_priority_first_then_first_come_first_served(tmp_path):
    store = _store(tmp_path, ["a1", "b2", "c3", "d4"])
    queue = JobQueue(store)
    for name, at in (("a1", 10.0), ("b2", 11.0), ("c3", 12.0)):
        queue.put(name, at=at)
    assert [r.job_id for r in queue.waiting()] == ["a1", "b2", "c3"]
    queue.put("c3", 5)  # the operator moves c3 up: it keeps its arrival among equals
    queue.put("d4", 5, at=9.0)
    assert queue.positions() == {"d4": 1, "c3": 2, "a1": 3, "b2": 4}
    queue.put("b2")  # queued again without a priority: it keeps its place and priority
    assert queue.positions()["b2"] == 4
    row = store.job("c3")
    assert row.status == JobStatus.QUEUED and row.role == JobRole.PARTICIPANT
    assert row.priority == 5


def test_the_queue_survives_a_restart(tmp_path):
    store = _store(tmp_path, ["a1", "b2"])
    JobQueue(store).put("b2", 3)
    JobQueue(store).put("a1")
    store.close()
    again = Store(tmp_path / "node.db")
    assert JobQueue(again).positions() == {"b2": 1, "a1": 2}


def test_priorities_are_whole_numbers_in_range():
    assert check_priority(-7) == -7
    for bad in (True, 1.5, "3", 10**7):
        with pytest.raises(BadPriority):
            check_priority(bad)


def test_drain_starts_jobs_in_order_while_slots_are_free(tmp_path):
    store = _store(tmp_path, ["a1", "b2", "c3", "d4"])
    queue = JobQueue(store)
    for i, name in enumerate(["a1", "b2", "c3", "d4"]):
        queue.put(name, at=float(i))
    running: list[str] = []

    def start(row):
        running.append(row.job_id)
        store.update_job(row.job_id, status=JobStatus.ACTIVE)

    async def admit(row):
        if row.job_id == "b2":  # ended on chain meanwhile: it leaves the queue
            store.update_job(row.job_id, status=JobStatus.FINISHED, role=JobRole.OBSERVER)
            return False
        return True

    async def main():
        await queue.drain(lambda: 2 - len(running), admit, start)
        assert running == ["a1", "c3"]
        await queue.drain(lambda: 2 - len(running), admit, start)  # no slot: nothing starts
        running.remove("a1")  # a job ended: a slot is free
        await queue.drain(lambda: 2 - len(running), admit, start)

    trio.run(main)
    assert running == ["c3", "d4"]
    assert queue.waiting() == []
    assert store.job("b2").status == JobStatus.FINISHED


def test_a_node_db_of_schema_1_is_migrated_with_its_jobs(tmp_path):
    path = tmp_path / "node.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY, spec BLOB NOT NULL, spec_hash TEXT NOT NULL,
            owner TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, role TEXT NOT NULL,
            rounds INTEGER NOT NULL, current_round INTEGER NOT NULL DEFAULT 0, model_hash TEXT,
            error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL);
        INSERT INTO jobs (job_id, spec, spec_hash, owner, name, status, role, rounds,
            created_at, updated_at)
            VALUES ('aa', x'00', 'ab', '0xo', 'old', 'active', 'participant', 3, 1.0, 1.0);
        """
    )
    old.commit()
    old.close()
    store = Store(path)
    row = store.job("aa")
    assert row is not None and row.name == "old" and row.priority == 0 and row.queued_at is None
    assert row.summary()["priority"] == 0
    JobQueue(store).put("aa", 2)
    assert store.job("aa").priority == 2
    store.close()
    meta = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    assert meta == ("2",)
