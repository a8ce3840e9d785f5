"""The job runner against the real embedded chain: several participants in one process.

The network is replaced by a shared in-memory blob table (the libp2p exchange
is covered by tests/net and the end-to-end tests); the chain, the training,
the codec and the strategies are the real ones. This is where the round
protocol's decisions are checked quickly: agreement, chain order, divergence.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trio
from support import MemoryExchange, registered_job

from gfl.fl.data import load_dataset, load_partition
from gfl.fl.spec import JobSpec
from gfl.identity import NodeIdentity
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.ledger import ChainLedger
from gfl.scheduler.ports import NodeData
from gfl.scheduler.runner import JobRunner

torch.set_num_threads(1)


def _spec(rounds: int = 3, n: int = 3, **kw) -> JobSpec:
    return (
        JobSpec.builder("sched")
        .model("mlp", in_features=64, hidden=32)
        .data("digits")
        .train(epochs=1, batch_size=16, lr=0.05)
        .strategy(kw.pop("strategy", "fedavg"))
        .rounds(rounds, min_updates=n, timeout=60)
        .seed(3)
        .build()
    )


async def _run_job(tmp_path, spec: JobSpec, n: int, tamper: int | None = None):
    owner, job_id, call = registered_job(tmp_path, spec, b"\x01")
    table: dict[bytes, bytes] = {}
    test = load_dataset("digits", train=False)
    events: list[tuple[int, str, dict]] = []
    runners = []
    for i in range(n):
        reg = owner.for_identity(NodeIdentity.generate())
        runner = JobRunner(
            job_id=job_id.hex(),
            spec=spec,
            ledger=ChainLedger(reg, job_id, call),
            exchange=MemoryExchange(table),
            data=NodeData(load_partition("digits", i, n, "iid", 0), test),
            checkpoints=Checkpoints(tmp_path / f"n{i}"),
            train_limiter=trio.CapacityLimiter(1),
            emit=lambda kind, data, i=i: events.append((i, kind, data)),
            record=lambda r, values: None,
        )
        runners.append(runner)
    if tamper is not None:
        honest = runners[tamper].strategy.aggregate

        def lying(global_params, updates):
            out = honest(global_params, updates)
            return {k: (v + np.float32(0.5)).astype(v.dtype) for k, v in out.items()}

        runners[tamper].strategy.aggregate = lying
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            for runner in runners:
                nursery.start_soon(runner.run)
    return owner, job_id, runners, events


@pytest.mark.trio
async def test_participants_agree_and_the_chain_records_every_round(tmp_path):
    spec = _spec()
    chain, job_id, runners, events = await _run_job(tmp_path, spec, 3)
    assert {r.status for r in runners} == {"finished"}
    assert len({r.model_hash for r in runners}) == 1
    for r in range(spec.rounds):
        rec = chain.get_round(job_id, r)
        assert rec.closed and len(rec.updates) == 3
        assert len(rec.models) == 3
        assert len({m.model_hash for m in rec.models}) == 1
    final = chain.get_round(job_id, spec.rounds - 1).models[0].model_hash
    assert runners[0].model_hash == final
    assert not [e for e in events if e[1] == "job.divergence"]


@pytest.mark.trio
async def test_a_lying_aggregator_is_named_and_the_job_goes_on_from_the_majority(tmp_path):
    spec = _spec(rounds=2)
    chain, job_id, runners, events = await _run_job(tmp_path, spec, 3, tamper=2)
    liar = runners[2].ledger.address
    alarms = [(i, d) for i, kind, d in events if kind == "job.divergence"]
    honest_alarms = [d for i, d in alarms if i != 2]
    assert honest_alarms, "honest nodes must raise the alarm"
    assert all(d["dissenters"] == [liar] for d in honest_alarms)
    assert any(d["self_diverged"] for i, d in alarms if i == 2)
    # everyone, the liar included, ends on the majority's model
    final = chain.get_round(job_id, spec.rounds - 1)
    votes = [m.model_hash for m in final.models]
    majority = max(set(votes), key=votes.count)
    assert runners[0].model_hash == runners[1].model_hash == majority
    assert runners[2].model_hash == majority
