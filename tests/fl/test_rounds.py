"""The round rules as pure logic (gfl/fl/rounds.py): the contract's rules, said in Python.

tests/chain/test_rules_mirror.py runs the same sequences against the real contract.
"""

from __future__ import annotations

import pytest

from gfl.fl.rounds import (
    Decision,
    JobRounds,
    RoundParams,
    RoundRuleError,
    excluded_positions,
    mask_bytes,
)

A, B, C, D = ("0xa" + "0" * 39, "0xb" + "0" * 39, "0xc" + "0" * 39, "0xd" + "0" * 39)
H1, H2, H3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def _job(members=(A, B, C), **kw) -> JobRounds:
    params = RoundParams(
        rounds=kw.pop("rounds", 3),
        min_updates=kw.pop("min_updates", 2),
        round_timeout=kw.pop("round_timeout", 100),
        vote_timeout=kw.pop("vote_timeout", 50),
        max_samples=kw.pop("max_samples", 1000),
        **kw,
    )
    job = JobRounds(params, registered_at=0)
    for m in members:
        job.join(m, 0)
    return job


@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 10_002])
def test_masks_round_trip(n):
    for excluded in ([0], [n - 1], list(range(0, n, 3))):
        mask = mask_bytes(excluded, n)
        assert len(mask) == (n + 7) // 8
        assert excluded_positions(mask, n) == sorted(set(excluded))
    assert mask_bytes([], n) == b"" and excluded_positions(b"", n) == []


def test_masks_round_trip_and_refuse_non_canonical_forms():
    assert mask_bytes([], 5) == b""
    assert mask_bytes([0, 9], 10) == bytes([0b1, 0b10])
    assert excluded_positions(bytes([0b1, 0b10]), 10) == [0, 9]
    with pytest.raises(RoundRuleError):
        excluded_positions(bytes([0]), 5)  # excludes nothing: must be empty
    with pytest.raises(RoundRuleError):
        excluded_positions(bytes([0b100000]), 5)  # a bit past the set
    with pytest.raises(RoundRuleError):
        excluded_positions(bytes([1, 0]), 5)  # too long
    with pytest.raises(RoundRuleError):
        mask_bytes([5], 5)


def test_a_round_closes_when_every_eligible_member_committed():
    job = _job()
    for i, m in enumerate((A, B)):
        job.commit(m, 0, bytes([i + 1]) * 32, 10, now=1)
    assert not job.round(0).closed
    job.commit(C, 0, H3, 10, now=2)
    assert job.round(0).closed_at == 2 and job.collecting == 1 and job.voting is not None


def test_a_round_closes_by_its_timeout_at_the_timeout_whoever_settles():
    job = _job()
    job.commit(A, 0, H1, 10, now=1)
    job.commit(B, 0, H2, 10, now=2)
    job.settle(500)  # settled late: still recorded at opens_at + round_timeout
    assert job.round(0).closed_at == 100


def test_below_min_updates_a_round_waits_past_its_timeout_and_closes_with_the_next_update():
    job = _job(min_updates=2)
    job.commit(A, 0, H1, 10, now=1)
    job.settle(300)
    assert not job.round(0).closed
    job.commit(B, 0, H2, 10, now=301)
    assert job.round(0).closed_at == 301  # the write that completed the rule


def test_a_strict_majority_of_the_update_set_finalizes_at_once():
    job = _job()
    for m, h in zip((A, B, C), (H1, H2, H3), strict=True):
        job.commit(m, 0, h, 10, now=1)
    job.vote(A, 0, b"M" * 32, b"", now=3)
    assert job.round(0).decision is None
    job.vote(B, 0, b"M" * 32, b"", now=4)
    rd = job.round(0)
    assert rd.decision is Decision.FINALIZED and rd.decided_at == 4
    assert job.round(1).opens_at == 4  # the next round's clock starts at the decision


def test_only_contributors_vote_once_before_the_deadline_and_never_exclude_themselves():
    job = _job(members=(A, B, C, D))
    for m, h in zip((A, B, C), (H1, H2, H3), strict=True):
        job.commit(m, 0, h, 10, now=1)
    job.settle(100)  # D never committed: closed by the timeout
    with pytest.raises(RoundRuleError, match="no update"):
        job.vote(D, 0, b"M" * 32, b"", now=101)
    with pytest.raises(RoundRuleError, match="own update"):
        job.vote(A, 0, b"M" * 32, mask_bytes([0], 3), now=101)
    job.vote(A, 0, b"M" * 32, b"", now=101)
    with pytest.raises(RoundRuleError, match="already voted"):
        job.vote(A, 0, b"M" * 32, b"", now=102)
    job.settle(100 + 50)  # the deadline: one vote of three, no majority of the set...
    # ...but the unique top with a majority of the updates it used wins? 1 * 2 > 3: no
    assert job.round(0).decision is Decision.VOID
    with pytest.raises(RoundRuleError, match="closed"):
        job.vote(B, 0, b"M" * 32, b"", now=151)


