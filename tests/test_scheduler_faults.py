"""The job runner when the chain misbehaves under one participant: it goes away for longer
than any single call waits, or it refuses an update the runner thought it could send.

Real embedded chain, real training; the network is a shared in-memory blob table and one
participant's ledger is wrapped to fail the way the node's chain adapter does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import trio
from support import MemoryExchange, registered_job

from gfl.fl.data import load_partition
from gfl.fl.spec import JobSpec
from gfl.identity import NodeIdentity
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.ledger import ChainLedger
from gfl.scheduler.ports import LedgerRefused, LedgerUnavailable, NodeData
from gfl.scheduler.runner import JobRunner

torch.set_num_threads(1)

N = 3
FAULTY = 2


class FaultyLedger:
    """A `ChainLedger` that fails on demand: every call raises `LedgerUnavailable` while
    `down` is set; with `refuse_from` set, the first update for a round >= refuse_from is
    refused (and that round is noted in `refused`)."""

    def __init__(self, inner: ChainLedger) -> None:
        self._inner = inner
        self.address = inner.address
        self.down = False
        self.refuse_from: int | None = None
        self.refused: int | None = None

    def _check(self) -> None:
        if self.down:
            raise LedgerUnavailable("the chain did not answer within 30s (test outage)")

    async def job(self) -> Any:
        self._check()
        return await self._inner.job()

    async def round(self, r: int) -> Any:
        self._check()
        return await self._inner.round(r)

    async def join(self) -> None:
        self._check()
        await self._inner.join()

    async def commit_update(self, r: int, update_hash: bytes, samples: int) -> None:
        self._check()
        if self.refuse_from is not None and r >= self.refuse_from and self.refused is None:
            self.refused = r
            raise LedgerRefused("WrongRound (test refusal)")
        await self._inner.commit_update(r, update_hash, samples)

    async def commit_model(self, r: int, model_hash: bytes) -> None:
        self._check()
        await self._inner.commit_model(r, model_hash)

    async def settle(self) -> None:
        self._check()
        await self._inner.settle()


def _spec(rounds: int, timeout: int = 3) -> JobSpec:
    return (
        JobSpec.builder("faults")
        .model("mlp", in_features=64, hidden=32)
        .data("digits")
        .train(epochs=1, batch_size=16, lr=0.05)
        .strategy("fedavg")
        .rounds(rounds, min_updates=N - 1, timeout=timeout)
        .seed(3)
        .build()
    )


Hook = Callable[[FaultyLedger, int, str, dict], None]


async def _run(tmp_path, spec: JobSpec, hook: Hook) -> tuple[list[JobRunner], FaultyLedger, list]:
    """Run the job on N participants; `hook(faulty ledger, participant, kind, data)` sees
    every event as it is emitted."""
    owner, job_id, call = registered_job(tmp_path, spec, b"\x02")
    blobs, events, runners = MemoryExchange(), [], []
    ledgers = [
        ChainLedger(owner.for_identity(NodeIdentity.generate()), job_id, call) for _ in range(N)
    ]
    faulty = FaultyLedger(ledgers[FAULTY])
    for i in range(N):

        def emit(kind: str, data: dict, i: int = i) -> None:
            events.append((i, kind, data))
            hook(faulty, i, kind, data)

        runners.append(
            JobRunner(
                job_id=job_id.hex(),
                spec=spec,
                ledger=faulty if i == FAULTY else ledgers[i],
                exchange=blobs,
                data=NodeData(load_partition("digits", i, N, "iid", 0), None),
                checkpoints=Checkpoints(tmp_path / f"n{i}"),
                train_limiter=trio.CapacityLimiter(1),
                emit=emit,
                record=lambda r, values: None,
            )
        )
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for runner in runners:
                nursery.start_soon(runner.run)
    return runners, faulty, events


@pytest.mark.trio
async def test_a_chain_outage_longer_than_a_call_pauses_the_job_instead_of_ending_it(tmp_path):
    """The faulty participant's chain goes away when it starts training a round after the
    first and comes back once the others finished a round without it (every call of its ledger fails
    meanwhile, as the node's does once a call's retry budget is spent). It must wait,
    commit what it can, catch up and finish with the others' model."""
    state: dict = {"cut": None, "back": False}  # cut: the round the outage began in

    def hook(faulty: FaultyLedger, i: int, kind: str, data: dict) -> None:
        if i == FAULTY and kind == "job.training" and data["round"] >= 1 and state["cut"] is None:
            state["cut"], faulty.down = data["round"], True
        cut = state["cut"]
        if i == FAULTY or cut is None or state["back"]:
            return
        # another node's news of an earlier round (late, on a loaded machine) does not count
        if kind == "job.finished" or (kind == "job.round_finished" and data["round"] >= cut):
            state["back"] = True
            faulty.down = False

    runners, _, events = await _run(tmp_path, _spec(rounds=3), hook)
    assert state["back"]
    assert {r.status for r in runners} == {"finished"}
    assert len({r.model_hash for r in runners}) == 1
    kinds = [kind for i, kind, _ in events if i == FAULTY]
    assert "job.chain_unavailable" in kinds and "job.chain_back" in kinds, kinds
    assert kinds.index("job.chain_unavailable") < kinds.index("job.chain_back")
    assert kinds.count("job.chain_unavailable") == 1  # one warning per outage, not per call


@pytest.mark.trio
async def test_a_refused_update_is_not_trained_again(tmp_path):
    """The chain refuses one of the faulty participant's updates (as when the chain's
    next block closes a round that its last block showed open). It must not train that
    round again and commit a second time; the round closes without it, all end alike."""

    def hook(faulty: FaultyLedger, i: int, kind: str, data: dict) -> None:
        if i == FAULTY and kind == "job.joined":
            faulty.refuse_from = 1

    # the refused round stays open for a while: time enough to train it again, were it to
    runners, faulty, events = await _run(tmp_path, _spec(rounds=3, timeout=8), hook)
    assert {r.status for r in runners} == {"finished"}
    assert len({r.model_hash for r in runners}) == 1
    r = faulty.refused
    assert r is not None, "the faulty participant never sent an update after round 0"
    mine = [(kind, d.get("round")) for i, kind, d in events if i == FAULTY]
    assert ("job.update_refused", r) in mine
    assert mine.count(("job.training", r)) == 1, mine
    assert ("job.update_committed", r) not in mine
