"""Shared fixtures: free ports, running the `gfl` CLI, initialised datadirs, node processes.

    def test_something(init_home, start_node, run_gfl):
        home = init_home("a")                 # a datadir on 127.0.0.1, API port 0, embedded chain
        node = start_node(home)               # `gfl up` as a subprocess, waited until it answers
        assert node.client().status()["peer_id"] == node.peer_id
        result = run_gfl("status", "--home", home)
        assert result.returncode == 0

Every wait is bounded; every process started here is stopped at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gfl.config import Config
from gfl.datadir import DataDir

LOCAL_LISTEN = "/ip4/127.0.0.1/tcp/0"
NODE_START_TIMEOUT = 60.0
NODE_STOP_TIMEOUT = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """``free_port()`` → a TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_port


def gfl_env(**extra: str) -> dict[str, str]:
    """Environment for a `gfl` subprocess: no inherited GFL_* settings, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GFL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def gfl_command(*args: Any) -> list[str]:
    return [sys.executable, "-m", "gfl", *map(str, args)]


def run_gfl_process(
    *args: Any, timeout: float = 60.0, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``gfl ARGS`` to completion; output captured as text."""
    return subprocess.run(
        gfl_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or gfl_env(),
        input=input,
    )


@pytest.fixture
def run_gfl() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_gfl("status", "--home", home, timeout=30)`` → CompletedProcess."""
    return run_gfl_process


def local_config(**net: Any) -> Config:
    """A config for tests: loopback only, API on a free port, embedded chain, no mDNS."""
    config = Config().replace("net", listen=[LOCAL_LISTEN], mdns=False, **net)
    config = config.replace("api", port=0, heartbeat_s=1.0)
    return config.replace("chain", url="embedded")


@pytest.fixture
def init_home(tmp_path: Path) -> Callable[..., Path]:
    """``init_home(name="node", config=None, **net)`` → the path of an initialised datadir."""

    def make(name: str = "node", config: Config | None = None, **net: Any) -> Path:
        root = tmp_path / name
        DataDir(root).init(config or local_config(**net))
        return root

    return make


class NodeProcess:
    """A `gfl up` subprocess and how to reach it."""

    def __init__(self, home: Path, proc: subprocess.Popen[str], log_path: Path) -> None:
        self.home = home
        self.proc = proc
        self.log_path = log_path
        self.status: dict[str, Any] = {}

    @property
    def peer_id(self) -> str:
        return self.status["peer_id"]

    @property
    def listen_addrs(self) -> list[str]:
        return self.status["listen_addrs"]

    def client(self, **kw: Any) -> Any:
        from gfl.api.client import NodeClient

        return NodeClient.from_home(self.home, **kw)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = NODE_START_TIMEOUT) -> None:
        from gfl.api.client import NodeNotRunning

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"gfl up exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
                )
            try:
                with self.client(timeout=5.0) as c:
                    self.status = c.status()
                return
            except NodeNotRunning:
                time.sleep(0.2)
        raise AssertionError(f"gfl up not ready after {timeout} s:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = NODE_STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``start_node(home, *extra_up_args, wait=True)`` → a running `NodeProcess`."""
    started: list[NodeProcess] = []

    def start(home: Path, *args: Any, wait: bool = True) -> NodeProcess:
        log_path = tmp_path / f"{Path(home).name}-up-{len(started)}.out"
        out = open(log_path, "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            gfl_command("up", "--home", home, *args),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=gfl_env(),
        )
        out.close()
        node = NodeProcess(Path(home), proc, log_path)
        started.append(node)
        if wait:
            node.wait_ready()
        return node

    yield start
    for node in started:
        node.stop()
