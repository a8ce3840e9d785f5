import contextlib
import struct

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from gfl.fl.codec import (
    CodecError,
    ErrorFeedback,
    blob_hash,
    decode_params,
    encode_params,
    params_hash,
    parse_compression,
)


def sample(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": (rng.standard_normal((64, 33)) * 0.01).astype(np.float32),
        "fc.bias": rng.standard_normal(33).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "half": rng.standard_normal((3, 5)).astype(np.float16),
        "double": rng.standard_normal(10),
        "empty": np.zeros((0, 4), np.float32),
    }


def test_lossless_roundtrip_is_exact_and_deterministic():
    p = sample()
    blob = encode_params(p)
    out = decode_params(blob)
    assert list(out) == sorted(p)
    for k, v in p.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        assert np.array_equal(out[k], v)
    assert encode_params(dict(reversed(list(p.items())))) == blob
    assert blob_hash(blob) == blob_hash(encode_params(sample()))
    assert params_hash(p) == params_hash(out)
    # big-endian and non-contiguous input encode to the same bytes as the little-endian copy
    be = {"a": p["fc.weight"].astype(">f4")[:, ::2]}
    assert encode_params(be) == encode_params({"a": np.ascontiguousarray(p["fc.weight"][:, ::2])})


def test_blob_bytes_do_not_depend_on_the_number_of_cores():
    """encode_params compresses with zstd's multi-threaded mode on every core: two nodes
    with different core counts must still produce the same blob (the same content address)."""
    from gfl.fl.codec import encode_frame

    rng = np.random.default_rng(1)
    p = {"w": (rng.standard_normal(4_000_000) * 1e-3).astype(np.float32)}  # 16 MB: several jobs
    frame = encode_frame(p)
    blob = encode_params(p)
    for workers in (1, 2, 7):
        cctx = zstandard.ZstdCompressor(level=1, write_content_size=True, threads=workers)
        assert cctx.compress(frame) == blob, workers
    assert decode_params(blob)["w"].tobytes() == p["w"].tobytes()


@pytest.mark.parametrize("scheme", ["fp16", "int8", "int8:64"])
def test_lossy_within_stated_error(scheme):
    p = sample()
    out = decode_params(encode_params(p, scheme))
    for k in ("fc.weight", "fc.bias", "double"):
        v = p[k].astype(np.float32).astype(np.float64)
        err = np.abs(out[k] - v)
        if scheme == "fp16":  # round to nearest half: relative 2^-11 (plus subnormal step)
            assert (err <= np.abs(v) * 2.0**-11 + 2.0**-24).all(), k
        else:  # at most half a quantization step, absmax/127/2, of the value's own block
            block = parse_compression(scheme).block
            assert (err.reshape(-1) <= half_steps(v, block)).all(), k
        assert out[k].dtype == p[k].dtype
    assert np.array_equal(out["bn.num_batches_tracked"], p["bn.num_batches_tracked"])


def half_steps(v: np.ndarray, block: int) -> np.ndarray:
    """Per value: half the int8 step of its block (the block's absmax / 127 / 2)."""
    flat = np.abs(v.reshape(-1))
    pad = -flat.size % block
    absmax = np.concatenate([flat, np.zeros(pad)]).reshape(-1, block).max(axis=1)
    return np.repeat(absmax / 127 / 2 * (1 + 1e-6), block)[: flat.size]


