"""A node's privacy budget: never joined past its ceiling, spent round by round on the real
embedded chain, kept across a restart, and the node stops contributing exactly when it is
spent (then follows the job as an observer)."""

from __future__ import annotations

import math

import pytest
import torch
import trio
from support import MemoryExchange, registered_job

from gfl.fl.data import ArrayDataset, load_dataset, load_partition
from gfl.fl.privacy import PrivacyAccount
from gfl.fl.rounds import Decision
from gfl.fl.spec import JobSpec
from gfl.identity import NodeIdentity
from gfl.scheduler.budget import FILE, PrivacyBudget
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.ledger import ChainLedger
from gfl.scheduler.policy import JoinPolicy
from gfl.scheduler.ports import JobStatus, NodeData
from gfl.scheduler.runner import ChainPlace, JobRunner

torch.set_num_threads(1)

OWNER = "0x1111111111111111111111111111111111111111"
ME = "0x3333333333333333333333333333333333333333"
# σ = 1, batches of 50: a node with 200 records (q = 1/4) spends ε 4.87, 6.25, 7.33 in its
# first three rounds; one with 1000 (q = 1/20) spends 3.72 in four. With a budget of 7 the
# small one contributes exactly two rounds.
PRIVACY = {"epsilon": 7.0, "delta": 1e-5, "max_grad_norm": 1.0, "noise_multiplier": 1.0}


def _spec(members=(), privacy=PRIVACY, rounds: int = 4) -> JobSpec:
    allow = [m.eth_address for m in members] or [ME]
    return (
        JobSpec.builder("dp-budget")
        .model("mlp", in_features=64, hidden=32)
        .data("digits")
        .train(epochs=1, batch_size=50, lr=0.1)
        .rounds(rounds, min_updates=1, timeout=60)
        .seed(3)
        .build()
        .replace(
            max_samples=10_000,
            vote_timeout=40,
            availability_timeout=5,
            admission={"allow": allow, "bond": str(10**15)},
            privacy=privacy,
        )
    )


# -- the node's ceiling ---------------------------------------------------------------------------


def test_a_job_whose_budget_exceeds_the_nodes_ceiling_is_not_joined():
    policy = JoinPolicy.from_config(True, [], 2, max_epsilon=5.0)
    joined, why = policy.decide(_spec(), OWNER, ME, ["digits"])
    assert not joined
    assert why == (
        "the job's privacy budget (ε = 7) exceeds this node's ceiling ([privacy] max_epsilon = 5)"
    )
    assert policy.decide(_spec(privacy={**PRIVACY, "epsilon": 5.0}), OWNER, ME, ["digits"])[0]
    # a finite ceiling refuses a job trained without differential privacy too
    joined, why = policy.decide(_spec(privacy={}), OWNER, ME, ["digits"])
    assert not joined and "no [privacy] table" in why
    # without a ceiling (the default) every job is joined
    assert JoinPolicy.from_config(True, [], 2).decide(_spec(privacy={}), OWNER, ME, ["digits"])[0]


# -- the account on disk --------------------------------------------------------------------------


def test_the_spent_budget_survives_a_restart(tmp_path):
    spec = _spec()
    budget = PrivacyBudget.open(spec, 200, tmp_path)
    assert budget is not None and budget.spent() == 0.0 and budget.allows_next()
    first = budget.spend(0, budget.plan)
    second = budget.spend(1, budget.plan)
    assert 0 < first < second <= 7.0 and not budget.allows_next()

    again = PrivacyBudget.open(spec, 200, tmp_path)  # a restarted node
    assert again is not None and again.spent() == second and not again.allows_next()
    assert [r for r, _ in again.account.rounds] == [0, 1]
    assert PrivacyBudget.open(_spec(privacy={}), 200, tmp_path) is None


def test_a_damaged_account_counts_as_spent(tmp_path):
    (tmp_path / FILE).write_bytes(b"{not json")
    budget = PrivacyBudget.open(_spec(), 200, tmp_path)
    assert budget is not None and not budget.allows_next() and budget.spent() == math.inf


# -- a job on the embedded chain ------------------------------------------------------------------


