"""The job queue: jobs this node accepted, waiting for one of its ``max_concurrent`` slots.

Order: the operator's priority first (higher first; 0 unless set with ``gfl job join ID
--priority N``), then first come, first served (when the job entered the queue). The queue
is the jobs whose status is "queued" in node.db, so a restarted node keeps it in order.
The job service drains it whenever a slot may have freed up (a job ended, one was queued,
a chain event) and every few seconds: the head is checked against the chain and started,
or, when it ended meanwhile or can no longer be joined, it leaves the queue.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from gfl.errors import GflError
from gfl.scheduler.ports import JobRole, JobStatus

if TYPE_CHECKING:
    from gfl.node.store import JobRow, Store

MIN_PRIORITY = -1_000_000
MAX_PRIORITY = 1_000_000
CHECK_S = 5.0  # a queue nothing woke is looked at this often


class BadPriority(GflError):
    """A priority outside the range the queue takes."""


def check_priority(value: object) -> int:
    """``value`` as a queue priority, or `BadPriority` in one line."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadPriority(f"a priority is a whole number, not {value!r}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise BadPriority(f"a priority is between {MIN_PRIORITY} and {MAX_PRIORITY}")
    return value


def queue_key(row: JobRow) -> tuple[int, float, str]:
    """Where a queued job stands: higher priority first, then earlier in."""
    at = row.queued_at if row.queued_at is not None else row.created_at
    return (-row.priority, at, row.job_id)


class JobQueue:
    """The queued jobs of one node, in order, and the loop that starts them."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = trio.Event()
        self._lock = trio.Lock()  # one drain at a time: two would both see a free slot

    def waiting(self) -> list[JobRow]:
        """The queued jobs, head first."""
        rows = [r for r in self._store.jobs() if r.status == JobStatus.QUEUED]
        return sorted(rows, key=queue_key)

    def positions(self) -> dict[str, int]:
        """Queued job id -> its place in the queue (1 is next)."""
        return {row.job_id: i for i, row in enumerate(self.waiting(), 1)}

    def put(self, job_id: str, priority: int | None = None, *, at: float | None = None) -> None:
        """Queue a job to take part in: a job queued already keeps its place unless
        ``priority`` changes it; ``at`` backdates its arrival (a job resumed at start)."""
        row = self._store.job(job_id)
        if row is None:
            raise KeyError(job_id)
        queued = row.status == JobStatus.QUEUED and row.queued_at is not None
        self._store.update_job(
            job_id,
            status=JobStatus.QUEUED,
            role=JobRole.PARTICIPANT,
            priority=row.priority if priority is None else check_priority(priority),
            queued_at=row.queued_at if queued else (at if at is not None else time.time()),
        )
        self.poke()

    def poke(self) -> None:
        """Something changed (a slot freed, a job queued): drain soon."""
        self._changed.set()

    async def drain(
        self,
        free: Callable[[], int],
        admit: Callable[[JobRow], Awaitable[bool]],
        start: Callable[[JobRow], None],
    ) -> None:
        """Start queued jobs, head first, while ``free()`` slots are left; ``admit(row)``
        checks one against the chain (False: it stays queued, or it left the queue)."""
        async with self._lock:
            for row in self.waiting():
                if free() <= 0:
                    return
                fresh = self._store.job(row.job_id)  # it may have changed during an await
                if fresh is not None and fresh.status == JobStatus.QUEUED and await admit(fresh):
                    start(fresh)

    async def keep(
        self,
        free: Callable[[], int],
        admit: Callable[[JobRow], Awaitable[bool]],
        start: Callable[[JobRow], None],
    ) -> None:
        """Drain whenever poked, and every `CHECK_S` seconds, for ever."""
        while True:
            await self.drain(free, admit, start)
            with trio.move_on_after(CHECK_S):
                await self._changed.wait()
            self._changed = trio.Event()
