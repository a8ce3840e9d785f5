"""The aggregation arithmetic, written from docs/protocol.md alone, reproduces a devnet job.

The devnet (real node processes, a real chain) runs a FedAvg job and a Median job; the
test then takes each job's exported bundle and re-derives every round with code written
here from the protocol page — frame encoding (section 4), update decoding, the order and
the operations of section 6 — importing nothing from gfl's codec or strategies. Every
model hash must match the one the chain finalized, bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zstandard

pytestmark = pytest.mark.slow


# -- section 4, from the page ------------------------------------------------------------


def model_frame(tensors: dict[str, np.ndarray]) -> bytes:
    """4.1: "GFLP", u8 2, u32le header length, msgpack([{}, entries]), payload."""
    entries, payload = [], []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        entries.append(["n", name, a.dtype.newbyteorder("<").str, list(a.shape), 0, [len(raw)]])
        payload.append(raw)
    header = msgpack.packb([{}, entries], use_bin_type=True)
    return b"GFLP" + struct.pack("<BI", 2, len(header)) + header + b"".join(payload)


def read_frame(frame: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """A lossless frame's meta and tensors."""
    assert frame[:4] == b"GFLP" and frame[4] == 2
    (hlen,) = struct.unpack_from("<I", frame, 5)
    meta, entries = msgpack.unpackb(frame[9 : 9 + hlen], raw=False)
    offset, out = 9 + hlen, {}
    for kind, name, dtype, shape, _block, (n,) in entries:
        assert kind == "n", "the jobs of this test send lossless updates"
        out[name] = np.frombuffer(frame[offset : offset + n], dtype=dtype).reshape(shape)
        offset += n
    return meta, out


def update_of(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """4.2: an update blob is one zstd frame around an update frame."""
    return read_frame(zstandard.ZstdDecompressor().decompress(blob))


# -- section 6, from the page --------------------------------------------------------------


def fedavg_delta(updates: list[tuple[int, dict]], name: str) -> np.ndarray:
    weights = [float(w) for w, _ in updates]
    total = math.fsum(weights)
    acc = np.zeros(np.shape(updates[0][1][name]), dtype=np.float64)
    for w, d in updates:
        q = w / total
        acc = acc + np.asarray(d[name], dtype=np.float64) * q
    return acc


def median_delta(updates: list[tuple[int, dict]], name: str) -> np.ndarray:
    stacked = np.sort(np.stack([np.asarray(d[name], np.float64) for _, d in updates]), axis=0)
    n = len(updates)
    if n % 2:
        return stacked[n // 2]
    return (stacked[n // 2 - 1] + stacked[n // 2]) / 2


def next_model(model: dict, updates: list[tuple[int, dict]], strategy: str) -> dict:
    delta = fedavg_delta if strategy == "fedavg" else median_delta
    out = {}
    for name, g in model.items():
        d = delta(updates, name)
        if g.dtype.kind == "f":  # step 4: rounded to the tensor's precision
            d = d.astype(g.dtype).astype(np.float64)
        v = np.asarray(g, np.float64) + d
        if g.dtype.kind in "iub":
            v = np.rint(v)
        out[name] = v.astype(g.dtype)
    return out


def rederive(bundle: Path, strategy: str) -> list[tuple[str, str]]:
    """(finalized, re-derived) model hash of every finalized round of the bundle."""
    manifest = json.loads((bundle / "bundle.json").read_text())

    def blob(h: str) -> bytes:
        data = (bundle / "blobs" / h).read_bytes()
        assert hashlib.sha256(data).hexdigest() == h
        return data

    _, model = read_frame(blob(manifest["model0"]))
    pairs = []
    for rd in manifest["rounds"]:
        if rd["decision"] != "finalized":
            continue
        mask = bytes.fromhex(rd["mask"] or "")
        used = [
            u
            for u in rd["updates"]
            if not (mask and mask[u["position"] // 8] >> (u["position"] % 8) & 1)
        ]
        used.sort(key=lambda u: u["author"].lower())  # 6.1: by author address
        updates = [(u["samples"], update_of(blob(u["hash"]))[1]) for u in used]
        model = next_model(model, updates, strategy)
        pairs.append((rd["model"], hashlib.sha256(model_frame(model)).hexdigest()))
    return pairs


@pytest.mark.parametrize("strategy", ["fedavg", "median"])
def test_every_finalized_model_is_rederived_bit_for_bit_from_the_page(tmp_path, strategy):
    from gfl.cli.bundle import export_bundle
    from gfl.node.devnet import demo_spec, running_devnet, watch_job

    with running_devnet(3, root=tmp_path / "net", prefer_anvil=False) as net:
        spec = demo_spec(3, data="digits", rounds=3, allow=[n.address for n in net.nodes]).replace(
            strategy=strategy, compression="none", min_updates=3
        )
        job = net.client(0).publish(spec_dict=spec.to_dict())
        watch_job(net, job["job_id"], timeout=300, out=io.StringIO())
        export_bundle(net.client(0), job["job_id"], tmp_path / "bundle")
    pairs = rederive(tmp_path / "bundle", strategy)
    assert len(pairs) == 3
    for finalized, derived in pairs:
        assert derived == finalized
