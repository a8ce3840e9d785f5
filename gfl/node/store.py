"""The node's durable state: ``DATADIR/node.db`` (sqlite in WAL mode).

It holds what a node needs to resume after being killed at any instant: the
jobs it knows, how far each got, every commitment it has seen, per-round
metrics, peers it met and counts of what it rejected. Each write is one
transaction, so a SIGKILL leaves either the old row or the new one; the chain
stays the authority and a restarted node reconciles with it. A committed
transaction is in sqlite's write-ahead log, in the kernel's hands, before the
call returns: a killed process loses none of them. A power cut may lose the last
ones (``synchronous=NORMAL`` syncs the log at checkpoints, not at each commit:
peers and counters are written often), never the database's consistency. A
damaged database is refused at open, in one line, rather than half-read.

Model checkpoints and update blobs are files (``models/``, ``blobs/``), written
atomically elsewhere; this database only names them by hash.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfl.errors import GflError

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    spec BLOB NOT NULL,
    spec_hash TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    role TEXT NOT NULL,
    rounds INTEGER NOT NULL,
    current_round INTEGER NOT NULL DEFAULT 0,
    model_hash TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    queued_at REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    phase TEXT NOT NULL,
    update_hash TEXT,
    model_hash TEXT,
    majority_hash TEXT,
    divergent INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '{}',
    started_at REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS commitments (
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    participant TEXT NOT NULL,
    hash TEXT NOT NULL,
    samples INTEGER NOT NULL DEFAULT 0,
    verified INTEGER,
    PRIMARY KEY (job_id, round, kind, participant)
);
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY,
    address TEXT,
    addrs TEXT NOT NULL DEFAULT '[]',
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

#: Columns added since schema 1, with their definitions: a node.db written by an older
#: node gets them at open (ALTER TABLE keeps every row).
_ADDED_COLUMNS = {
    "jobs": (
        ("priority", "INTEGER NOT NULL DEFAULT 0"),  # 2: the job queue's order
        ("queued_at", "REAL"),
    ),
}


class StoreError(GflError):
    """The node database cannot be opened or written (disk full, read-only, corrupt)."""


@dataclass(frozen=True)
class JobRow:
    """A job as this node knows it."""

    job_id: str
    spec: bytes
    spec_hash: str
    owner: str
    name: str
    status: str
    role: str
    rounds: int
    current_round: int
    model_hash: str | None
    error: str | None
    created_at: float
    updated_at: float
    priority: int = 0
    queued_at: float | None = None  # when it entered the queue (status "queued")

    def summary(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "owner": self.owner,
            "status": self.status,
            "role": self.role,
            "rounds": self.rounds,
            "round": self.current_round,
            "model_hash": self.model_hash,
            "spec_hash": self.spec_hash,
            "error": self.error,
            "priority": self.priority,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class Store:
    """Thread-safe access to ``node.db``; every public method is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            problem = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                self._db.close()
                raise StoreError(
                    f"the node database {path} is damaged ({problem.splitlines()[0]}); move "
                    "it away to start with an empty one (the chain keeps every job's record)"
                )
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the node database {path}: {exc}") from None

    def _migrate(self) -> None:
        """Bring a node.db of an older schema up to this one, in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                for name, definition in columns:
                    if name not in have:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"node database write failed: {exc}") from None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cur = self._db.execute(sql, args)
                cur.row_factory = sqlite3.Row
                return cur.fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"node database read failed: {exc}") from None

    def integrity_ok(self) -> bool:
        """True when sqlite's own integrity check passes."""
        rows = self._query("PRAGMA integrity_check")
        return bool(rows) and rows[0][0] == "ok"

    # -- jobs ---------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        spec: bytes,
        spec_hash: str,
        owner: str,
        name: str,
        rounds: int,
        status: str,
        role: str,
        *,
        priority: int = 0,
    ) -> bool:
        """Record a job once; returns False when it was already known. A job recorded as
        queued enters the queue now."""
        now = time.time()
        queued_at = now if status == "queued" else None
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO jobs (job_id, spec, spec_hash, owner, name, status, role,"
                " rounds, created_at, updated_at, priority, queued_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    spec,
                    spec_hash,
                    owner,
                    name,
                    status,
                    role,
                    rounds,
                    now,
                    now,
                    priority,
                    queued_at,
                ),
            )
            return cur.rowcount == 1

    def update_job(self, job_id: str, **fields: Any) -> None:
        allowed = {
            "status",
            "role",
            "current_round",
            "model_hash",
            "error",
            "priority",
            "queued_at",
        }
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown job fields {sorted(bad)}")
        fields["updated_at"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE job_id = ?", (*fields.values(), job_id))

    def job(self, job_id: str) -> JobRow | None:
        rows = self._query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return JobRow(**dict(rows[0])) if rows else None

    def jobs(self) -> list[JobRow]:
        return [JobRow(**dict(r)) for r in self._query("SELECT * FROM jobs ORDER BY created_at")]

    # -- rounds ---------------------------------------------------------------

    def upsert_round(self, job_id: str, rnd: int, **fields: Any) -> None:
        allowed = {
            "phase",
            "update_hash",
            "model_hash",
            "majority_hash",
            "divergent",
            "finished_at",
        }
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown round fields {sorted(bad)}")
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO rounds (job_id, round, phase, started_at) VALUES (?,?,?,?)",
                (job_id, rnd, fields.get("phase", "train"), time.time()),
            )
            if fields:
                cols = ", ".join(f"{k} = ?" for k in fields)
                db.execute(
                    f"UPDATE rounds SET {cols} WHERE job_id = ? AND round = ?",
                    (*fields.values(), job_id, rnd),
                )

    def merge_round_metrics(self, job_id: str, rnd: int, metrics: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO rounds (job_id, round, phase, started_at) VALUES (?,?,?,?)",
                (job_id, rnd, "train", time.time()),
            )
            row = db.execute(
                "SELECT metrics FROM rounds WHERE job_id = ? AND round = ?", (job_id, rnd)
            ).fetchone()
            merged = {**json.loads(row[0]), **metrics}
            db.execute(
                "UPDATE rounds SET metrics = ? WHERE job_id = ? AND round = ?",
                (json.dumps(merged, sort_keys=True), job_id, rnd),
            )

    def rounds(self, job_id: str) -> list[dict[str, Any]]:
        out = []
        for r in self._query("SELECT * FROM rounds WHERE job_id = ? ORDER BY round", (job_id,)):
            d = dict(r)
            d["metrics"] = json.loads(d["metrics"])
            d["divergent"] = bool(d["divergent"])
            out.append(d)
        return out

    # -- commitments ------------------------------------------------------------

    def add_commitment(
        self,
        job_id: str,
        rnd: int,
        kind: str,
        seq: int,
        participant: str,
        hash_hex: str,
        samples: int = 0,
        *,
        replace: bool = False,
    ) -> None:
        """Record a commitment (once; ``replace`` overwrites, e.g. with its chain-order seq)."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self._tx() as db:
            db.execute(
                f"{verb} INTO commitments (job_id, round, kind, seq, participant, hash, samples)"
                " VALUES (?,?,?,?,?,?,?)",
                (job_id, rnd, kind, seq, participant, hash_hex, samples),
            )

    def mark_verified(self, job_id: str, rnd: int, kind: str, participant: str, ok: bool) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE commitments SET verified = ? WHERE job_id = ? AND round = ? AND kind = ?"
                " AND participant = ?",
                (int(ok), job_id, rnd, kind, participant),
            )

    def commitments(self, job_id: str, rnd: int | None = None) -> list[dict[str, Any]]:
        if rnd is None:
            rows = self._query(
                "SELECT * FROM commitments WHERE job_id = ? ORDER BY round, kind, seq", (job_id,)
            )
        else:
            rows = self._query(
                "SELECT * FROM commitments WHERE job_id = ? AND round = ? ORDER BY kind, seq",
                (job_id, rnd),
            )
        out = []
        for r in rows:
            d = dict(r)
            d["verified"] = None if d["verified"] is None else bool(d["verified"])
            out.append(d)
        return out

    # -- peers and counters -------------------------------------------------------

    def saw_peer(self, peer_id: str, address: str | None, addrs: list[str]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO peers (peer_id, address, addrs, last_seen) VALUES (?,?,?,?)"
                " ON CONFLICT(peer_id) DO UPDATE SET address = excluded.address,"
                " addrs = excluded.addrs, last_seen = excluded.last_seen",
                (peer_id, address, json.dumps(addrs), time.time()),
            )

    def known_peers(self, limit: int = 64) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM peers ORDER BY last_seen DESC LIMIT ?", (limit,))
        return [{**dict(r), "addrs": json.loads(r["addrs"])} for r in rows]

    def bump(self, name: str, by: int = 1) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def counters(self, prefix: str = "") -> dict[str, int]:
        rows = self._query(
            "SELECT name, value FROM counters WHERE name LIKE ? ORDER BY name", (prefix + "%",)
        )
        return {r["name"]: r["value"] for r in rows}
