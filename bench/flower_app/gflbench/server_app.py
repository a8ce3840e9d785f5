"""ServerApp: FedAvg over every SuperNode, centralised evaluation on the MNIST test set."""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from gflbench.task import from_arrays, log_line, spec, to_arrays

torch.set_num_threads(1)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from gfl.fl.data import load_dataset
    from gfl.fl.trainer import evaluate, initial_params

    cfg = context.run_config
    log_line(cfg, kind="server_start")
    job = spec(cfg)
    test = load_dataset("mnist", root=str(cfg["data-root"]), train=False)
    n = int(cfg["num-clients"])
    strategy = FedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n
    )

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        t0 = time.time()
        ev = evaluate(job, from_arrays(arrays), test)
        log_line(cfg, kind="round_end", round=server_round, t_eval_start=t0, **ev)
        return MetricRecord({"accuracy": ev["accuracy"], "loss": ev["loss"]})

    strategy.start(
        grid=grid,
        initial_arrays=to_arrays(initial_params(job)),
        num_rounds=job.rounds,
        train_config=ConfigRecord({"lr": job.lr}),
        evaluate_fn=evaluate_fn,
    )
    log_line(cfg, kind="server_end")