def test_votes_after_an_early_majority_are_recorded_until_the_deadline():
    job = _job()
    for m, h in zip((A, B, C), (H1, H2, H3), strict=True):
        job.commit(m, 0, h, 10, now=1)
    job.vote(A, 0, b"M" * 32, b"", now=2)
    job.vote(B, 0, b"M" * 32, b"", now=2)
    assert job.round(0).decision is Decision.FINALIZED
    job.vote(C, 0, b"N" * 32, b"", now=3)  # a dissenter, recorded (and evidence)
    assert job.round(0).final is not None and job.round(0).final.model_hash == b"M" * 32
    assert len(job.round(0).votes) == 3


def test_at_the_deadline_the_unique_top_wins_over_the_updates_it_used():
    """Withholders that never vote cannot stall a round: the honest candidate that excludes
    them wins at the deadline with a majority of what it used."""
    job = _job(members=(A, B, C, D), min_updates=4)
    for m, h in zip((A, B, C, D), (H1, H2, H3, b"\x04" * 32), strict=True):
        job.commit(m, 0, h, 10, now=1)
    withheld = mask_bytes([2, 3], 4)
    job.vote(A, 0, b"M" * 32, withheld, now=5)
    job.vote(B, 0, b"M" * 32, withheld, now=6)
    assert job.round(0).decision is None  # 2 of 4: not a majority of the set
    job.settle(1 + 50)
    assert job.round(0).decision is Decision.FINALIZED
    assert job.round(0).final is not None and job.round(0).final.mask == withheld


def test_a_tie_at_the_deadline_leaves_the_round_void_and_the_model_unchanged():
    job = _job(members=(A, B, C, D), min_updates=4)
    for m, h in zip((A, B, C, D), (H1, H2, H3, b"\x04" * 32), strict=True):
        job.commit(m, 0, h, 10, now=1)
    job.vote(A, 0, b"M" * 32, b"", now=2)
    job.vote(B, 0, b"M" * 32, b"", now=2)
    job.vote(C, 0, b"N" * 32, b"", now=2)
    job.vote(D, 0, b"N" * 32, b"", now=2)
    job.settle(60)
    assert job.round(0).decision is Decision.VOID and job.round(1).opens_at == 51


def test_next_round_updates_arrive_before_the_vote_and_its_clock_starts_at_the_decision():
    job = _job()
    for m, h in zip((A, B, C), (H1, H2, H3), strict=True):
        job.commit(m, 0, h, 10, now=1)
    job.commit(A, 1, H1, 10, now=2)  # a pre-open update of round 1
    assert job.round(1).opens_at is None
    job.commit(B, 1, H2, 10, now=3)
    job.commit(C, 1, H3, 10, now=3)
    assert not job.round(1).closed  # round 0 is not decided yet
    job.vote(A, 0, b"M" * 32, b"", now=4)
    job.vote(B, 0, b"M" * 32, b"", now=5)
    # round 0 decided at 5: round 1 opens and, complete already, closes at once
    assert job.round(1).closed_at == 5


def test_mid_round_joiners_count_from_the_next_round_but_may_contribute():
    job = _job(members=(A, B), min_updates=3)
    job.commit(A, 0, H1, 10, now=1)
    assert job.join(C, now=2) == 1
    assert job.eligible(0) == [A, B]  # round 0 does not wait for C...
    job.commit(C, 0, H3, 10, now=3)  # ...but C may contribute
    job.commit(B, 0, H2, 10, now=3)
    assert job.round(0).closed_at == 3 and len(job.round(0).updates) == 3


def test_samples_are_capped_and_the_job_ends_after_its_last_round():
    job = _job(rounds=1, max_samples=5)
    with pytest.raises(RoundRuleError, match="samples"):
        job.commit(A, 0, H1, 6, now=1)
    with pytest.raises(RoundRuleError, match="samples"):
        job.commit(A, 0, H1, 0, now=1)
    for m, h in zip((A, B, C), (H1, H2, H3), strict=True):
        job.commit(m, 0, h, 5, now=1)
    for m in (A, B):
        job.vote(m, 0, b"M" * 32, b"", now=2)
    assert job.finished
    with pytest.raises(RoundRuleError):
        job.commit(A, 1, H1, 5, now=3)


def test_joining_is_bounded_by_the_job():
    job = _job(members=(), max_participants=2, join_until=0, min_updates=1)
    job.join(A, 0)
    job.join(B, 0)
    with pytest.raises(RoundRuleError, match="full"):
        job.join(C, 0)
    with pytest.raises(RoundRuleError, match="already"):
        job.join(A, 0)
    job.leave(B, 1)
    job.commit(A, 0, H1, 10, now=2)
    job.settle(200)
    with pytest.raises(RoundRuleError, match="closed"):
        job.join(C, 201)