@pytest.mark.trio
async def test_a_node_stops_contributing_exactly_when_its_budget_is_spent(tmp_path):
    ids = [NodeIdentity.generate() for _ in range(2)]
    spec = _spec(ids)
    table: dict[bytes, bytes] = {}
    owner, job_id, call = registered_job(tmp_path, spec, b"\x07", table)
    place = ChainPlace(owner.chain_id, bytes.fromhex(owner.registry_address[2:]))
    train = load_partition("digits", 0, 1, "iid", 0)
    shards = [  # the small node (0) spends faster: its sampling rate is higher
        ArrayDataset(train.x[:200], train.y[:200]),
        ArrayDataset(train.x[200:1200], train.y[200:1200]),
    ]
    test = load_dataset("digits", train=False)
    events: list[tuple[int, str, dict]] = []
    records: list[dict[int, dict]] = [{}, {}]

    def record(i: int, r: int, values: dict) -> None:
        records[i].setdefault(r, {}).update(values)

    runners = [
        JobRunner(
            job_id=job_id.hex(),
            spec=spec,
            ledger=ChainLedger(owner.for_identity(ids[i]), job_id, call, allow=spec.allow_list),
            exchange=MemoryExchange(table),
            data=NodeData(shards[i], test),
            checkpoints=Checkpoints(tmp_path / f"n{i}"),
            train_limiter=trio.CapacityLimiter(1),
            emit=lambda kind, data, i=i: events.append((i, kind, data)),
            record=lambda r, values, i=i: record(i, r, values),
            place=place,
        )
        for i in range(2)
    ]
    statuses: list[JobStatus] = []

    async def run(runner: JobRunner) -> None:
        statuses.append(await runner.run())

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            for runner in runners:
                nursery.start_soon(run, runner)
    state = await ChainLedger(owner, job_id, call).sync()

    small, large = (r.me.lower() for r in runners)
    authors = {r: {u.author.lower() for u in rd.updates} for r, rd in state.log.rounds.items()}
    assert authors == {0: {small, large}, 1: {small, large}, 2: {large}, 3: {large}}
    assert all(state.log.rounds[r].decision is Decision.FINALIZED for r in range(4))

    # the account: two rounds, within the budget; a third would have overspent it
    account = PrivacyAccount.from_json((tmp_path / "n0" / FILE).read_bytes())
    assert [r for r, _ in account.rounds] == [0, 1]
    spent = account.epsilon(1e-5)
    assert spent <= 7.0 < account.epsilon(1e-5, account.rounds[0][1])
    assert [records[0][r]["epsilon"] for r in (0, 1, 2)] == [
        pytest.approx(PrivacyAccount("rdp", account.rounds[:1]).epsilon(1e-5)),
        pytest.approx(spent),
        pytest.approx(spent),  # recorded when it stopped
    ]
    assert 3 not in records[0] or "epsilon" not in records[0][3]
    assert records[1][3]["epsilon"] <= 7.0

    # the events: spent at round 2, left the job (the rounds stopped waiting for it)
    mine = [(kind, d) for i, kind, d in events if i == 0]
    stopped = [d for kind, d in mine if kind == "job.privacy_spent"]
    assert len(stopped) == 1 and stopped[0]["round"] == 2
    assert stopped[0]["epsilon"] == pytest.approx(spent) and stopped[0]["budget"] == 7.0
    assert [d["round"] for kind, d in mine if kind == "job.update_committed"] == [0, 1]
    assert any(kind == "job.left" for kind, _ in mine)
    assert not state.log.is_member(small) and state.log.is_member(large)
    assert not [d for i, kind, d in events if i == 1 and kind == "job.privacy_spent"]

    # it kept following as an observer: both finished with the chain's final model
    assert statuses == [JobStatus.FINISHED, JobStatus.FINISHED]
    final = state.log.rounds[3].final
    assert final is not None and {r.model_hash for r in runners} == {final.model_hash}


# -- where the spent budget shows -----------------------------------------------------------------


def test_the_spent_budget_shows_in_the_report_and_gfl_job_show(tmp_path):
    from gfl.cli.jobs import format_job
    from gfl.scheduler.report import plot_report, render_report

    rounds = [
        {"round": r, "divergent": False, "model_hash": "ab" * 32, "metrics": m}
        for r, m in enumerate(
            [
                {"accuracy": 0.5, "loss": 1.2, "updates": 2, "epsilon": 4.871},
                {"accuracy": 0.6, "loss": 1.0, "updates": 2, "epsilon": 6.253},
                {"accuracy": 0.7, "loss": 0.9, "updates": 1},  # spent: no update, no cost
            ]
        )
    ]
    detail = {
        "job_id": "12" * 32,
        "name": "dp",
        "owner": OWNER,
        "status": "finished",
        "role": "participant",
        "round": 3,
        "rounds": 3,
        "epsilon": 6.253,
        "spec": {"privacy": _spec().privacy},
        "rounds_detail": rounds,
    }
    text, _ = render_report(detail, "csv")
    assert [line.split(",")[3] for line in text.splitlines()] == ["epsilon", "4.871", "6.253", ""]
    assert plot_report(detail, tmp_path / "r.png").stat().st_size > 0
    shown = format_job(detail).splitlines()
    assert "privacy   ε 6.25 spent of 7 (δ 1e-05, clip 1, DP-SGD)" in shown
    distributed = {**detail, "spec": {"privacy": {**_spec().privacy, "mode": "distributed"}}}
    assert "clip 1, user-level, noise shared under secure aggregation)" in format_job(distributed)
    assert shown[-4].split()[:4] == ["round", "accuracy", "loss", "ε"]
    assert shown[-3].split()[3] == "4.87" and shown[-1].split()[3] == "-"
    # a job without [privacy] shows as before
    plain = format_job({**detail, "spec": {}, "epsilon": None})
    assert "privacy" not in plain and " ε " not in plain
