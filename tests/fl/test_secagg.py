"""Secure aggregation as a pure library (gfl/fl/secagg): masked vectors look random, the
unmasked sum is exact, dropouts up to the threshold are survived, and a withholder gets the
same verdict on every node. Rounds are played in memory (tests/fl/secagg_sim.py)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import zstandard
from scipy import stats
from secagg_sim import JOB, Round

from gfl.fl.secagg import (
    PAIR,
    SELF,
    FixedPoint,
    Incomplete,
    MaskingKey,
    NeighbourGraph,
    Recovery,
    RevealGuard,
    RevealSet,
    RoundContext,
    SecAggError,
    SecAggParams,
    SharesBlob,
    encode,
    flatten,
    integer_weight,
    mask,
    mask_update,
    pack,
    recover,
    recover_secrets,
    reveal,
    shamir,
    strategy_problem,
    unflatten,
    unpack,
    wrapping_sum,
)
from gfl.fl.secagg.keys import pair_seed, share_key
from gfl.fl.secagg.prg import prg_words
from gfl.fl.secagg.shares import deal


def unmasked(rnd: Round, survivors, revealers) -> np.ndarray:
    rec = rnd.recover(survivors, revealers)
    assert isinstance(rec, Recovery), rec.reason
    return rec.unmask(rnd.masked_sum(survivors))


# -- building blocks ---------------------------------------------------------------------


def test_prg_is_rfc8439_chacha20_and_seekable():
    # RFC 8439 A.1 test vectors 1 and 2: zero key, zero nonce, block counters 0 and 1
    first = prg_words(bytes(32), 0, 16).astype("<u4").tobytes().hex()
    assert first.startswith("76b8e0ada0f13d90405d6ae55386bd28")
    second = prg_words(bytes(32), 16, 4).astype("<u4").tobytes().hex()
    assert second == "9f07e7be5551387a98ba977c732d080d"
    seed = bytes(range(32))
    whole = prg_words(seed, 0, 5000)
    for start in (0, 1, 15, 16, 17, 1023, 4000):
        assert np.array_equal(prg_words(seed, start, 1000)[: 5000 - start], whole[start:][:1000])
    with pytest.raises(SecAggError, match="out of range"):
        prg_words(seed, (1 << 36) - 4, 8)
    with pytest.raises(SecAggError, match="32 bytes"):
        prg_words(b"short", 0, 4)


def test_shamir_any_threshold_subset_rebuilds_the_secret():
    rng = random.Random(1)
    rand = random.Random(2).randbytes
    secret = rng.getrandbits(255)
    xs = [rng.getrandbits(160) | 1 for _ in range(7)]
    ys = shamir.split(secret, 4, xs, rand)
    points = list(zip(xs, ys, strict=True))
    for _ in range(10):
        assert shamir.reconstruct(rng.sample(points, 4)) == secret
        assert shamir.reconstruct(rng.sample(points, 5)) == secret
    assert shamir.reconstruct(points[:3]) != secret  # one share short: another polynomial
    with pytest.raises(SecAggError, match="distinct"):
        shamir.reconstruct([points[0], points[0]])
    with pytest.raises(SecAggError, match="threshold"):
        shamir.split(secret, 8, xs, rand)
    with pytest.raises(SecAggError, match="field element"):
        shamir.decode_element(b"\xff" * 32)


def test_pairwise_seed_is_symmetric_and_per_round():
    a, b = MaskingKey(bytes([1]) * 32), MaskingKey(bytes([2]) * 32)
    ia, ib = b"\x0a" * 20, b"\x0b" * 20
    r3, r4 = RoundContext(JOB, 3), RoundContext(JOB, 4)
    assert pair_seed(a, ia, ib, b.public, r3) == pair_seed(b, ib, ia, a.public, r3)
    assert pair_seed(a, ia, ib, b.public, r3) != pair_seed(a, ia, ib, b.public, r4)
    assert pair_seed(a, ia, ib, b.public, r3)[31] < 0x80  # 255 bits: a field element
    with pytest.raises(SecAggError, match="usable X25519"):
        pair_seed(a, ia, ib, bytes(32), r3)  # a low-order point gives no shared secret
    dealer_side = share_key(a, b.public, r3, ia, ib, SELF)
    assert dealer_side == share_key(b, a.public, r3, ia, ib, SELF)
    assert dealer_side != share_key(a, b.public, r3, ia, ib, PAIR)
    assert dealer_side != share_key(a, b.public, r3, ib, ia, SELF)  # direction counts


def test_graph_is_symmetric_deterministic_and_harary():
    members = [bytes([i]) * 20 for i in range(1, 12)]
    seed = b"\x07" * 32
    g = NeighbourGraph.build(seed, members, 4, 3)
    assert (g.degree, g.threshold) == (4, 3)
    for a in members:
        assert len(g.neighbours(a)) == 4 and a not in g.neighbours(a)
        for b in g.neighbours(a):
            assert a in g.neighbours(b)
        assert g.holders(a) == tuple(sorted((*g.neighbours(a), a)))
    assert NeighbourGraph.build(seed, reversed(members), 4, 3).adjacency == g.adjacency
    assert NeighbourGraph.build(b"\x08" * 32, members, 4, 3).adjacency != g.adjacency
    assert g.connected(members) and not g.connected([])
    # small rounds: everyone is everyone's neighbour, the threshold shrinks with the holders
    small = NeighbourGraph.build(seed, members[:3], 8, 5)
    assert (small.degree, small.threshold) == (2, 3)
    assert NeighbourGraph.build(seed, members[:1], 2, 2).holders(members[0]) == (members[0],)
    with pytest.raises(SecAggError, match="threshold must be in"):
        NeighbourGraph.build(seed, members, 4, 2)  # a minority of 5 holders: refused
    with pytest.raises(SecAggError, match="even"):
        NeighbourGraph.build(seed, members, 3, 3)


def test_fixed_point_fits_the_sum_in_int32():
    fp = FixedPoint.choose(1.0, 64, 1)
    assert (fp.frac_bits, fp.bound) == (24, 1 << 24)  # 64 · 2^25 would reach 2^31
    fp = FixedPoint.choose(0.1, 16, 256)
    assert 16 * 256 * fp.bound <= 2**31 - 1 < 16 * 256 * math.floor(0.1 * 2 ** (fp.frac_bits + 1))
    # the worst case (every summand at the bound with the largest weight) does not wrap
    for sign in (1, -1):
        q = fp.quantize(np.full(3, sign * 5.0))
        total = wrapping_sum([encode(q, 256)] * 16)
        assert np.all(fp.mean(total, 16 * 256) == sign * fp.bound / 2**fp.frac_bits)
    # round half to even on the grid, clipping at ±B
    fp = FixedPoint(2, 12)
    got = fp.quantize(np.array([0.125, 0.375, -0.125, 2.9, 3.5, -100.0]))
    assert got.tolist() == [0, 2, 0, 12, 12, -12]
    with pytest.raises(SecAggError, match="non-finite"):
        fp.quantize(np.array([np.nan]))
    with pytest.raises(SecAggError, match="do not fit 31 bits"):
        FixedPoint.choose(1e9, 64, 60_000)
    assert [integer_weight(s, 60_000, 256) for s in (1, 234, 235, 60_000)] == [1, 1, 2, 256]
    assert integer_weight(3750, 60_000) == 3750


@pytest.mark.parametrize("bits", [16, 24, 32])
def test_narrower_words_trade_fractional_bits_and_the_sum_stays_exact(bits):
    fp = FixedPoint.choose(0.1, 16, 256, bits)
    assert fp.frac_bits == FixedPoint.choose(0.1, 16, 256).frac_bits - (32 - bits)
    limit = 2 ** (bits - 1) - 1
    assert 16 * 256 * fp.bound <= limit < 16 * 256 * math.floor(0.1 * 2 ** (fp.frac_bits + 1))
    rng = np.random.default_rng(bits)
    for sign in (1, -1):  # the worst case: every summand at the bound with the largest weight
        q = fp.quantize(np.full(3, sign * 5.0))
        total = wrapping_sum([encode(q, 256)] * 16)
        assert np.all(fp.mean(total, 16 * 256) == sign * fp.bound / 2**fp.frac_bits)
    # masked words mod 2^w: only the low w bits of each mask reach the wire, and the sum of
    # what the wire carries, unmasked mod 2^32, reads back as the exact signed sum
    x = rng.uniform(-0.1, 0.1, size=(5, 1000))
    plain = [encode(fp.quantize(row), 200) for row in x]
    masks = [rng.integers(0, 2**32, size=1000, dtype=np.uint32) for _ in range(5)]
    wire = [pack(p + m, bits) for p, m in zip(plain, masks, strict=True)]
    assert all(w.dtype == np.uint8 and w.shape == (1000, bits // 8) for w in wire)
    total = wrapping_sum(unpack(w, bits) for w in wire) - wrapping_sum(masks)
    want = sum(fp.quantize(row).astype(np.int64) * 200 for row in x)
    assert np.array_equal(fp.mean(total, 1000), want / (1000 * 2.0**fp.frac_bits))
    with pytest.raises(SecAggError, match="rows of"):
        unpack(wire[0][:, :1], bits)
    with pytest.raises(SecAggError, match="word_bits must be one of 16, 24, 32"):
        FixedPoint.choose(0.1, 16, 256, 20)
    with pytest.raises(SecAggError, match="do not fit 15 bits"):
        FixedPoint.choose(1.0, 64, 60_000, 16)


def test_flatten_follows_the_codec_order():
    update = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([9.0, 8.0])}
    flat = flatten(update)
    assert flat.tolist() == [9.0, 8.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    back = unflatten(flat, update)
    assert back["b"].shape == (2, 3) and np.array_equal(back["b"], update["b"])
    with pytest.raises(SecAggError, match="coordinates"):
        unflatten(flat[:-1], update)


def test_params_and_strategies():
    p = SecAggParams.from_table({"threshold": 5, "neighbours": 8, "clip": 1})
    assert p.clip == 1.0 and p.max_weight(60_000) == 60_000
    assert SecAggParams(5, 8, 1.0, weight_levels=256).fixed_point(64, 60_000).frac_bits == 16
    for bad, msg in (
        ({"threshold": 4, "neighbours": 8, "clip": 1}, "threshold must be in 5..9"),
        ({"threshold": 3, "neighbours": 5, "clip": 1}, "even"),
        ({"threshold": 5, "neighbours": 8, "clip": -1}, "clip"),
        ({"threshold": 5, "neighbours": 8}, "clip is required"),
        ({"threshold": 5, "neighbours": 8, "clip": 1, "k": 2}, "unknown setting 'k'"),
        ({"threshold": 5, "neighbours": 8, "clip": 1, "word_bits": 8}, "word_bits must be"),
        ({"threshold": 5, "neighbours": 8, "clip": 1, "word_bits": True}, "word_bits must be"),
    ):
        with pytest.raises(SecAggError, match=msg):
            SecAggParams.from_table(bad)
    for name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        assert strategy_problem(name) is None
    for name in ("median", "krum", "multikrum", "trimmed_mean"):
        line = strategy_problem(name)
        assert line and "\n" not in line and name in line and "fedavg" in line


# -- the wire formats --------------------------------------------------------------------


def test_blob_and_reveal_round_trip_and_refuse_garbage():
    rnd = Round(5, 2, 2, length=8)
    a = rnd.members[0]
    blob = rnd.blobs[a]
    raw = blob.to_bytes()
    assert len(raw) == 63 + 3 * (20 + 32 + 48 + 2 * 32 + 16)
    assert SharesBlob.from_bytes(raw) == blob
    for bad in (raw[:-1], raw + b"\0", b"GFLX" + raw[4:], raw[:62] + b"\x09" + raw[63:]):
        with pytest.raises(SecAggError, match="shares blob"):
            SharesBlob.from_bytes(bad)
    rs = rnd.reveals(rnd.members, [a])[0]
    assert RevealSet.from_bytes(rs.to_bytes()) == rs
    assert len(rs.entries) == 3  # the three dealers it holds shares of
    with pytest.raises(SecAggError, match="reveal"):
        RevealSet.from_bytes(rs.to_bytes()[:-1])
    dup = rs.to_bytes()[:61] + b"\x00\x02" + rs.to_bytes()[63:116] * 2
    with pytest.raises(SecAggError, match="one entry per dealer"):
        RevealSet.from_bytes(dup)


def test_dealer_recovers_its_own_secrets_after_a_restart():
    rnd = Round(6, 4, 3, length=8)
    for a in rnd.members:
        again = recover_secrets(rnd.blobs[a], rnd.keys[a], rnd.public)
        assert again == rnd.secrets[a]
        assert again.self_seed == rnd.secrets[a].self_seed
        assert again.pair_seeds == rnd.secrets[a].pair_seeds
    other = rnd.members[1]
    with pytest.raises(SecAggError, match="did not deal it"):
        recover_secrets(rnd.blobs[rnd.members[0]], rnd.keys[other], rnd.public)


# -- (a) a masked vector looks uniform and carries nothing of the update ------------------


def test_masked_vector_is_uniform_and_uncorrelated_with_the_update():
    rnd = Round(4, 2, 2, length=1 << 16, clip=0.5)
    a = rnd.members[0]
    q, y = rnd.plain[a], rnd.masked[a]
    by_byte = np.bincount(np.frombuffer(y.tobytes(), np.uint8), minlength=256)
    by_word = np.bincount(y >> 24, minlength=256)  # buckets of the words' values
    assert stats.chisquare(by_byte).pvalue > 1e-3
    assert stats.chisquare(by_word).pvalue > 1e-3
    # the same tests see the plain quantised update at once (they can fail)
    assert (
        stats.chisquare(np.bincount(np.frombuffer(q.tobytes(), np.uint8), minlength=256)).pvalue
        < 1e-12
    )
    bound = 4 / math.sqrt(y.size)
    for plain in (q.view(np.int32).astype(float), q.astype(float)):
        for masked in (y.view(np.int32).astype(float), y.astype(float)):
            assert abs(np.corrcoef(plain, masked)[0, 1]) < bound
    # no structure left for a compressor to find
    assert len(zstandard.ZstdCompressor(level=19).compress(y.tobytes())) > y.nbytes
    # a masked all-zero update is as random as any other
    zero = mask(rnd.secrets[a], np.zeros(y.size, np.uint32))
    assert stats.chisquare(np.bincount(zero >> 24, minlength=256)).pvalue > 1e-3


# -- (b) the unmasked sum is the integer sum of the plain quantised updates ---------------


@pytest.mark.parametrize(("n", "k", "t"), [(1, 2, 2), (2, 2, 2), (5, 4, 3), (9, 4, 3), (8, 8, 5)])
def test_unmasked_sum_equals_the_plain_sum_exactly(n, k, t):
    rnd = Round(n, k, t, length=1000, max_weight=50, seed=n)
    total = unmasked(rnd, rnd.members, rnd.members)
    assert total.dtype == np.uint32
    assert np.array_equal(total, rnd.plain_sum(rnd.members))
    # and it means the weighted mean of the clipped updates, within half a grid step
    w = sum(rnd.weight.values())
    want = sum(rnd.weight[a] * np.clip(rnd.x[a], -1, 1) for a in rnd.members) / w
    assert np.max(np.abs(rnd.fp.mean(total, w) - want)) <= rnd.fp.resolution / 2


def test_mask_update_is_flatten_quantise_weight_mask():
    rnd = Round(3, 2, 2, length=10)
    a = rnd.members[0]
    update = {"w": rnd.x[a][:6].reshape(2, 3), "b": rnd.x[a][6:]}
    y = mask_update(update, 7, rnd.fp, rnd.secrets[a])
    want = mask(rnd.secrets[a], encode(rnd.fp.quantize(flatten(update)), 7))
    assert np.array_equal(y, want)


# -- (c) up to n − t members vanish and the survivors' exact sum is still recovered --------


def test_n_minus_t_vanish_after_committing():
    rnd = Round(8, 8, 5, length=500)  # complete graph: every member holds every share
    gone = rnd.members[1:4]  # committed (in S), then never revealed anything
    present = [a for a in rnd.members if a not in gone]
    assert np.array_equal(unmasked(rnd, rnd.members, present), rnd.plain_sum(rnd.members))


def test_n_minus_t_drop_before_committing():
    rnd = Round(8, 8, 5, length=500)
    survivors = rnd.members[3:]  # three never committed: their pairwise masks come off
    assert np.array_equal(unmasked(rnd, survivors, survivors), rnd.plain_sum(survivors))


def test_dropouts_of_both_kinds_in_a_sparse_graph():
    rnd = Round(12, 6, 4, length=300, seed=5)
    before, after = rnd.members[0:2], rnd.members[5:7]
    survivors = [a for a in rnd.members if a not in before]
    present = [a for a in survivors if a not in after]
    assert np.array_equal(unmasked(rnd, survivors, present), rnd.plain_sum(survivors))


# -- shards: any coordinate range unmasks alone --------------------------------------------


def test_shard_ranges_unmask_to_the_slices_of_the_full_sum():
    rnd = Round(7, 4, 3, length=1000, seed=2)
    survivors = rnd.members[1:]
    rec = rnd.recover(survivors, survivors[1:])
    full = rec.unmask(rnd.masked_sum(survivors))
    for a, b in ((0, 1), (0, 16), (5, 21), (16, 32), (333, 1000), (999, 1000)):
        shard = wrapping_sum(rnd.masked[m][a:b] for m in survivors)
        assert np.array_equal(rec.unmask(shard, a), full[a:b])
        # a participant can mask a shard alone too
        m = survivors[0]
        assert np.array_equal(mask(rnd.secrets[m], rnd.plain[m][a:b], a), rnd.masked[m][a:b])


# -- (d) withholding, refusals: the same verdict on every node -------------------------------


def _verdicts(rnd: Round, survivors, blobs, reveals):
    """What several nodes conclude, each receiving the same inputs in another order."""
    out = []
    for seed in range(4):
        order = random.Random(seed)
        rs = list(reveals)
        order.shuffle(rs)
        keys = list(blobs)
        order.shuffle(keys)
        out.append(recover(rnd.ctx, rnd.graph, survivors, {k: blobs[k] for k in keys}, rs))
    return out


def test_a_member_that_withholds_its_shares_blob_gets_the_same_verdict_everywhere():
    rnd = Round(6, 4, 3, length=50)
    w = rnd.members[2]
    blobs = {a: b for a, b in rnd.blobs.items() if a != w}  # w never published its shares
    reveals = rnd.reveals(rnd.members, rnd.members)
    verdicts = _verdicts(rnd, rnd.members, blobs, reveals)
    assert all(v == verdicts[0] for v in verdicts)
    v = verdicts[0]
    assert isinstance(v, Incomplete)
    assert [(m.dealer, m.kind, m.reason) for m in v.missing] == [(w, SELF, "no shares blob")]
    assert "self-mask secret of 0x" + w.hex() in v.reason and "\n" not in v.reason
    # when w did not commit either, its pairwise seeds are what is missing
    rnd2 = Round(6, 4, 3, length=50)
    survivors = [a for a in rnd2.members if a != w]
    blobs = {a: b for a, b in rnd2.blobs.items() if a != w}
    v2 = recover(rnd2.ctx, rnd2.graph, survivors, blobs, rnd2.reveals(survivors, survivors))
    assert isinstance(v2, Incomplete) and [(m.dealer, m.kind) for m in v2.missing] == [(w, PAIR)]


def test_holders_that_withhold_reveals_beyond_the_threshold_are_named():
    rnd = Round(8, 8, 5, length=50)
    gone = rnd.members[:4]  # four of eight silent, five needed
    present = rnd.members[4:]
    reveals = rnd.reveals(rnd.members, present)
    verdicts = _verdicts(rnd, rnd.members, rnd.blobs, reveals)
    assert all(v == verdicts[0] for v in verdicts)
    v = verdicts[0]
    assert isinstance(v, Incomplete) and v.faulty == ()
    assert {m.dealer for m in v.missing} == set(rnd.members)
    assert all(m.valid == 4 and m.needed == 5 and set(m.silent) == set(gone) for m in v.missing)


def test_a_dealer_whose_shares_contradict_its_commitment_is_named_faulty():
    rnd = Round(6, 4, 3, length=50)
    cheat = rnd.members[0]
    # the cheat seals shares of two different polynomials (two dealings) into one blob
    other, _ = deal(
        rnd.ctx, rnd.graph, cheat, rnd.keys[cheat], rnd.public, random.Random(9).randbytes
    )
    good = rnd.blobs[cheat]
    mixed = tuple(ct if i % 2 else other.ciphertexts[i] for i, ct in enumerate(good.ciphertexts))
    blobs = dict(rnd.blobs)
    blobs[cheat] = SharesBlob(
        good.ctx, cheat, good.threshold, good.holders, good.commitments, mixed
    )
    reveals = rnd.reveals(rnd.members, rnd.members)
    verdicts = _verdicts(rnd, rnd.members, blobs, reveals)
    assert all(v == verdicts[0] for v in verdicts)
    assert isinstance(verdicts[0], Incomplete) and verdicts[0].faulty == (cheat,)


def test_never_both_kinds_for_one_dealer():
    rnd = Round(6, 4, 3, length=50)
    h = rnd.members[0]
    dropped = rnd.graph.neighbours(h)[0]
    survivors = [a for a in rnd.members if a != dropped]
    rnd.reveals(survivors, [h])  # h revealed dropped's pairwise shares
    with pytest.raises(SecAggError, match="refusing to reveal the self-mask share"):
        reveal(rnd.ctx, rnd.graph, h, rnd.keys[h], rnd.public, rnd.members, rnd.guards[h])
    # the guard survives a restart through its entries
    restored = RevealGuard(rnd.guards[h].entries())
    with pytest.raises(SecAggError, match="refusing"):
        reveal(rnd.ctx, rnd.graph, h, rnd.keys[h], rnd.public, rnd.members, restored)
    # a holder that reveals the wrong kind anyway: the unmasker refuses to use it
    rnd = Round(6, 4, 3, length=50)
    bad = rnd.members[1]
    honest = rnd.reveals(rnd.members, [a for a in rnd.members if a != bad])
    wrong = tuple(
        (d, PAIR, share_key(rnd.keys[bad], rnd.public[d], rnd.ctx, d, bad, PAIR))
        for d in rnd.graph.holders(bad)
        if d != bad
    )
    rec = recover(
        rnd.ctx, rnd.graph, rnd.members, rnd.blobs, [*honest, RevealSet(rnd.ctx, bad, wrong)]
    )
    assert isinstance(rec, Recovery)
    assert {(hh, d, k) for hh, d, k in rec.refused} == {(bad, d, PAIR) for d, _, _ in wrong}
    assert np.array_equal(rec.unmask(rnd.masked_sum(rnd.members)), rnd.plain_sum(rnd.members))


def test_split_survivors_are_never_unmasked():
    rnd = Round(10, 2, 2, length=20, seed=3)  # degree 2: the graph is one ring
    ring = [rnd.members[0]]
    while len(ring) < 10:  # walk it (bounded: ten steps)
        ring.append(next(b for b in rnd.graph.neighbours(ring[-1]) if b not in ring[-2:]))
    assert rnd.graph.connected(ring[1:])  # one gap: still a path
    split = ring[1:5] + ring[6:]  # two gaps: two pieces whose sums would show
    assert not rnd.graph.connected(split)
    with pytest.raises(SecAggError, match="not connected"):
        reveal(rnd.ctx, rnd.graph, split[0], rnd.keys[split[0]], rnd.public, split, RevealGuard())
    v = recover(rnd.ctx, rnd.graph, split, rnd.blobs, [])
    assert isinstance(v, Incomplete) and "not connected" in v.reason


def test_inputs_for_another_round_are_refused():
    rnd = Round(3, 2, 2, length=4)
    other = Round(3, 2, 2, length=4, round_no=4)
    rs = other.reveals(other.members, other.members)
    with pytest.raises(SecAggError, match="another job or round"):
        recover(rnd.ctx, rnd.graph, rnd.members, rnd.blobs, rs)
    v = recover(rnd.ctx, rnd.graph, rnd.members, other.blobs, rnd.reveals(rnd.members, rnd.members))
    assert isinstance(v, Incomplete)
    assert all(m.reason == "the blob is for another job or round" for m in v.missing)
