"""Fixtures for the CLI tests: one node that trained a short job, shared by a module's tests.

Training a job costs a node start and a few seconds of rounds, so the tests that only read
a finished job (reports, round numbers, remote access, status) share one per module.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import NODE_START_TIMEOUT, NodeProcess, gfl_command, gfl_env, local_config

from gfl.node.datadir import DataDir

JOB_TOML = """\
name = "cli-rounds"
model = "mlp"
dataset = "digits"
rounds = 2
min_updates = 1
round_timeout = 30
local_epochs = 1
batch_size = 32
lr = 0.05
seed = 1
max_samples = 2000

[model_kwargs]
in_features = 64
hidden = 16

[admission]
bond = "0.001 ether"
"""
JOB_TIMEOUT_S = 180.0


@dataclass
class TrainedNode:
    """A running node, the job it trained to the end and one it published without rounds."""

    node: NodeProcess
    job_id: str
    idle_job_id: str

    @property
    def home(self) -> Path:
        return self.node.home

    def client(self) -> Any:
        return self.node.client(timeout=30)


def _wait_finished(node: NodeProcess, job_id: str) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    with node.client(timeout=30) as client:
        while (job := client.job(job_id))["status"] == "active":
            assert time.monotonic() < deadline, f"the job did not finish: {job}"
            time.sleep(0.3)
    assert job["status"] == "finished", job


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedNode]:
    """A `gfl up` node (digits, auto-join) that finished a 2-round job."""
    root = tmp_path_factory.mktemp("trained")
    home = root / "node"
    config = dataclasses.replace(local_config(), data={"digits": ""})
    DataDir(home).init(config.replace("jobs", auto_join=True))
    log_path = root / "up.out"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            gfl_command("up", "--home", home),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=gfl_env(),
        )
    node = NodeProcess(home, proc, log_path)
    try:
        node.wait_ready(NODE_START_TIMEOUT)
        with node.client(timeout=60) as client:
            job_id = client.publish(toml=JOB_TOML)["job_id"]
            idle = JOB_TOML.replace("cli-rounds", "cli-idle")
            idle_job_id = client.publish(toml=idle, participate=False)["job_id"]
        _wait_finished(node, job_id)
        yield TrainedNode(node, job_id, idle_job_id)
    finally:
        node.stop()
