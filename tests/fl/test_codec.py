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
        else:  # at most half a quantization step, absmax/127/2, per block (one block here)
            assert err.max() <= np.abs(v).max() / 127 / 2 * (1 + 1e-6), k
        assert out[k].dtype == p[k].dtype
    assert np.array_equal(out["bn.num_batches_tracked"], p["bn.num_batches_tracked"])


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


def frame(entries, v=1, payload=b""):
    header = msgpack.packb(entries, use_bin_type=True)
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
        decode_params(frame([], v=2))


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
            st.sampled_from(["n", "h", "i", "t"]),
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
