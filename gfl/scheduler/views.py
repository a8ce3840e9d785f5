"""Read models: what the API, the CLI and the console show about jobs (from node.db)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gfl.errors import GflError
from gfl.fl.spec import JobSpec

if TYPE_CHECKING:
    from gfl.node.store import JobRow, Store


class JobNotFound(GflError):
    """No job with that id on this node."""

    status = 404


class JobViews:
    """Summaries and details of the jobs this node knows."""

    def __init__(self, store: Store, is_running: Callable[[str], bool]) -> None:
        self._store = store
        self._is_running = is_running

    def row(self, ref: str) -> JobRow:
        """The job with id ``ref`` or, when unique, the one whose id starts with it (>= 4 hex)."""
        hx = ref.lower().removeprefix("0x")
        row = self._store.job(hx)
        if row is not None:
            return row
        matches = [j for j in self._store.jobs() if j.job_id.startswith(hx)] if len(hx) >= 4 else []
        if len(matches) != 1:
            raise JobNotFound(f"no job {ref!r} on this node")
        return matches[0]

    def summary(self, ref: str) -> dict[str, Any]:
        row = self.row(ref)
        out = row.summary()
        rounds = self._store.rounds(row.job_id)
        evaluated = [r for r in rounds if r["metrics"].get("accuracy") is not None]
        last = evaluated[-1]["metrics"] if evaluated else {}
        updates = [c for c in self._store.commitments(row.job_id) if c["kind"] == "update"]
        out.update(
            running=self._is_running(row.job_id),
            accuracy=last.get("accuracy"),
            loss=last.get("loss"),
            participants=len({c["participant"] for c in updates}),
            divergent_rounds=[r["round"] for r in rounds if r["divergent"]],
            bytes_received=sum(r["metrics"].get("bytes_received", 0) for r in rounds),
            bytes_sent=sum(r["metrics"].get("bytes_sent_update", 0) for r in rounds),
        )
        return out

    def all(self) -> list[dict[str, Any]]:
        return [self.summary(r.job_id) for r in self._store.jobs()]

    def detail(self, ref: str) -> dict[str, Any]:
        row = self.row(ref)
        out = self.summary(row.job_id)
        out["spec"] = JobSpec.from_bytes(row.spec).to_dict()
        out["rounds_detail"] = self._store.rounds(row.job_id)
        out["commitments"] = self._store.commitments(row.job_id)
        return out

    def counts(self) -> dict[str, Any]:
        """Jobs by status, rejected announcements and alarms (for ``/status``)."""
        counts: dict[str, int] = {}
        for r in self._store.jobs():
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "jobs": counts,
            "rejected": self._store.counters("rejected."),
            "alarms": self._store.counters("alarms."),
        }
