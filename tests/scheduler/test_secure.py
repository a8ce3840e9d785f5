"""Secure aggregation in the round (docs/protocol.md 9.10), on the embedded chain with
in-process runners: masked updates, dealing as a chain fact, reveals, exact unmasking,
participants that vanish after committing and a member that withholds its shares."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trio
from support import MemoryExchange, registered_job, round_0_has_an_update

from gfl.chain.errors import ContractRevert
from gfl.content import content_hash
from gfl.fl.codec import decode_frame, decode_update, encode_frame
from gfl.fl.data import load_dataset, load_partition
from gfl.fl.rounds import Decision
from gfl.fl.secagg import MaskingKey, encode, flatten, unflatten, unpack, wrapping_sum
from gfl.fl.spec import JobSpec, SpecError
from gfl.fl.strategies.base import apply_delta
from gfl.fl.trainer import train_local
from gfl.identity import NodeIdentity
from gfl.scheduler.checkpoints import Checkpoints
from gfl.scheduler.ledger import ChainLedger
from gfl.scheduler.masked import MASKED
from gfl.scheduler.ports import NodeData
from gfl.scheduler.runner import ChainPlace, JobRunner

torch.set_num_threads(1)

BOND = 10**15


def _spec(members, rounds: int = 1, **kw) -> JobSpec:
    table = {"threshold": 3, "neighbours": 4, "clip": 1.0, "deal_timeout": 30}
    table.update(kw.pop("secure", {}))
    return (
        JobSpec.builder("secure")
        .model("mlp", in_features=64, hidden=16)
        .data("digits")
        .train(epochs=1, batch_size=16, lr=0.05)
        .strategy("fedavg")
        .rounds(rounds, min_updates=kw.pop("min_updates", len(members)), timeout=60)
        .seed(3)
        .build()
        .replace(
            max_samples=kw.pop("max_samples", 10_000),
            max_participants=8,
            vote_timeout=40,
            availability_timeout=kw.pop("availability_timeout", 6),
            admission={"allow": [m.eth_address for m in members], "bond": str(BOND)},
            secure_aggregation=table,
            **kw,
        )
    )


async def _run(tmp_path, ids, spec, honest: int, *, vanish=(), extra=None):
    """Runners for ids[:honest] (those in ``vanish`` stop once their round-0 update is
    committed); ``extra(registry, job_id, call)`` plays the rest."""
    table: dict[bytes, bytes] = {}
    board: list[dict] = []
    owner, job_id, call = registered_job(tmp_path, spec, b"\x02", table)
    place = ChainPlace(owner.chain_id, bytes.fromhex(owner.registry_address[2:]))
    test = load_dataset("digits", train=False)
    events: list[tuple[int, str, dict]] = []
    committed = [trio.Event() for _ in range(honest)]

    def emit(i: int, kind: str, data: dict) -> None:
        events.append((i, kind, data))
        if kind == "job.update_committed":
            committed[i].set()

    runners = []
    for i in range(honest):
        reg = owner.for_identity(ids[i])
        runners.append(
            JobRunner(
                job_id=job_id.hex(),
                spec=spec,
                ledger=ChainLedger(reg, job_id, call, allow=spec.allow_list),
                exchange=MemoryExchange(table, board),
                data=NodeData(load_partition("digits", i, honest, "iid", 0), test),
                checkpoints=Checkpoints(tmp_path / f"n{i}"),
                train_limiter=trio.CapacityLimiter(1),
                emit=lambda kind, data, i=i: emit(i, kind, data),
                record=lambda r, values: None,
                place=place,
            )
        )

    async def vanishing(i: int) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                inner.start_soon(runners[i].run)
                await committed[i].wait()
                scope.cancel()  # gone after committing: no reveal, no vote

    background = None
    if extra is not None:  # before the runners start: a member from round 0 on
        background = await extra(owner.for_identity(ids[-1]), job_id, call)
    with trio.fail_after(400):  # generous: a loaded machine
        async with trio.open_nursery() as nursery:
            for i in range(honest):
                if i in vanish:
                    nursery.start_soon(vanishing, i)
                else:
                    nursery.start_soon(runners[i].run)
            if background is not None:
                nursery.start_soon(background)
    state = await ChainLedger(owner, job_id, call).sync()
    return owner, job_id, runners, events, state, table


def _plain(spec: JobSpec, table: dict, state, i: int, n: int) -> tuple[np.ndarray, int]:
    """Participant i's round-0 update as the plain quantised, weighted vector v_i (retrained:
    training is deterministic) and its integer weight."""
    m0 = decode_frame(table[state.log.model0_hash])
    data = load_partition("digits", i, n, "iid", 0)
    result = train_local(spec, m0, data, seed=spec.seed)
    samples = min(result.num_samples, spec.sample_cap)
    params = spec.secure
    fp = params.fixed_point(spec.max_participants, spec.sample_cap)
    w = params.weight(samples, spec.sample_cap)
    return encode(fp.quantize(flatten(result.update)), w), w


def _model_hash(spec, table, state, vectors, weight) -> bytes:
    m0 = decode_frame(table[state.log.model0_hash])
    fp = spec.secure.fixed_point(spec.max_participants, spec.sample_cap)
    delta = unflatten(fp.mean(wrapping_sum(vectors), weight), m0)
    return content_hash(encode_frame(apply_delta(m0, delta)))


def _chi2_uniform(words: np.ndarray, bits: int, bins: int = 16) -> float:
    """Chi-square statistic of the bits-wide words' top 4 bits against the uniform
    distribution."""
    low = np.bitwise_and(words, np.uint32((1 << bits) - 1))
    counts = np.bincount((low >> (bits - 4)).astype(np.int64), minlength=bins)
    expected = len(words) / bins
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.trio
@pytest.mark.parametrize("bits", [32, 24])
async def test_masked_updates_look_uniform_and_unmask_to_the_exact_integer_sum(tmp_path, bits):
    ids = [NodeIdentity.generate() for _ in range(3)]
    spec = _spec(ids, secure={"word_bits": bits})
    _, _, runners, events, state, table = await _run(tmp_path, ids, spec, 3)
    rd = state.log.rounds[0]
    assert rd.decision is Decision.FINALIZED and rd.final is not None and rd.final.mask == b""
    assert len(rd.deals) == 3 and len(rd.updates) == 3 and len(rd.votes) == 3
    assert len({r.model_hash for r in runners}) == 1

    n = len(rd.updates)
    plain = {}
    for i, ident in enumerate(ids):
        plain[ident.eth_address.lower()] = _plain(spec, table, state, i, n)
    # (a) what a peer receives is uniform noise, unrelated to the quantised update
    critical = 37.7  # chi-square, 15 degrees of freedom, p = 0.001
    for u in rd.updates:
        arrays, _meta = decode_update(table[u.update_hash])
        assert arrays[MASKED].shape == (len(arrays[MASKED]), bits // 8)  # w bits on the wire
        y = unpack(arrays[MASKED], bits)
        v, _w = plain[u.author.lower()]
        v = np.bitwise_and(v, np.uint32((1 << bits) - 1))
        assert _chi2_uniform(y, bits) < critical
        assert _chi2_uniform(v, bits) > 10 * critical  # the plain update is nowhere near uniform
        assert np.mean(y == v) < 0.01
        corr = np.corrcoef(y.astype(np.float64), v.astype(np.int32).astype(np.float64))[0, 1]
        assert abs(corr) < 5 / math.sqrt(len(y))
    # (b) the finalized model is exactly the integer sum of the plain quantised updates
    vectors = [v for v, _ in plain.values()]
    weight = sum(w for _, w in plain.values())
    assert _model_hash(spec, table, state, vectors, weight) == rd.final.model_hash
    # no plain update anywhere: every update frame any peer could fetch is a masked vector
    frames = 0
    for blob in table.values():
        if blob[:4] == b"GFLR":
            continue
        if blob[:4] == b"GFLP":  # a model frame (M_0, a round's model)
            decode_frame(blob)
            continue
        arrays, meta = decode_update(blob)
        if meta is not None:
            frames += 1
            assert set(arrays) == {MASKED}
    assert frames == n
    assert not [e for e in events if e[1] == "job.divergence"]


@pytest.mark.trio
async def test_participants_that_vanish_after_committing_cost_nothing(tmp_path):
    # 5 members, complete graph (k_r = 4), t = 3: n - t = 2 may vanish after committing
    ids = [NodeIdentity.generate() for _ in range(5)]
    spec = _spec(ids)
    _, _, runners, _events, state, table = await _run(tmp_path, ids, spec, 5, vanish=(3, 4))
    rd = state.log.rounds[0]
    assert len(rd.updates) == 5
    assert rd.decision is Decision.FINALIZED and rd.final is not None and rd.final.mask == b""
    assert set(rd.votes) == {ids[i].eth_address.lower() for i in range(3)}
    plain = [_plain(spec, table, state, i, 5) for i in range(5)]
    expected = _model_hash(spec, table, state, [v for v, _ in plain], sum(w for _, w in plain))
    assert rd.final.model_hash == expected  # the sum over all of S_r, the vanished included
    assert all(runners[i].model_hash == expected for i in range(3))


def _rogue(spec):
    """A member that joins with a masking key, never deals, and commits an update anyway."""

    async def join(reg, job_id, call):
        return await _join_rogue(reg, job_id, call, spec)

    return join


async def _join_rogue(reg, job_id, call, spec):
    from gfl.chain.proofs import merkle_proof

    key = MaskingKey.generate()
    await call(reg.join_job, job_id, merkle_proof(spec.allow_list, reg.account), None, key.public)

    async def commit_later() -> None:
        if await round_0_has_an_update(reg, job_id, call):  # after an honest one
            await call(reg.commit_update, job_id, 0, b"\x55" * 32, 10)

    return commit_later


@pytest.mark.trio
async def test_a_member_that_withholds_its_shares_is_left_out_the_same_way_by_all(tmp_path):
    ids = [NodeIdentity.generate() for _ in range(4)]
    # M is final at the deal deadline: the honest three deal at once, 12 s spare them all
    spec = _spec(ids, min_updates=3, secure={"deal_timeout": 12})
    _, _, _runners, _events, state, table = await _run(tmp_path, ids, spec, 3, extra=_rogue(spec))
    rd = state.log.rounds[0]
    rogue = ids[3].eth_address.lower()
    assert len(rd.deals) == 3 and rogue not in {d.dealer.lower() for d in rd.deals}
    assert any(a.lower() == rogue for a, _ in rd.candidates)
    pos = rd.update_of(rogue).position
    assert rd.decision is Decision.FINALIZED and rd.final is not None
    assert rd.final.mask == bytes([1 << pos % 8]) + bytes(len(rd.final.mask) - 1)
    honest = {ids[i].eth_address.lower() for i in range(3)}
    assert set(rd.votes) == honest and not rd.dissenters()
    plain = [_plain(spec, table, state, i, 3) for i in range(3)]
    expected = _model_hash(spec, table, state, [v for v, _ in plain], sum(w for _, w in plain))
    assert rd.final.model_hash == expected


@pytest.mark.trio
async def test_members_wait_for_the_deal_deadline_however_far_the_chain_clock_runs_ahead(
    tmp_path,
):
    # The chain's clock runs 20 s ahead of the members' (a chain that mined a burst of
    # blocks, a second each), and one candidate never deals: M is final only once the
    # deadline (first deal + 5 s, in chain time) passed on the members' clock, after twice
    # the deal timeout and 10 s more. They wait for it rather than give up and leave the round
    # with no update at all (it would then never close: no transaction moves the clock).
    ids = [NodeIdentity.generate() for _ in range(4)]
    spec = _spec(ids, min_updates=3, secure={"deal_timeout": 5})

    async def rogue_and_clock(reg, job_id, call):
        commit_later = await _join_rogue(reg, job_id, call, spec)
        await call(reg.advance_time, 20)

        async def commit_if_in_time() -> None:
            # (the honest three may close the round first on a loaded machine: the rogue's
            # update is not what this test is about, only that it never deals)
            try:
                await commit_later()
            except ContractRevert as exc:
                assert "WrongRound" in str(exc), exc

        return commit_if_in_time

    _, _, _runners, _events, state, _ = await _run(tmp_path, ids, spec, 3, extra=rogue_and_clock)
    rd = state.log.rounds[0]
    honest = {ids[i].eth_address.lower() for i in range(3)}
    assert {d.dealer.lower() for d in rd.deals} == honest
    assert rd.decision is Decision.FINALIZED and rd.final is not None
    assert len(rd.votes) >= 2 and set(rd.votes) <= honest  # a majority of the three


def test_the_option_is_refused_with_one_line_where_it_cannot_run():
    ids = [NodeIdentity.generate() for _ in range(2)]
    for bad, needle in (
        ({"strategy": "median"}, "needs each update in the clear"),
        ({"compression": "int8"}, "leave compression out"),
        ({"secure": {"threshold": 2}}, "threshold must be in 3..5"),
        ({"secure": {"deal_timeout": 0}}, "deal_timeout"),
        ({"secure": {"clip": 1e9}}, "do not fit 31 bits"),
        ({"secure": {"word_bits": 20}}, "word_bits must be one of 16, 24, 32"),
        ({"secure": {"word_bits": 16, "clip": 100.0}}, "do not fit 15 bits"),
    ):
        with pytest.raises(SpecError) as err:
            kw = dict(bad)
            strategy = kw.pop("strategy", None)
            spec = _spec(ids, **kw)
            if strategy:
                spec.replace(strategy=strategy)
        assert needle in str(err.value) and "\n" not in str(err.value)
    # the width is part of the job: 32 bits unless set, and another width is another job
    plain = _spec(ids)
    assert plain.secure_aggregation["word_bits"] == 32
    assert _spec(ids, secure={"word_bits": 24}).spec_hash != plain.spec_hash


@pytest.mark.trio
async def test_distributed_dp_noises_the_sum_by_sigma_and_spends_the_jobs_budget(tmp_path):
    from gfl.fl.privacy import clip_update, distributed_plan
    from gfl.scheduler.secure import noise_shortfall

    ids = [NodeIdentity.generate() for _ in range(3)]
    privacy = {"mode": "distributed", "epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 0.5}
    spec = _spec(ids, rounds=2, privacy=privacy, weighting="equal", max_samples=0)
    _, _, runners, _events, state, table = await _run(tmp_path, ids, spec, 3)
    rd = state.log.rounds[0]
    assert all(state.log.rounds[r].decision is Decision.FINALIZED for r in (0, 1))
    assert len(rd.updates) == 3 and rd.final is not None and rd.final.mask == b""
    settings = spec.privacy_settings
    sigma = distributed_plan(settings, spec.rounds).noise_multiplier
    # every participant spent the job's ε over its two rounds, as the accountant counts it
    for runner in runners:
        assert runner.budget is not None and len(runner.budget.account.rounds) == 2
        assert 7.5 < runner.budget.spent() <= 8.0 + 1e-9

    # the sum carries the noise: round 0's model minus the mean of the clipped noiseless
    # updates is noise of standard deviation σC/3 (three shares of σC/√3, summed, over 3)
    m0 = decode_frame(table[state.log.model0_hash])
    mean = np.zeros(sum(v.size for v in m0.values()))
    for i in range(3):
        result = train_local(spec, m0, load_partition("digits", i, 3, "iid", 0), seed=spec.seed)
        mean += flatten(clip_update(result.update, 0.5)) / 3
    final = _model_params(table, rd.final.model_hash)
    resid = flatten({k: final[k].astype(np.float64) - m0[k] for k in m0}) - mean
    want = sigma * 0.5 / 3
    assert 0.85 * want < float(np.std(resid)) < 1.15 * want, (np.std(resid), want)
    assert abs(float(np.mean(resid))) < 5 * want / math.sqrt(resid.size)
    # fewer summands than min_updates would fall short of σ: no such round is summed
    assert noise_shortfall(spec, 3) is None and "fall short" in (noise_shortfall(spec, 2) or "")


def _model_params(table: dict, model_hash: bytes) -> dict:
    """The parameters of the model frame whose content hash is ``model_hash``."""
    for blob in table.values():
        if blob[:4] != b"GFLR" and content_hash(blob) == model_hash:
            return decode_frame(blob)
    raise AssertionError("the round's model is not in the table")


def test_distributed_dp_is_refused_with_one_line_where_it_cannot_run():
    ids = [NodeIdentity.generate() for _ in range(2)]
    dist = {"mode": "distributed", "epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0}
    equal = {"weighting": "equal", "max_samples": 0}
    for kw, needle in (
        ({"privacy": dist}, 'needs weighting = "equal"'),
        ({"privacy": {**dist, "mode": "local"}, **equal}, 'takes mode = "distributed"'),
        ({"privacy": dist, "secure": {"masks": False}, **equal}, "needs secure_aggregation"),
    ):
        with pytest.raises(SpecError) as err:
            _spec(ids, **kw)
        assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SpecError, match="needs secure_aggregation"):
        _spec(ids, **equal).replace(secure_aggregation={}, privacy=dist)
    assert _spec(ids, privacy=dist, **equal).privacy_settings.mode == "distributed"
