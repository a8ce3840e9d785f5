"""Read models: what the API, the CLI and the console show about jobs (from node.db)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gfl.errors import GflError
from gfl.fl.spec import JobSpec

if TYPE_CHECKING:
    from gfl.node.store import JobRow, Store
    from gfl.scheduler.joblog import JobLog


class JobNotFound(GflError):
    """No job with that id on this node."""

    status = 404


class JobViews:
    """Summaries and details of the jobs this node knows; ``positions()`` gives each queued
    job's place in the queue (1 is next)."""

    def __init__(
        self,
        store: Store,
        is_running: Callable[[str], bool],
        positions: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self._store = store
        self._is_running = is_running
        self._positions = positions

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

    def summary(self, ref: str, positions: dict[str, int] | None = None) -> dict[str, Any]:
        row = self.row(ref)
        out = row.summary()
        out["queue_position"] = (self._positions() if positions is None else positions).get(
            row.job_id
        )
        rounds = self._store.rounds(row.job_id)
        evaluated = [r for r in rounds if r["metrics"].get("accuracy") is not None]
        last = evaluated[-1]["metrics"] if evaluated else {}
        updates = [c for c in self._store.commitments(row.job_id) if c["kind"] == "update"]
        spent = [r["metrics"]["epsilon"] for r in rounds if r["metrics"].get("epsilon") is not None]
        out.update(
            running=self._is_running(row.job_id),
            accuracy=last.get("accuracy"),
            loss=last.get("loss"),
            participants=len({c["participant"] for c in updates}),
            divergent_rounds=[r["round"] for r in rounds if r["divergent"]],
            bytes_received=sum(r["metrics"].get("bytes_received", 0) for r in rounds),
            bytes_sent=sum(r["metrics"].get("bytes_sent_update", 0) for r in rounds),
            epsilon=max(spent, default=None),  # DP budget this node spent (a [privacy] job)
        )
        return out

    def all(self) -> list[dict[str, Any]]:
        positions = self._positions()
        return [self.summary(r.job_id, positions) for r in self._store.jobs()]

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


def verify_rows(rounds: list[dict[str, Any]], log: JobLog) -> list[dict[str, Any]]:
    """``/verify``: each round this node recorded against what the chain decided (``log``,
    the job's events checked against the contract's running hash)."""
    out = []
    for r in rounds:
        rd = log.rounds.get(r["round"])
        final = rd.final.model_hash.hex() if rd is not None and rd.final is not None else None
        decision = rd.decision.value if rd is not None and rd.decision is not None else None
        local = r.get("model_hash")
        out.append(
            {
                "round": r["round"],
                "closed": rd is not None and rd.closed,
                "updates": len(rd.updates) if rd is not None else 0,
                "votes": len(rd.votes) if rd is not None else 0,
                "decision": decision,
                "chain_model": final,
                "local_model": local,
                "dissenters": rd.dissenters() if rd is not None else [],
                "verified": final is not None and final == local,
            }
        )
    return out
