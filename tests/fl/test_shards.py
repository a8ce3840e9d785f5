"""Shard layouts, manifests, aggregator draws and the round-mode rule (gfl/fl/shards.py), and
the property sharded rounds stand on: reducing shard by shard gives the bits of reducing the
whole model, for every per-coordinate strategy and every compression."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter

import numpy as np
import pytest

from gfl.fl.codec import UpdateMeta, decode_update, encode_params
from gfl.fl.shards import (
    Mode,
    ShardError,
    aggregators,
    decode_manifest,
    encode_manifest,
    encode_update,
    layout_of,
    make_layout,
    manifest_hashes,
    quorum,
    round_mode,
    shard_count,
    word_ranges,
)
from gfl.fl.spec import JobSpec, SpecError
from gfl.fl.strategies import STRATEGIES, ClientUpdate, make_strategy
from gfl.fl.strategies.base import apply_delta, canonical

SHAPES = {
    "conv.weight": (32, 1, 5, 5),
    "conv.bias": (32,),
    "fc.weight": (64, 80),
    "fc.bias": (64,),
    "out.weight": (10, 64),
    "out.bias": (10,),
    "steps": (),  # a 0-d buffer (BatchNorm's num_batches_tracked)
    "empty": (0, 4),
}


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
    out["steps"] = np.array(7, dtype=np.int64)
    return out


META = UpdateMeta(
    chain=1,
    registry=b"\x01" * 20,
    job=b"\x02" * 32,
    round=3,
    author=b"\x03" * 20,
    base=b"\x04" * 32,
)


def test_the_derived_shard_count_follows_the_model_size():
    assert shard_count(1) == 1
    assert shard_count(1 << 18) == 1
    assert shard_count((1 << 18) + 1) == 2
    assert shard_count(1_663_370) == 7  # the MNIST CNN
    assert shard_count(10**12) == 256
    assert shard_count(10**12, requested=3) == 3


@pytest.mark.parametrize("s", [1, 2, 3, 5, 8, 40])
def test_a_layout_covers_every_row_once_in_order_and_is_balanced(s):
    params = model()
    layout = layout_of(params, s)
    assert layout.count == s
    joined = layout.join([layout.split(params, k) for k in range(layout.count)])
    assert set(joined) == set(params)
    for name, a in params.items():
        assert joined[name].shape == a.shape and np.array_equal(joined[name], a)
    rows: dict[str, list[tuple[int, int]]] = {}
    for shard in layout.shards:
        assert shard, "no shard is empty"
        for p in shard:
            rows.setdefault(p.tensor, []).append((p.start, p.stop))
    for name, spans in rows.items():
        n = SHAPES[name][0] if SHAPES[name] else 1
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    sizes = [sum(p.cut(params[p.tensor]).size for p in shard) for shard in layout.shards]
    widest_row = max(int(np.prod(s_[1:])) for s_ in SHAPES.values() if s_)
    assert max(sizes) - min(sizes) <= 2 * widest_row, sizes


@pytest.mark.parametrize("s", [1, 2, 3, 8, 40])
def test_a_shards_words_are_a_contiguous_range_of_the_flattened_model(s):
    """Secure aggregation masks the model as one vector (tensors by name, C order): shard k
    of the layout is exactly its words [a_k, b_k), the ranges tiling the vector in order."""
    from gfl.fl.secagg import flatten

    params = {n: np.asarray(a, dtype=np.float64) for n, a in model(5).items()}
    layout = layout_of(params, s)
    ranges = word_ranges(layout, params)
    vector = flatten(params)
    assert ranges[0][0] == 0 and ranges[-1][1] == vector.size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    for k, (a, b) in enumerate(ranges):
        pieces = layout.split(params, k)
        names = [p.name for p in layout.shards[k]]  # in shard order, not sorted
        words = [np.asarray(pieces[n]).reshape(-1) for n in names]
        assert np.array_equal(vector[a:b], np.concatenate(words) if words else vector[a:a])


def test_the_layout_is_a_function_of_shapes_only_and_never_has_more_shards_than_rows():
    a, b = layout_of(model(1), 4), layout_of(model(2), 4)
    assert a == b
    tiny = make_layout({"w": (3, 2), "b": (3,)}, 100)
    assert tiny.count == 6
    assert [len(s) for s in tiny.shards] == [1] * 6


def test_a_manifest_commits_to_its_shards_and_is_checked():
    hashes = [bytes([k]) * 32 for k in range(3)]
    m = encode_manifest(hashes)
    assert m[:4] == b"GFLS" and len(m) == 6 + 96
    assert decode_manifest(m, 3) == hashes
    assert manifest_hashes(m) == hashes
    assert manifest_hashes(encode_params(model())) is None  # an update frame is no manifest
    with pytest.raises(ShardError, match="layout has 4"):
        decode_manifest(m, 4)
    with pytest.raises(ShardError, match="length"):
        decode_manifest(m + b"x", 3)
    with pytest.raises(ShardError):
        decode_manifest(b"GFLP" + m[4:], 3)
    with pytest.raises(ShardError):
        encode_manifest(hashes[:1])


def test_a_sharded_update_is_one_frame_per_shard_whose_meta_says_which():
    params, layout = model(), layout_of(model(), 3)
    blobs = encode_update(params, layout, "int8", meta=META)
    assert decode_manifest(blobs.manifest, 3) == [hashlib.sha256(p).digest() for p in blobs.parts]
    parts = []
    for k, part in enumerate(blobs.parts):
        arrays, meta = decode_update(part)
        assert meta == META.for_shard(k, 3) and meta.to_map()["shard"] == k
        assert set(arrays) == {p.name for p in layout.shards[k]}
        parts.append(arrays)
    joined = layout.join(parts)
    assert {n: a.shape for n, a in joined.items()} == {n: a.shape for n, a in params.items()}
    # the same bytes again: encoding is deterministic
    assert encode_update(params, layout, "int8", meta=META) == blobs


def test_aggregators_are_drawn_from_the_seed_the_same_everywhere():
    authors = [f"0x{i:040x}" for i in range(1, 21)]
    seed = hashlib.sha256(b"seed").digest()
    picks = [aggregators(seed, k, authors, 3) for k in range(8)]
    assert all(len(set(p)) == 3 and set(p) <= set(authors) for p in picks)
    assert picks == [aggregators(seed, k, list(reversed(authors)), 3) for k in range(8)]
    assert len({tuple(p) for p in picks}) > 1, "shards get different aggregators"
    other = [aggregators(hashlib.sha256(b"other").digest(), k, authors, 3) for k in range(8)]
    assert other != picks
    assert set(aggregators(seed, 0, authors[:2], 3)) == set(authors[:2])  # fewer: all of them
    for n, shards in ((20, 8), (32, 7), (5, 7), (3, 2)):  # each author its share, no more
        ring = [f"0x{i:040x}" for i in range(1, n + 1)]
        load = Counter(a for k in range(shards) for a in aggregators(seed, k, ring, 3))
        assert max(load.values()) <= -(-shards * min(3, n) // n), (n, shards, load)
    assert [quorum(r) for r in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


def test_the_round_mode_rule():
    def mode(aggregation, shards, n, replicas=3, cw=True):
        return round_mode(aggregation, shards, n, replicas, coordinatewise=cw)

    assert mode("auto", 1, 100) is Mode.ALL  # one shard: nothing to split
    assert mode("auto", 7, 6) is Mode.ALL  # |S_r| = 2 * replicas
    assert mode("auto", 7, 7) is Mode.SHARDED
    assert mode("sharded", 7, 2) is Mode.SHARDED
    assert mode("all", 7, 100) is Mode.ALL
    assert mode("auto", 7, 100, cw=False) is Mode.ALL  # Krum


def test_the_spec_refuses_sharding_a_strategy_that_is_not_per_coordinate():
    base = JobSpec(name="x", model="mlp", dataset="digits", rounds=1)
    assert (base.aggregation, base.replicas, base.shards) == ("auto", 3, 0)
    with pytest.raises(SpecError, match="per-coordinate"):
        base.replace(strategy="krum", aggregation="sharded")
    base.replace(strategy="krum", aggregation="auto")  # auto stays all-to-all for Krum
    for bad in ({"aggregation": "ring"}, {"replicas": 0}, {"replicas": 10}, {"shards": 257}):
        with pytest.raises(SpecError):
            base.replace(**bad)
    assert base.replace(shards=4).spec_hash != base.spec_hash


COORDINATEWISE = sorted(n for n, cls in STRATEGIES.items() if cls.coordinatewise)


@pytest.mark.parametrize("compression", ["none", "int8", "topk:0.3", "fp16"])
@pytest.mark.parametrize("name", COORDINATEWISE)
def test_reducing_shard_by_shard_gives_the_bits_of_the_whole(name, compression):
    """The whole model from decoded shard frames, and the shards reduced alone then joined:
    the same bytes, two rounds running (the server state carries over)."""
    g = model(9)
    layout = layout_of(g, 5)
    whole, parts_way = make_strategy(name), make_strategy(name)
    for rnd in range(2):
        ups = []
        for i in range(5):
            delta = {n: (a * 0 + np.float32(0.01 * (i + 1))).astype(a.dtype) for n, a in g.items()}
            delta["fc.weight"] = np.random.default_rng(i + rnd).normal(size=(64, 80)).astype("f4")
            blobs = encode_update(delta, layout, compression, meta=META)
            shards = [decode_update(p)[0] for p in blobs.parts]
            ups.append((f"0x{i + 1:040x}", 10 + i, shards))
        full = [ClientUpdate(a, n, layout.join(shards)) for a, n, shards in ups]
        expected = whole.aggregate(g, full)
        reduced = []
        for k in range(layout.count):
            template = layout.split(g, k)
            pieces = [ClientUpdate(a, n, shards[k]) for a, n, shards in ups]
            reduced.append(parts_way.reduce(template, canonical(template, pieces)))
        got = apply_delta(g, parts_way.server_step(layout.join(reduced)))
        for n in g:
            assert got[n].tobytes() == expected[n].tobytes(), (name, compression, n)
        g = expected
