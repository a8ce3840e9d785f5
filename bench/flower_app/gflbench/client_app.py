"""ClientApp: one local epoch of gfl's trainer on this SuperNode's partition."""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from gflbench.task import from_arrays, log_line, node_data, spec, to_arrays

torch.set_num_threads(1)
app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    from gfl.fl.trainer import train_local

    cfg = context.run_config
    t_in = time.time()
    index = int(context.node_config["partition-id"])
    of = int(context.node_config["num-partitions"])
    data = node_data(cfg, index, of)
    record: ArrayRecord = msg.content["arrays"]
    rnd = int(msg.content["config"]["server-round"])
    glob = from_arrays(record)
    t0 = time.time()
    result = train_local(spec(cfg), glob, data.train, seed=int(cfg["seed"]) + rnd - 1)
    t1 = time.time()
    new = {k: glob[k] + result.update[k] for k in glob}
    out = to_arrays(new)
    log_line(
        cfg,
        kind="client",
        round=rnd,
        node=index,
        t_in=t_in,
        train_start=t0,
        train_end=t1,
        train_s=t1 - t0,
        bytes_down=record.count_bytes(),
        bytes_up=out.count_bytes(),
    )
    metrics = MetricRecord({"num-examples": result.num_samples, "train-s": t1 - t0})
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)