@pytest.mark.parametrize("scheme", ["int8:16", "int8:64", "int8"])
@pytest.mark.parametrize("shape", [(7 * 4096 + 13,), (96, 320)])
def test_int8_scales_each_block_by_its_own_largest_value(scheme, shape):
    """Blocks whose magnitudes differ by up to 10^6: a scale per tensor (or per a larger
    block) rounds the small blocks to zero, far outside their own half step."""
    rng = np.random.default_rng(5)
    block = parse_compression(scheme).block
    n = int(np.prod(shape))
    magnitude = 10.0 ** rng.integers(-6, 1, -(-n // block))
    x = (rng.standard_normal(n) * np.repeat(magnitude, block)[:n]).astype(np.float32)
    x = x.reshape(shape)
    out = decode_params(encode_params({"w": x}, scheme))["w"]
    err = np.abs(out.astype(np.float64) - x.astype(np.float64)).reshape(-1)
    assert (err <= half_steps(x, block)).all()
    # the small blocks are reproduced, not flattened to zero
    small = np.repeat(magnitude, block)[:n] <= 1e-5
    assert small.any() and np.count_nonzero(out.reshape(-1)[small]) > 0.9 * small.sum()


def test_topk_keeps_largest_and_error_feedback_accumulates():
    x = np.array([0.1, -5.0, 0.2, 3.0, 0.0, -0.3, 0.05, 1.0], np.float32)
    fb = ErrorFeedback()
    out = decode_params(encode_params({"w": x}, "topk:0.25", feedback=fb))["w"]
    assert np.array_equal(out, np.array([0, -5, 0, 3, 0, 0, 0, 0], np.float32))
    assert np.allclose(fb.residual["w"], x - out)
    # next round: a zero update still sends the largest residual (1.0), then -0.3
    out2 = decode_params(encode_params({"w": np.zeros(8, np.float32)}, "topk:0.25", feedback=fb))[
        "w"
    ]
    assert out2[7] == np.float32(1.0) and out2[5] == np.float32(-0.3)
    # the sum of what was sent plus what is left equals what was meant to be sent
    assert np.allclose(out + out2 + fb.residual["w"], x)


def test_int8_is_much_smaller_than_lossless():
    rng = np.random.default_rng(1)
    p = {"w": (rng.standard_normal(200_000) * 1e-3).astype(np.float32)}
    assert len(encode_params(p, "int8")) * 3 < len(encode_params(p))


def test_parse_compression():
    assert parse_compression("int8:256").block == 256
    assert parse_compression("topk:0.01").ratio == 0.01
    for bad in ("gzip", "topk:0", "topk:2", "int8:3", "fp16:1", ""):
        with pytest.raises(CodecError):
            parse_compression(bad)


def low_rank_update(rows=384, cols=512, rank=6, noise=0.05, seed=1):
    """Like a trained layer's update: a few outer products plus a little noise."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((rows, rank)) * np.linspace(1, 0.2, rank)
    w = u @ rng.standard_normal((rank, cols)) + noise * rng.standard_normal((rows, cols))
    return (w * 1e-3).astype(np.float32)


def header_kinds(blob):
    raw = zstandard.ZstdDecompressor().decompress(blob)
    (hlen,) = struct.unpack_from("<I", raw, 5)
    return {e[1]: e[0] for e in msgpack.unpackb(raw[9 : 9 + hlen])[1]}


def test_int8_low_rank_coding_sends_fewer_bytes_for_the_same_values():
    from gfl.fl.codec import _int8_dequantize, _int8_quantize

    update = {"fc.weight": low_rank_update(), "noise": sample()["fc.weight"]}
    blob = encode_params(update, "int8")
    assert header_kinds(blob) == {"fc.weight": "q", "noise": "i"}
    scales, q = _int8_quantize(update["fc.weight"], 4096)
    plain_bytes = len(zstandard.ZstdCompressor(level=1).compress(q.tobytes()))
    assert len(blob) < 0.7 * plain_bytes  # the int8 values alone, coded without a prediction
    out = decode_params(blob)
    expected = _int8_dequantize(scales, q, 4096, q.size).reshape(384, 512)
    assert np.array_equal(out["fc.weight"], expected)  # exactly plain int8's values


def test_unstructured_updates_stay_plain_int8():
    rng = np.random.default_rng(2)
    blob = encode_params({"w": rng.standard_normal((300, 400)).astype(np.float32)}, "int8")
    assert header_kinds(blob) == {"w": "i"}


def test_low_rank_prediction_is_an_exact_integer_product():
    """Extreme factors still give the integer product that int64 arithmetic gives: the
    float64 matrix product can never round, whatever the BLAS does."""
    from gfl.fl.lowrank import _LOWRANK_MAX_EXP, _LOWRANK_MAX_RANK, _lowrank_predict

    rng = np.random.default_rng(3)
    m, n, r = 40, 70, _LOWRANK_MAX_RANK
    a = rng.choice(np.array([-128, 127, -127], np.int8), (m, r))
    b = rng.choice(np.array([-128, 127], np.int8), (r, n))
    e = rng.integers(0, _LOWRANK_MAX_EXP + 1, r).astype(np.uint8)
    e[0] = 0
    top = int(e.max())
    exact = (a.astype(np.int64) << (top - e.astype(np.int64))) @ b.astype(np.int64)
    assert int(np.abs(exact).max()) < 2**53
    g, block = 3.0, 64
    scales = np.full(-(-m * n // block), g * 2.0**-top * 2**40, np.float32)
    got = _lowrank_predict(g, e, a, b, scales, block).view(np.int8).reshape(m, n)
    want = np.clip(np.rint(exact.astype(np.float64) * (g * 2.0**-top) / scales[0]), -127, 127)
    assert np.array_equal(got, want.astype(np.int8))


def test_bad_low_rank_factors_are_one_codec_error():
    blob = encode_params({"w": low_rank_update()}, "int8")
    raw = bytearray(zstandard.ZstdDecompressor().decompress(blob))
    (hlen,) = struct.unpack_from("<I", raw, 5)
    (entry,) = msgpack.unpackb(raw[9 : 9 + hlen])[1]
    kind, name, dstr, shape, block, lens = entry
    payload = bytes(raw[9 + hlen :])
    scales, factors, values = (
        payload[: lens[0]],
        payload[lens[0] : lens[0] + lens[1]],
        payload[lens[0] + lens[1] :],
    )
    m, n = shape
    r = (len(factors) - 8) // (1 + m + n)

    def with_factors(f):
        lens2 = [len(scales), len(f), len(values)]
        return frame([[kind, name, dstr, shape, block, lens2]], payload=scales + f + values)

    assert np.array_equal(decode_params(with_factors(factors))["w"], decode_params(blob)["w"])
    bad = {
        "segment": factors[:-1],
        "segment ": factors[:8],
        "scale": struct.pack("<d", float("nan")) + factors[8:],
        "scale ": struct.pack("<d", 0.0) + factors[8:],
        "exponents": factors[:8] + bytes([25]) * r + factors[8 + r :],
    }
    for what, f in bad.items():
        with pytest.raises(CodecError, match=what.strip()):
            decode_params(with_factors(f))


def frame(entries, v=2, payload=b"", meta=None):
    header = msgpack.packb([meta or {}, entries], use_bin_type=True)
    raw = b"GFLP" + struct.pack("<BI", v, len(header)) + header + payload
    return zstandard.ZstdCompressor(level=1).compress(raw)


def test_rejects_oversized_declarations_before_allocating():
    blob = encode_params({"w": np.zeros(1000, np.float32)})
    with pytest.raises(CodecError, match="limit"):
        decode_params(blob, max_bytes=100)
    # a shape claiming 2^40 elements backed by 4 bytes
    with pytest.raises(CodecError, match="limit"):
        decode_params(frame([["n", "w", "<f4", [1 << 20, 1 << 20], 0, [4]]], payload=b"\0" * 4))
    # element count vs bytes
    with pytest.raises(CodecError, match="expected 16 bytes"):
        decode_params(frame([["n", "w", "<f4", [4], 0, [12]]], payload=b"\0" * 12))
    # segment longer than the payload, and trailing bytes
    with pytest.raises(CodecError, match="truncated"):
        decode_params(frame([["n", "w", "<f4", [4], 0, [16]]], payload=b"\0" * 12))
    with pytest.raises(CodecError, match="trailing"):
        decode_params(frame([["n", "w", "<f4", [1], 0, [4]]], payload=b"\0" * 8))
    # top-k with an out-of-range index
    idx = np.array([9], "<u4").tobytes()
    with pytest.raises(CodecError, match="range"):
        decode_params(frame([["t", "w", "<f4", [4], 0, [4, 4]]], payload=idx + b"\0" * 4))
    # zstd frame without a declared size
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    with pytest.raises(CodecError, match="declare"):
        decode_params(cctx.compress(b"GFLP"))
    good = encode_params({"w": np.zeros(10, np.float32)})
    with pytest.raises(CodecError):
        decode_params(good + b"junk")
    for bad in (
        [["n", "w", "<O", [1], 0, [1]]],
        [["z", "w", "<f4", [1], 0, [4]]],
        [["n", "b", "<f4", [], 0, [4]], ["n", "a", "<f4", [], 0, [4]]],
    ):
        with pytest.raises(CodecError):
            decode_params(frame(bad, payload=b"\0" * 8))
    with pytest.raises(CodecError, match="version"):
        decode_params(frame([], v=1))


def test_an_update_frame_names_its_author_and_a_model_frame_nothing():
    from gfl.fl.codec import UpdateMeta, decode_frame, decode_update, encode_frame

    meta = UpdateMeta(
        chain=31337, registry=b"r" * 20, job=b"j" * 32, round=3, author=b"a" * 20, base=b"b" * 32
    )
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    got, got_meta = decode_update(encode_params(params, "int8", meta=meta))
    assert got_meta == meta and got["w"].shape == (2, 3)
    assert decode_update(encode_params(params))[1] is None
    with pytest.raises(CodecError, match="meta"):
        decode_frame(encode_frame(params, meta=meta))  # a model carries no author
    with pytest.raises(CodecError, match="meta"):  # a partial meta map is refused
        decode_params(frame([["n", "w", "<f4", [1], 0, [4]]], payload=b"\0" * 4, meta={"round": 1}))
    with pytest.raises(CodecError, match="author"):
        UpdateMeta(chain=1, registry=b"r" * 20, job=b"j" * 32, round=0, author=b"a", base=b"b" * 32)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_codec_error_only(data):
    with pytest.raises(CodecError):
        decode_params(data)


BLOB = encode_params(sample(), "int8:64")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(BLOB) - 1))
def test_truncated_blobs_raise_codec_error(cut):
    with pytest.raises(CodecError):
        decode_params(BLOB[:cut])


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(BLOB) - 1), st.integers(1, 255))
def test_corrupted_blobs_never_crash(pos, flip):
    bad = bytearray(BLOB)
    bad[pos] ^= flip
    try:
        out = decode_params(bytes(bad))
    except CodecError:
        return
    assert isinstance(out, dict)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["n", "h", "i", "t", "q"]),
            st.text(max_size=4),
            st.sampled_from(["<f4", "<f2", "<i8", "x"]),
            st.lists(st.integers(-2, 1 << 33), max_size=3),
            st.integers(-1, 1 << 21),
            st.lists(st.integers(-1, 64), max_size=3),
        ),
        max_size=3,
    ),
    st.binary(max_size=64),
)
def test_structured_garbage_frames_raise_only_codec_error(entries, payload):
    with contextlib.suppress(CodecError):
        out = decode_params(frame([list(e) for e in entries], payload=payload), max_bytes=1 << 20)
        assert all(isinstance(v, np.ndarray) for v in out.values())
