"""What node.db keeps of each job's history for the API (the chain stays the authority):
the runner's figures per round, divergence alarms, and the registry's events."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gfl.scheduler.ports import JobStatus

if TYPE_CHECKING:
    from gfl.chain.records import ChainEvent
    from gfl.node.store import Store

_ENDED_BY = {
    "JobFinished": JobStatus.FINISHED,
    "JobCancelled": JobStatus.CANCELLED,
    "JobExpired": JobStatus.EXPIRED,
}


def round_recorder(store: Store, job_id: str) -> Callable[[int, dict[str, Any]], None]:
    """The runner's ``record(r, values)`` for one job: figures, verified updates, phases."""

    def record(r: int, values: dict[str, Any]) -> None:
        values = dict(values)
        for seq, (addr, hash_hex, samples) in enumerate(values.pop("updates_verified", ())):
            # the chain poller may not have stored the commitment yet: store it too
            store.add_commitment(job_id, r, "update", seq, addr, hash_hex, samples, replace=True)
            store.mark_verified(job_id, r, "update", addr, True)
        store.merge_round_metrics(job_id, r, values)
        fields: dict[str, Any] = {}
        if "update_hash" in values:
            fields["phase"] = "committed"
            fields["update_hash"] = values["update_hash"]
        if "model_hash" in values:
            fields["phase"] = "done"
            fields["model_hash"] = values["model_hash"]
            fields["finished_at"] = time.time()
            store.update_job(job_id, current_round=r + 1, model_hash=values["model_hash"])
        store.upsert_round(job_id, r, **fields)

    return record


def record_divergence(store: Store, data: dict[str, Any]) -> None:
    """A ``job.divergence`` event: the round is marked, its dissenters kept for its detail."""
    jid, r = data["job_id"], int(data["round"])
    store.upsert_round(jid, r, divergent=1, majority_hash=data.get("majority"))
    store.merge_round_metrics(jid, r, {"dissenters": data.get("dissenters", [])})
    store.bump("alarms.divergence")


def record_chain_event(store: Store, ev: ChainEvent, *, running: bool) -> None:
    """One registry event of a job this node knows. A job's end is recorded here for a job
    queued or followed (a runner records its own job's end once its last round is done; a
    failure recorded here stays)."""
    hx = ev.job_id.hex()
    row = store.job(hx)
    if row is None:
        return
    a = ev.args
    ended = _ENDED_BY.get(ev.name)
    if ended is not None:
        if not JobStatus(row.status).ended and (ended is not JobStatus.FINISHED or not running):
            store.update_job(hx, status=ended)
    elif ev.name == "UpdateCommitted":
        store.add_commitment(
            hx,
            int(a["round"]),
            "update",
            ev.seq,
            a["author"],
            bytes(a["updateHash"]).hex(),
            int(a["samples"]),
        )
    elif ev.name == "Voted":
        store.add_commitment(
            hx, int(a["round"]), "model", ev.seq, a["voter"], bytes(a["modelHash"]).hex()
        )
