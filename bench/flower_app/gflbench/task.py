"""What both apps share: the job, the data and a JSON-lines log (so the bench reads timings)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np


def spec(cfg: Any) -> Any:
    """The same job gfl runs: McMahan CNN, FedAvg, SGD lr, E, B, seed."""
    from gfl.fl.spec import JobSpec

    return JobSpec(
        name="vs-flower",
        model="cnn",
        dataset="mnist",
        rounds=int(cfg["num-server-rounds"]),
        local_epochs=int(cfg["local-epochs"]),
        batch_size=int(cfg["batch-size"]),
        lr=float(cfg["lr"]),
        seed=int(cfg["seed"]),
    )


def node_data(cfg: Any, index: int, of: int) -> Any:
    """Partition `index` of `of` (iid, seed 0, first `limit`), read by gfl's own DataSource."""
    from gfl.scheduler.sources import DataSource

    src = DataSource(
        dataset="mnist",
        root=str(cfg["data-root"]),
        partition="iid",
        index=index,
        of=of,
        seed=0,
        limit=int(cfg["limit"]),
    )
    return src.load()


def to_arrays(params: dict[str, np.ndarray]) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in params.items()})


def from_arrays(record: Any) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def log_line(cfg: Any, **row: Any) -> None:
    row.setdefault("t", time.time())
    row.setdefault("pid", os.getpid())
    with open(str(cfg["log-path"]), "a") as f:
        f.write(json.dumps(row) + "\n")
