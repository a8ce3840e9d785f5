import argparse
import json

import pytest
import torch
from support import mnist_dir

from gfl.cli.main import main
from gfl.cli.simulate import register
from gfl.errors import GflError
from gfl.fl.spec import JobSpec
from gfl.simulate.engine import Progress, simulate
from gfl.simulate.ray_backend import RayOptions

torch.set_num_threads(1)


def test_fedavg_on_digits_with_5_clients_reaches_95_percent(tmp_path):
    spec = JobSpec(
        name="digits-fedavg",
        model="mlp",
        dataset="digits",
        rounds=15,
        model_kwargs={"in_features": 64},
        lr=0.1,
        batch_size=16,
        local_epochs=2,
    )
    out = tmp_path / "m.csv"
    rows = simulate(
        spec, num_clients=5, fraction=1.0, partition="iid", metrics_path=out, target_accuracy=0.95
    )
    assert rows[-1]["test_accuracy"] >= 0.95, rows[-1]
    assert out.read_text().splitlines()[0].startswith("round,clients")
    assert len(out.read_text().splitlines()) == len(rows) + 1
    # the whole run is deterministic: same spec, same model hashes
    again = simulate(spec, num_clients=5, fraction=1.0, partition="iid", target_accuracy=0.95)
    assert [r["model_hash"] for r in again] == [r["model_hash"] for r in rows]


def test_cli_with_fraction_compression_and_robust_strategy(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "m.json"
    args = parser.parse_args(
        [
            "simulate",
            "--clients",
            "6",
            "--fraction",
            "0.5",
            "--rounds",
            "2",
            "--partition",
            "dirichlet:1.0",
            "--compression",
            "int8",
            "--strategy",
            "trimmed_mean",
            "--strategy-kwargs",
            '{"beta": 0.2}',
            "--lr",
            "0.1",
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    rows = json.loads(out.read_text())
    assert [r["clients"] for r in rows] == [3, 3]
    assert "round    2/2" in capsys.readouterr().err
    bad = parser.parse_args(["simulate", "--strategy", "nope"])
    assert bad.func(bad) == 2
    assert "strategy 'nope' is unknown" in capsys.readouterr().err
    bad = parser.parse_args(["simulate", "--device", "meta", "--workers", "2"])
    assert bad.func(bad) == 2
    assert "device 'meta': use cpu, cuda" in capsys.readouterr().err
    bad = parser.parse_args(["simulate", "--client-gpus", "0.5"])
    assert bad.func(bad) == 2
    assert "need --backend ray" in capsys.readouterr().err


def test_the_default_job_learns(capsys):
    assert main(["simulate"]) == 0
    out, err = capsys.readouterr()
    acc = float(out.split("final test accuracy ")[1].split(",")[0])
    assert acc >= 0.9, out
    assert "round   10/10" in err and "ETA" in err


def test_a_cnn_trains_the_same_models_whatever_the_caller_s_threads_or_the_workers():
    """Convolutions sum in another order on 2 threads than on 1: every backend trains each
    client on `threads` torch threads, so the caller's setting does not leak into the models."""
    spec = JobSpec(
        name="digits-cnn",
        model="cnn",
        dataset="digits",
        rounds=2,
        model_kwargs={"image_size": 8},
        lr=0.1,
        batch_size=32,
        compression="int8",  # error feedback: the per-client order must be kept
    )
    kw = {"num_clients": 6, "fraction": 0.5, "partition": "dirichlet:0.5"}
    pooled = simulate(spec, workers=2, **kw)
    torch.set_num_threads(2)
    try:
        here = simulate(spec, **kw)
        assert torch.get_num_threads() == 2  # restored after training
        two = simulate(spec, threads=2, **kw)
    finally:
        torch.set_num_threads(1)
    assert len(pooled) == 2
    assert [r["model_hash"] for r in here] == [r["model_hash"] for r in pooled]
    assert [r["upload_bytes"] for r in here] == [r["upload_bytes"] for r in pooled]
    assert two[-1]["model_hash"] != here[-1]["model_hash"]  # threads are part of the seed


def test_progress_counts_clients_and_gives_an_eta():
    spec = JobSpec(
        name="p", model="mlp", dataset="digits", rounds=2, model_kwargs={"in_features": 64}
    )
    seen: list[Progress] = []
    simulate(spec, num_clients=4, fraction=0.5, progress=seen.append)
    live = [(p.round, p.clients_done) for p in seen if p.row is None]
    assert live == [(1, 1), (1, 2), (2, 1), (2, 2)]
    ends = [p for p in seen if p.row is not None]
    assert [p.row["round"] for p in ends] == [1, 2]
    assert ends[0].eta_s is not None and ends[0].eta_s > 0 and ends[-1].eta_s == 0
    assert all(p.rounds == 2 and p.clients == 2 and p.retried == 0 for p in seen)


def test_missing_mnist_says_which_flags_fix_it(tmp_path, capsys):
    code = main(["simulate", "--dataset", "mnist", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(tmp_path) in err and err.endswith("--data-root DIR, or --download")


def test_mnist_from_the_shared_copy(capsys):
    args = ["simulate", "--dataset", "mnist", "--data-root", str(mnist_dir())]
    args += ["--model-kwargs", '{"in_features": 784}', "--clients", "100", "--fraction", "0.02"]
    assert main([*args, "--rounds", "1", "--epochs", "1"]) == 0
    assert "1 rounds, final test accuracy" in capsys.readouterr().out


def test_bad_settings_are_refused_before_anything_starts():
    spec = JobSpec(name="x", model="mlp", dataset="digits", rounds=1)
    for kw, match in (
        ({"backend": "slurm"}, "backend 'slurm' is unknown"),
        ({"threads": 0}, "threads must be"),
        ({"fraction": 0.0}, "0 < fraction <= 1"),
        ({"partition": "stripes", "workers": 2}, "partition scheme 'stripes' is not understood"),
        ({"backend": "processes", "ray_options": RayOptions()}, "need the ray backend"),
    ):
        with pytest.raises(GflError, match=match):
            simulate(spec, num_clients=2, **kw)
