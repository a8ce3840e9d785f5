import argparse
import json

import torch

from gfl.fl.spec import JobSpec
from gfl.simulate.engine import register, simulate

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
    assert "round    2" in capsys.readouterr().err
    bad = parser.parse_args(["simulate", "--strategy", "nope"])
    assert bad.func(bad) == 2
    assert "strategy 'nope' is unknown" in capsys.readouterr().err
    bad = parser.parse_args(["simulate", "--device", "meta", "--workers", "2"])
    assert bad.func(bad) == 2
    assert "device 'meta': use cpu, cuda" in capsys.readouterr().err


def test_worker_processes_train_the_same_models_as_one_process():
    spec = JobSpec(
        name="digits-workers",
        model="mlp",
        dataset="digits",
        rounds=3,
        model_kwargs={"in_features": 64, "hidden": 32},
        lr=0.1,
        batch_size=32,
        compression="int8",  # error feedback: the per-client order must be kept
    )
    kw = {"num_clients": 6, "fraction": 0.5, "partition": "dirichlet:0.5"}
    here = simulate(spec, **kw)
    pooled = simulate(spec, workers=2, **kw)
    assert len(pooled) == 3
    assert [r["model_hash"] for r in pooled] == [r["model_hash"] for r in here]
    assert [r["upload_bytes"] for r in pooled] == [r["upload_bytes"] for r in here]
