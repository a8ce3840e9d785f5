"""Codec benchmark: encode/decode throughput and size of a ~10M-parameter update.

Baselines measured in the same run: Flower's wire format (flwr.common.ndarray_to_bytes, i.e.
np.save per array; np.save directly when flwr is missing) and a raw memory copy.

The update is realistic by default: the delta of a 784-3200-2300-10 MLP (9.9M parameters)
after --steps SGD steps on MNIST from /work/shared/data/mnist (or --data-root). With
--update gaussian it is N(0, 1e-3^2) noise instead (a harder case for compression).

    .venv/bin/python bench/codec.py [--update trained|gaussian] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gfl.fl import codec
from gfl.fl.codec import decode_params, encode_params

# ../shared/data/mnist beside the checkout (see its README)
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def trained_update(steps: int, data_root: str) -> dict[str, np.ndarray]:
    import torch

    from gfl.fl.data import load_dataset
    from gfl.fl.models import build_model, get_params

    torch.manual_seed(0)
    model = build_model("mlp", in_features=784, hidden=3200, layers=1, num_classes=2300)
    model = torch.nn.Sequential(model, torch.nn.ReLU(), torch.nn.Linear(2300, 10))
    before = get_params(model)
    ds = load_dataset("mnist", root=data_root, train=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(ds), 64)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(ds.x[idx])), torch.from_numpy(ds.y[idx])
        )
        loss.backward()
        opt.step()
    after = get_params(model)
    return {k: after[k] - before[k] for k in before}


def gaussian_update(n: int = 10_000_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w": (rng.standard_normal(n) * 1e-3).astype(np.float32)}


def best(fn, repeat: int) -> tuple[float, object]:
    t, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def flower_pair():
    try:
        from flwr.common import bytes_to_ndarray, ndarray_to_bytes

        return "flwr ndarray_to_bytes (np.save)", ndarray_to_bytes, bytes_to_ndarray
    except Exception:  # flwr not installed: the same thing by hand

        def enc(a):
            b = io.BytesIO()
            np.save(b, a, allow_pickle=False)
            return b.getvalue()

        return "np.save", enc, lambda b: np.load(io.BytesIO(b), allow_pickle=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--update", choices=["trained", "gaussian"], default="trained")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--data-root", default=str(SHARED_MNIST))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    params = (
        trained_update(args.steps, args.data_root)
        if args.update == "trained"
        else gaussian_update()
    )
    nparams = sum(v.size for v in params.values())
    raw = sum(v.nbytes for v in params.values())
    print(
        f"# {args.update} update: {nparams:,} parameters, {raw / 1e6:.1f} MB float32; "
        f"{platform.machine()} Python {platform.python_version()}, best of {args.repeat}"
    )

    rows = []
    t_copy, _ = best(lambda: {k: v.copy() for k, v in params.items()}, args.repeat)
    rows.append(("raw memory copy", raw, t_copy, t_copy))
    label, fenc, fdec = flower_pair()
    t_e, blobs = best(lambda: [fenc(v) for v in params.values()], args.repeat)
    t_d, _ = best(lambda: [fdec(b) for b in blobs], args.repeat)
    npsave = sum(len(b) for b in blobs)
    rows.append((label, npsave, t_e, t_d))
    for scheme, level in (
        ("none", 1),
        ("none", 3),
        ("fp16", 1),
        ("int8", 1),
        ("int8:256", 1),
        ("topk:0.01", 1),
    ):
        t_e, blob = best(lambda s=scheme, lv=level: encode_params(params, s, level=lv), args.repeat)
        t_d, _ = best(lambda b=blob: decode_params(b), args.repeat)
        rows.append((f"gfl {scheme} zstd-{level}", len(blob), t_e, t_d))
    # int8 as it was before the low-rank prediction (same values, no factors): the codec's
    # size threshold raised past every tensor
    plain_int8 = codec._LOWRANK_MIN
    codec._LOWRANK_MIN = 1 << 62
    try:
        t_e, blob = best(lambda: encode_params(params, "int8"), args.repeat)
        t_d, _ = best(lambda b=blob: decode_params(b), args.repeat)
        rows.append(("gfl int8, no prediction, zstd-1", len(blob), t_e, t_d))
    finally:
        codec._LOWRANK_MIN = plain_int8

    print(
        f"{'encoding':34} {'bytes':>12} {'vs np.save':>10} {'enc GB/s':>9} {'dec GB/s':>9}"
        f" {'enc vs copy':>11}"
    )
    for name, size, te, td in rows:
        print(
            f"{name:34} {size:12,} {npsave / size:9.2f}x {raw / te / 1e9:9.2f} "
            f"{raw / td / 1e9:9.2f} {te / t_copy:10.1f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
