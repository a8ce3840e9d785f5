"""Parameters and updates to bytes and back: msgpack frame, zstd-compressed, content-addressed.

Frame (the zstd frame's content): b"GFLP", version (u8), header length (u32 LE), a msgpack
header, then the raw payload. The header is ``[meta, tensors]``: ``meta`` a map (empty for a
model; for an update, who made it for which round of which job: `UpdateMeta`), ``tensors``
the tensors sorted by name, each as ``[kind, name, dtype, shape, block, [segment lengths]]``;
the segments follow in order:

- ``n``  lossless: the raw little-endian bytes
- ``h``  fp16 values, decoded back to ``dtype``
- ``i``  8-bit: one float32 absmax scale per ``block`` values, then the int8 values
- ``q``  the same 8-bit values, coded against a low-rank prediction (see `gfl.fl.lowrank`):
  the block scales, the prediction's factors, then the int8 values minus the predicted ones
  (mod 256). The decoded values are exactly those of ``i``; only fewer bytes are sent.
- ``t``  top-k: sorted uint32 flat indices, then float32 values (the rest are zero)

Payloads stay out of msgpack so that encoding and decoding copy them as little as possible:
decoded lossless arrays are read-only views into the decompressed frame.
Same params and compression give the same bytes, hence the same sha256 (for one zstd
version; `params_hash` hashes the uncompressed frame and so does not depend on zstd).
Decoding is for untrusted input: every declared size is checked against the limit before
anything is allocated, and every failure is one `CodecError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zstandard

from gfl.errors import GflError
from gfl.fl import lowrank

FRAME_VERSION = 2
DEFAULT_MAX = 1 << 30  # 1 GiB of decoded parameters
ZSTD_LEVEL = 1
DEFAULT_BLOCK = 4096
_MAX_NAME = 512
_MAGIC = b"GFLP"
_PREFIX = 9  # magic, version (u8), header length (u32 little-endian)
_MAX_DIMS = 8
_MAX_TENSORS = 100_000
_DTYPES = {
    np.dtype(t).str: np.dtype(t)
    for t in ("<f2", "<f4", "<f8", "<i1", "<i2", "<i4", "<i8", "<u1", "<u2", "<u4", "<u8", "|b1")
}
_FLOATS = {"<f2", "<f4", "<f8"}


class CodecError(GflError):
    """A parameter blob could not be encoded or is malformed, oversized or truncated."""


_META_KEYS = ("author", "base", "chain", "job", "registry", "round")
_SHARD_KEYS = ("shard", "shards")  # only in the frames of a sharded update


@dataclass(frozen=True)
class UpdateMeta:
    """What an update's frame says about itself: the chain and registry, the job and round
    it is for, its author's address and the hash of the model it was computed from. A node
    refuses an update whose meta names anything else than what the chain recorded for it,
    so a copied update hash gains its copier nothing. A sharded update's frames also say
    which shard of how many each one is (`gfl.fl.shards`)."""

    chain: int
    registry: bytes  # 20 bytes
    job: bytes  # 32 bytes
    round: int
    author: bytes  # 20 bytes
    base: bytes  # 32 bytes: hash of M_round as this author held it
    shard: int | None = None  # k of a sharded update's frame k
    shards: int | None = None  # S, the job's shard count (> 1), with ``shard``

    def __post_init__(self) -> None:
        for name, size in (("registry", 20), ("job", 32), ("author", 20), ("base", 32)):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                raise CodecError(f"update meta: {name} must be {size} bytes")
        for name in ("chain", "round"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
                raise CodecError(f"update meta: {name} must be an integer in [0, 2^63)")
        if (self.shard is None) != (self.shards is None):
            raise CodecError("update meta: shard and shards go together")
        if self.shards is not None:
            k, s = self.shard, self.shards
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (k, s)):
                raise CodecError("update meta: shard and shards must be integers")
            assert k is not None
            if not (2 <= s <= 1 << 16 and 0 <= k < s):
                raise CodecError("update meta: shard must be in [0, shards), shards in [2, 2^16]")

    def to_map(self) -> dict[str, Any]:
        keys = _META_KEYS + (_SHARD_KEYS if self.shards is not None else ())
        return {k: getattr(self, k) for k in sorted(keys)}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> UpdateMeta:
        keys = set(m)
        if keys != set(_META_KEYS) and keys != set(_META_KEYS + _SHARD_KEYS):
            raise CodecError("the update's frame does not carry its meta")
        return cls(**m)

    def for_shard(self, k: int, shards: int) -> UpdateMeta:
        """The meta of frame k of this update sharded ``shards`` ways."""
        return dataclasses.replace(self, shard=k, shards=shards)


@dataclass(frozen=True)
class Compression:
    """A parsed compression scheme: 'none', 'fp16', 'int8[:block]' or 'topk:ratio'."""

    kind: str
    block: int = DEFAULT_BLOCK
    ratio: float = 1.0

    @property
    def lossy(self) -> bool:
        return self.kind != "none"


def parse_compression(scheme: str) -> Compression:
    """Parse a compression string from a job spec; raise CodecError with the accepted forms."""
    if not isinstance(scheme, str):
        raise CodecError(f"compression must be a string, got {scheme!r}")
    head, _, arg = scheme.partition(":")
    try:
        if head == "none" and not arg:
            return Compression("none")
        if head == "fp16" and not arg:
            return Compression("fp16")
        if head in ("int8", "8bit"):
            block = int(arg) if arg else DEFAULT_BLOCK
            if not 16 <= block <= 1 << 20:
                raise ValueError
            return Compression("int8", block=block)
        if head == "topk":
            ratio = float(arg)
            if not 0 < ratio <= 1:
                raise ValueError
            return Compression("topk", ratio=ratio)
    except ValueError:
        pass
    raise CodecError(
        f"compression {scheme!r} is not understood; use none, fp16, int8[:block] "
        "(block 16..1048576) or topk:ratio (0 < ratio <= 1)"
    )


@dataclass
class ErrorFeedback:
    """The sender's residuals for lossy encodings: what compression dropped, added back next time.

    Keep one per job on the sending side; it never travels. `state_dict` lets a node persist it.
    """

    residual: dict[str, np.ndarray] = field(default_factory=dict)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.residual.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.residual = {k: np.array(v, dtype=np.float32) for k, v in state.items()}


# -- lossy transforms (shared by encoder and error feedback so both agree exactly) ------


def _int8_quantize(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    flat = x.reshape(-1).astype(np.float32, copy=False)
    n = flat.size
    nblocks = -(-n // block)
    pad = nblocks * block - n
    padded = np.concatenate([flat, np.zeros(pad, np.float32)]) if pad else flat
    blocks = padded.reshape(nblocks, block)
    scales = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))
    q = np.rint(blocks / safe[:, None])
    np.clip(q, -127, 127, out=q)
    return scales, q.astype(np.int8).reshape(-1)[:n]


def _int8_dequantize(scales: np.ndarray, q: np.ndarray, block: int, n: int) -> np.ndarray:
    nblocks = scales.size
    pad = nblocks * block - n
    qf = q.astype(np.float32)
    if pad:
        qf = np.concatenate([qf, np.zeros(pad, np.float32)])
    out: np.ndarray = (qf.reshape(nblocks, block) * scales[:, None]).reshape(-1)[:n]
    return out


def _topk_select(x: np.ndarray, ratio: float) -> np.ndarray:
    """Indices (sorted, uint32) of the k largest |x|; ties resolved by lowest index."""
    flat = x.reshape(-1)
    n = flat.size
    k = min(n, max(1, math.ceil(ratio * n)))
    if k == n:
        return np.arange(n, dtype=np.uint32)
    mag = np.abs(flat)
    thr = np.partition(mag, n - k)[n - k]
    above = np.flatnonzero(mag > thr)
    ties = np.flatnonzero(mag == thr)[: k - above.size]
    return np.sort(np.concatenate([above, ties])).astype(np.uint32)


def _le(a: np.ndarray) -> np.ndarray:
    dt = a.dtype
    if dt.str not in _DTYPES:
        le = dt.newbyteorder("<")
        if le.str not in _DTYPES:
            raise CodecError(f"dtype {dt} cannot be encoded")
        a = a.astype(le)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _raw(a: np.ndarray) -> memoryview:
    """Zero-copy byte view of a contiguous array (also for 0-d and empty arrays)."""
    return a.reshape(-1).view(np.uint8).data


def _encode_entry(
    name: str, arr: np.ndarray, comp: Compression, feedback: ErrorFeedback | None
) -> tuple[list[Any], list[memoryview | bytes]]:
    """(header entry, payload segments) for one tensor."""
    a = _le(np.asarray(arr))
    shape = list(a.shape)
    dstr = a.dtype.str
    if not comp.lossy or dstr not in _FLOATS:
        segs: list[memoryview | bytes] = [_raw(a)]
        return ["n", name, dstr, shape, 0, [len(segs[0])]], segs
    x = a.astype(np.float32, copy=False)
    if feedback is not None and name in feedback.residual:
        res = feedback.residual[name]
        if res.shape == x.shape:
            x = x + res
    block = 0
    kind = {"fp16": "h", "int8": "i", "topk": "t"}[comp.kind]
    if comp.kind == "fp16":
        h = x.astype("<f2")
        segs = [_raw(h)]
        sent = h.astype(np.float32)
    elif comp.kind == "int8":
        block = comp.block
        scales, q = _int8_quantize(x, block)
        segs = [_raw(scales.astype("<f4")), _raw(q)]
        prediction = lowrank.prediction(x, scales, q, block)
        if prediction is not None:
            kind = "q"
            factors, predicted = prediction
            segs = [segs[0], factors, _raw(q.view(np.uint8) - predicted)]
        sent = _int8_dequantize(scales, q, block, x.size).reshape(x.shape)
    else:  # topk
        idx = _topk_select(x, comp.ratio)
        vals = x.reshape(-1)[idx].astype("<f4")
        segs = [_raw(idx.astype("<u4")), _raw(vals)]
        sent = np.zeros(x.size, np.float32)
        sent[idx] = vals
        sent = sent.reshape(x.shape)
    if feedback is not None:
        feedback.residual[name] = (x - sent).astype(np.float32)
    return [kind, name, dstr, shape, block, [len(s) for s in segs]], segs


def encode_frame(
    params: Mapping[str, np.ndarray],
    compression: str = "none",
    *,
    feedback: ErrorFeedback | None = None,
    meta: UpdateMeta | None = None,
) -> bytes:
    """The uncompressed frame: magic, version, header length, msgpack header, raw payload."""
    comp = parse_compression(compression)
    entries, payload = [], []
    for name in sorted(params):
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
            raise CodecError(f"parameter name {name!r} must be a string of 1..{_MAX_NAME} chars")
        entry, segs = _encode_entry(name, params[name], comp, feedback)
        entries.append(entry)
        payload.extend(segs)
    header = msgpack.packb([meta.to_map() if meta else {}, entries], use_bin_type=True)
    return b"".join([_MAGIC, struct.pack("<BI", FRAME_VERSION, len(header)), header, *payload])


def encode_params(
    params: Mapping[str, np.ndarray],
    compression: str = "none",
    *,
    feedback: ErrorFeedback | None = None,
    meta: UpdateMeta | None = None,
    level: int = ZSTD_LEVEL,
) -> bytes:
    """Encode named arrays to a zstd-compressed frame; `feedback` is updated for lossy schemes."""
    frame = encode_frame(params, compression, feedback=feedback, meta=meta)
    # threads=-1: zstd's multi-threaded mode on every core (~2x on 2 cores for big frames); its
    # output is the same bytes whatever the core count (tests/fl/test_codec.py checks)
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, threads=-1)
    return cctx.compress(frame)


def blob_hash(blob: bytes) -> bytes:
    """The content address of a stored blob: sha256 of its bytes."""
    return hashlib.sha256(blob).digest()


def params_hash(params: Mapping[str, np.ndarray]) -> bytes:
    """sha256 of the lossless uncompressed frame: a model hash independent of the zstd version."""
    return hashlib.sha256(encode_frame(params, "none")).digest()


# -- decoding -------------------------------------------------------------------------------


def _shape_count(shape: object) -> int:
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise CodecError(f"shape must be a list of at most {_MAX_DIMS} sizes")
    count = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise CodecError(f"bad dimension {d!r} in shape")
        count *= d
    return count


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise CodecError(msg)


def decode_params(blob: bytes, *, max_bytes: int = DEFAULT_MAX) -> dict[str, np.ndarray]:
    """Decode a blob from `encode_params`; arrays are read-only views where no conversion is due.

    Raises CodecError for anything malformed, truncated, or larger than `max_bytes`
    (compressed, decompressed, or decoded).
    """
    return decode_update(blob, max_bytes=max_bytes)[0]


def decode_update(
    blob: bytes, *, max_bytes: int = DEFAULT_MAX
) -> tuple[dict[str, np.ndarray], UpdateMeta | None]:
    """As `decode_params`, with the frame's `UpdateMeta` (None when it carries none)."""
    _need(isinstance(blob, bytes | bytearray | memoryview), "parameter blob must be bytes")
    _need(len(blob) <= max_bytes, f"blob is {len(blob)} bytes; the limit is {max_bytes}")
    try:
        fp = zstandard.get_frame_parameters(blob)
    except zstandard.ZstdError as e:
        raise CodecError(f"not a zstd frame: {e}") from None
    size = fp.content_size
    _need(
        size not in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR),
        "zstd frame does not declare its size",
    )
    _need(size <= max_bytes, f"blob declares {size} decompressed bytes; the limit is {max_bytes}")
    try:
        frame = zstandard.ZstdDecompressor().decompress(
            blob, max_output_size=size, allow_extra_data=False
        )
    except zstandard.ZstdError as e:
        raise CodecError(f"corrupt or truncated zstd frame: {e}") from None
    _need(len(frame) == size, "zstd frame size does not match its header")
    return _parse_frame(frame, max_bytes)


