import pytest

from gfl.fl.rounds import Aggregate, Done, JobRounds, RoundError, Train, Wait

A, B, C = "0xA", "0xB", "0xC"


def job(rounds=2, m=2, timeout=100.0, members=(A, B, C)):
    j = JobRounds(rounds, m, timeout, registered_at=0.0)
    for a in members:
        assert j.on_join(a, 0.0)
    return j


def test_closes_when_everyone_committed():
    j = job()
    assert j.next_action(A, 1) == Train(0)
    assert j.on_update(0, A, b"a", 10, 1)
    assert j.on_update(0, B, b"b", 5, 2)
    assert not j.is_closed(0, 3)
    assert isinstance(j.next_action(A, 3), Wait)
    assert j.on_update(0, C, b"c", 1, 4)
    assert j.is_closed(0, 4)
    act = j.next_action(A, 4)
    assert isinstance(act, Aggregate) and act.round == 0
    assert [u.address for u in act.updates] == [A, B, C]  # chain order
    assert j.current == 1 and j.opens_at(1) == 4 and j.closed_at(0) == 4


def test_timeout_closes_only_with_min_updates_and_late_updates_are_refused():
    j = job(m=2, timeout=100)
    j.on_update(0, A, b"a", 1, 10)
    assert not j.is_closed(0, 500)  # timeout passed but only 1 < m updates
    j.on_update(0, B, b"b", 1, 501)  # settles first: still open, then counts
    assert j.is_closed(0, 501) and j.settle(501) == [0]
    assert not j.on_update(0, C, b"c", 1, 502)  # round 0 closed: refused
    assert [u.address for u in j.updates(0)] == [A, B]


def test_refusals_mirror_the_chain():
    j = job()
    assert not j.on_update(0, "0xD", b"d", 1, 1)  # not joined
    assert j.on_update(0, A, b"a", 1, 1)
    assert not j.on_update(0, A.lower(), b"a2", 1, 2)  # already committed (case-insensitive)
    assert not j.on_update(1, B, b"b", 1, 2)  # not the current round
    assert not j.on_update(0, B, b"b", 0, 2)  # no samples
    assert not j.on_model(0, A, b"m")  # round not closed


def test_models_majority_and_divergence():
    j = job(rounds=1)
    for a, h in ((A, b"a"), (B, b"b"), (C, b"c")):
        j.on_update(0, a, h, 1, 1)
    assert j.is_closed(0, 1) and not j.finished  # closure is lazy, as on chain
    assert j.settle(1) == [0] and j.finished
    assert j.on_model(0, A, b"M") and j.on_model(0, B, b"X")
    assert not j.on_model(0, A, b"M")
    assert j.consensus(0).majority is None  # 1 vs 1: no majority yet
    assert j.on_model(0, C, b"M")
    c = j.consensus(0)
    assert c.majority == b"M" and c.votes == 2 and c.total == 3 and c.dissenters == ("0xb",)
    assert j.diverged(0, b"X") and not j.diverged(0, b"M")
    assert j.next_action(A, 5) == Done()


def test_full_job_flow_and_finish():
    j = job(rounds=2, m=1, timeout=10, members=(A, B))
    j.on_update(0, A, b"a", 1, 1)
    assert isinstance(j.next_action(B, 2), Train)
    act = j.next_action(A, 11)  # B never committed: the timeout closes round 0
    assert isinstance(act, Aggregate) and [u.address for u in act.updates] == [A]
    j.on_model(0, A, b"M1")
    assert j.next_action(A, 11) == Train(1)
    assert j.on_update(1, A, b"a", 1, 12) and j.on_update(1, B, b"b", 1, 13)
    assert j.is_closed(1, 13)
    assert not j.on_update(1, B, b"b2", 1, 14) and not j.on_join("0xD", 14)
    assert j.finished
    assert isinstance(j.next_action(A, 14), Aggregate)
    j.on_model(1, A, b"M2")
    assert j.next_action(A, 14) == Done()


def test_chain_verdict_overrides_local_clock():
    j = job(m=1, timeout=100)
    j.on_update(0, A, b"a", 1, 1)
    assert not j.is_closed(0, 50)
    j.on_round_closed(0, 50.0)  # the chain's clock ran ahead of ours
    assert j.current == 1 and j.opens_at(1) == 50.0
    j.on_round_closed(0, 60.0)  # replayed event: ignored
    with pytest.raises(RoundError):
        j.on_round_closed(1, 70.0)  # closed with 0 < m updates: we missed events


def test_cancel_stops_everything():
    j = job()
    j.on_cancel()
    assert not j.on_update(0, A, b"a", 1, 1)
    assert j.next_action(A, 1) == Done()
