"""Aggregation and decoding give the same bits whatever the CPU's vector units.

Two processes run the same strategies on the same updates (every lossy encoding decoded
first, the int8 low-rank path through BLAS included): one as numpy, torch and OpenBLAS pick
their kernels on this machine (AVX2 / AVX-512 here), one with those kernels switched off
(``NPY_DISABLE_CPU_FEATURES``, ``ATEN_CPU_CAPABILITY=default``, ``OPENBLAS_CORETYPE``). Every
model hash must be equal: honest nodes on different machines commit the same model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import hashlib, json
import numpy as np
from gfl.fl.codec import decode_params, encode_frame, encode_params
from gfl.fl.strategies import ClientUpdate, make_strategy

rng = np.random.default_rng(7)
shapes = {"a.w": (300, 257), "a.b": (257,), "b.w": (64, 10), "c": (3, 3, 5, 5)}
base = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
def low_rank(shape):  # like a trained layer's delta: the int8 low-rank coding kicks in
    if len(shape) != 2:
        return rng.standard_normal(shape).astype(np.float32) * 1e-3
    u, v = rng.standard_normal((shape[0], 4)), rng.standard_normal((4, shape[1]))
    return (u @ v * 1e-3 + rng.standard_normal(shape) * 1e-5).astype(np.float32)
out = {}
for comp in ("none", "fp16", "int8", "int8:64", "topk:0.1"):
    ups = []
    for i in range(5):
        delta = {k: low_rank(s) for k, s in shapes.items()}
        blob = encode_params(delta, comp)
        dec = decode_params(blob)
        out[f"decode/{comp}/{i}"] = hashlib.sha256(encode_frame(dec)).hexdigest()
        ups.append(ClientUpdate(f"0x{i:040x}", 10 + 7 * i, dec))
    for name, kw in [("fedavg", {}), ("fedavgm", {}), ("fedadam", {}), ("fedyogi", {}),
                     ("median", {}), ("trimmed_mean", {"beta": 0.2}), ("krum", {"f": 1}),
                     ("multikrum", {"f": 1})]:
        strategy = make_strategy(name, kw)
        params = base
        for _ in range(2):  # twice: server state (momentum, moments) enters the second
            params = strategy.aggregate(params, ups)
        out[f"{name}/{comp}"] = hashlib.sha256(encode_frame(params)).hexdigest()
info = np.lib.introspect.opt_func_info(func_name="add", signature="float64.*")
out["kernel"] = info["add"]["ddd"]["current"]
print(json.dumps(out))
"""

PLAIN = {"NPY_DISABLE_CPU_FEATURES": "", "ATEN_CPU_CAPABILITY": "", "OPENBLAS_CORETYPE": ""}
NO_VECTOR_UNITS = {
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
    "ATEN_CPU_CAPABILITY": "default",
    "OPENBLAS_CORETYPE": "Prescott",
}


def _run(env: dict[str, str]) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if k not in PLAIN}
    full.update({k: v for k, v in env.items() if v})
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_every_hash_is_the_same_with_and_without_the_cpu_s_vector_kernels():
    plain, scalar = _run(PLAIN), _run(NO_VECTOR_UNITS)
    assert scalar.pop("kernel").startswith("baseline")  # the switch did change the kernels
    plain.pop("kernel")
    assert len(plain) == 25 + 40
    differing = sorted(k for k in plain if plain[k] != scalar[k])
    assert not differing, differing