def _parse_frame(frame: bytes, max_bytes: int) -> tuple[dict[str, np.ndarray], UpdateMeta | None]:
    _need(len(frame) >= _PREFIX and frame[:4] == _MAGIC, "not a GFL parameter frame")
    version, hlen = struct.unpack_from("<BI", frame, 4)
    _need(version == FRAME_VERSION, f"parameter frame version {version} is not supported")
    _need(hlen <= len(frame) - _PREFIX, "parameter frame header is truncated")
    try:
        header = msgpack.unpackb(
            memoryview(frame)[_PREFIX : _PREFIX + hlen],
            raw=False,
            strict_map_key=True,
            max_bin_len=32,
            max_str_len=_MAX_NAME * 8,
            max_array_len=_MAX_TENSORS,
            max_map_len=len(_META_KEYS) + len(_SHARD_KEYS),
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises many exception types on garbage
        raise CodecError(f"parameter frame header is not valid msgpack: {e}") from None
    _need(
        isinstance(header, list) and len(header) == 2 and isinstance(header[0], dict),
        "parameter frame header has the wrong layout",
    )
    meta = UpdateMeta.from_map(header[0]) if header[0] else None
    entries = header[1]
    _need(isinstance(entries, list), "parameter frame header has the wrong layout")
    mv = memoryview(frame)
    offset = _PREFIX + hlen
    out: dict[str, np.ndarray] = {}
    total = 0
    prev = None
    for entry in entries:
        _need(isinstance(entry, list) and len(entry) == 6, "tensor entry has the wrong layout")
        kind, name, dstr, shape, block, lens = entry
        _need(isinstance(name, str) and 0 < len(name) <= _MAX_NAME, "bad tensor name")
        _need(prev is None or name > prev, "tensor names must be unique and sorted")
        prev = name
        _need(isinstance(dstr, str) and dstr in _DTYPES, f"tensor {name!r}: bad dtype {dstr!r}")
        dt = _DTYPES[dstr]
        count = _shape_count(shape)
        total += count * dt.itemsize
        _need(total <= max_bytes, f"decoded parameters exceed the limit of {max_bytes} bytes")
        _need(
            isinstance(lens, list)
            and 1 <= len(lens) <= 3
            and all(isinstance(n, int) and n >= 0 for n in lens),
            f"tensor {name!r}: bad segment lengths",
        )
        segs = []
        for n in lens:
            _need(offset + n <= len(frame), f"tensor {name!r}: payload is truncated")
            segs.append(mv[offset : offset + n])
            offset += n
        out[name] = _decode_entry(kind, name, dt, shape, count, block, segs)
    _need(offset == len(frame), "parameter frame has trailing bytes")
    return out, meta


def _seg(segs: list[memoryview], i: int, n: int, what: str) -> memoryview:
    _need(len(segs) > i and len(segs[i]) == n, f"{what}: expected {n} bytes")
    return segs[i]


_SEGMENTS = {"n": 1, "h": 1, "i": 2, "t": 2, "q": 3}


def _decode_entry(
    kind: object,
    name: str,
    dt: np.dtype[Any],
    shape: list[int],
    count: int,
    block: object,
    segs: list[memoryview],
) -> np.ndarray:
    _need(
        isinstance(kind, str) and _SEGMENTS.get(kind) == len(segs),
        f"tensor {name!r}: wrong segments",
    )
    if kind == "n":
        raw = _seg(segs, 0, count * dt.itemsize, f"tensor {name!r}")
        return np.frombuffer(raw, dtype=dt, count=count).reshape(shape)
    _need(dt.str in _FLOATS, f"tensor {name!r}: lossy entries must have a float dtype")
    if kind == "h":
        raw = _seg(segs, 0, count * 2, f"tensor {name!r}")
        return np.frombuffer(raw, dtype="<f2", count=count).astype(dt).reshape(shape)
    if kind in ("i", "q"):
        if not (isinstance(block, int) and 16 <= block <= 1 << 20):
            raise CodecError(f"tensor {name!r}: bad block")
        nblocks = -(-count // block)
        scales = np.frombuffer(_seg(segs, 0, nblocks * 4, f"tensor {name!r} scales"), "<f4")
        _need(
            bool((np.abs(scales) <= np.finfo(np.float32).max / 128).all()),
            f"tensor {name!r}: non-finite or huge scales",
        )
        values = _seg(segs, len(segs) - 1, count, f"tensor {name!r} values")
        if kind == "i":
            q = np.frombuffer(values, dtype=np.int8)
        else:
            try:
                predicted = lowrank.decode_prediction(shape, segs[1], scales, block)
            except ValueError as exc:
                raise CodecError(f"tensor {name!r}: {exc}") from None
            q = (predicted + np.frombuffer(values, dtype=np.uint8)).view(np.int8)
        return _int8_dequantize(scales, q, block, count).astype(dt, copy=False).reshape(shape)
    if kind == "t":
        _need(len(segs[0]) % 4 == 0, f"tensor {name!r}: bad indices")
        k = len(segs[0]) // 4
        _need(k <= count, f"tensor {name!r}: more values than elements")
        idx = np.frombuffer(segs[0], dtype="<u4")
        vals = np.frombuffer(_seg(segs, 1, k * 4, f"tensor {name!r} values"), dtype="<f4")
        if k:
            _need(
                int(idx[-1]) < count and bool((np.diff(idx.astype(np.int64)) > 0).all()),
                f"tensor {name!r}: indices out of range or not increasing",
            )
        dense = np.zeros(count, dtype=dt)
        dense[idx] = vals
        return dense.reshape(shape)
    raise CodecError(f"tensor {name!r}: unknown entry kind {kind!r}")


def decode_frame(frame: bytes, *, max_bytes: int = DEFAULT_MAX) -> dict[str, np.ndarray]:
    """Decode an uncompressed frame from `encode_frame` (a model blob: its sha256 is the model
    hash committed on chain, whatever zstd version a node runs)."""
    _need(isinstance(frame, bytes | bytearray | memoryview), "parameter frame must be bytes")
    _need(len(frame) <= max_bytes, f"frame is {len(frame)} bytes; the limit is {max_bytes}")
    params, meta = _parse_frame(bytes(frame), max_bytes)
    _need(meta is None, "a model frame carries no update meta")
    return params
