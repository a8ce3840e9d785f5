"""Secure aggregation over random rounds (hypothesis): whatever n, k, t and dropouts, the
unmasker finishes exactly when every needed secret has t_r live holders and the survivors
are connected, and then gives the exact plain sum; otherwise it names exactly the secrets
it misses."""

from __future__ import annotations

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st
from secagg_sim import Round

from gfl.fl.secagg import PAIR, SELF, Incomplete, Recovery


@st.composite
def rounds(draw):
    n = draw(st.integers(1, 9))
    k = draw(st.sampled_from([2, 4, 6]))
    t = draw(st.integers(k // 2 + 1, k + 1))
    seed = draw(st.integers(0, 2**32 - 1))
    before = draw(st.lists(st.booleans(), min_size=n, max_size=n))  # never committed
    after = draw(st.lists(st.booleans(), min_size=n, max_size=n))  # committed, then vanished
    length = draw(st.integers(1, 40))
    start = draw(st.integers(0, 40))
    return n, k, t, seed, before, after, length, start


@settings(max_examples=100, deadline=None)
@given(rounds())
def test_unmasking_finishes_exactly_when_the_rule_says(case):
    n, k, t, seed, before, after, length, start = case
    rnd = Round(n, k, t, length=length, seed=seed, max_weight=9)
    g = rnd.graph
    survivors = [a for a, gone in zip(rnd.members, before, strict=True) if not gone]
    present = [a for a, gone in zip(rnd.members, after, strict=True) if not gone and a in survivors]
    result = rnd.recover(survivors, present)

    s = set(survivors)
    expected_missing = set()
    for d in g.members:
        kind = SELF if d in s else PAIR if s & set(g.neighbours(d)) else None
        if kind is not None and len(set(g.holders(d)) & set(present)) < g.threshold:
            expected_missing.add((d, kind))
    if not survivors or not g.connected(survivors):
        event("no survivors or split")
        assert isinstance(result, Incomplete) and result.problem
    elif expected_missing:
        event("too few shares")
        assert isinstance(result, Incomplete) and result.problem is None
        assert {(m.dealer, m.kind) for m in result.missing} == expected_missing
        assert result.faulty == ()
    else:
        event("recovered")
        assert isinstance(result, Recovery)
        assert result.refused == ()
        assert np.array_equal(result.unmask(rnd.masked_sum(survivors)), rnd.plain_sum(survivors))
        # a shard of the coordinates unmasks alone to the same words
        a = min(start, length - 1)
        shard = result.unmask(rnd.masked_sum(survivors)[a:], a)
        assert np.array_equal(shard, rnd.plain_sum(survivors)[a:])
