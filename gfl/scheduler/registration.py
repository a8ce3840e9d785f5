"""What a job's spec registers on chain, said once: the publisher builds the registration
from it and every node that hears the announcement checks the chain's record against it."""

from __future__ import annotations

from gfl.chain.proofs import merkle_root
from gfl.chain.records import JobParams, JobRecord
from gfl.fl.spec import JobSpec

NO_ALLOW_LIST = bytes(32)


def job_params(spec: JobSpec, deadline: int) -> JobParams:
    """The contract's parameters for ``spec`` with this deadline (unix seconds)."""
    return JobParams(
        rounds=spec.rounds,
        min_updates=spec.min_updates,
        max_participants=spec.max_participants,
        round_timeout=spec.round_timeout,
        vote_timeout=spec.vote_timeout,
        deadline=deadline,
        bond=spec.bond_wei,
        join_until=spec.join_until,
        max_samples=spec.sample_cap,
        max_missed=spec.max_missed,
        allow_root=merkle_root(spec.allow_list) if spec.allow_list else NO_ALLOW_LIST,
    )


def mismatch(spec: JobSpec, rec: JobRecord) -> str | None:
    """Why the chain's record does not register ``spec`` (None when it does). The deadline
    is the publisher's to set; everything else must be what the spec says."""
    want = job_params(spec, rec.params.deadline)
    if rec.params != want:
        fields = [
            f for f in want.__dataclass_fields__ if getattr(want, f) != getattr(rec.params, f)
        ]
        return f"the job's registration differs from its spec in {', '.join(fields)}"
    return None
