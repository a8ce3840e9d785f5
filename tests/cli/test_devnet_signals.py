"""`gfl devnet` ended by a signal, as a service manager or `kill PID` ends it: every process it
started (the chain, the zygote, the nodes) ends with it."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support import gfl_command, gfl_env

from gfl.node.zygote import pid_alive

START_TIMEOUT_S = 240.0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_devnet_stopped_by_a_signal_leaves_no_process(tmp_path, signum):
    proc = subprocess.Popen(
        gfl_command("devnet", "--nodes", "1", "--rounds", "500", "--dir", tmp_path / "net"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=gfl_env(),
        start_new_session=True,  # as under a service manager: no terminal, no Ctrl-C
    )
    started: set[int] = set()
    try:
        lines, seen = _lines(proc), []
        deadline = time.monotonic() + START_TIMEOUT_S
        while not any(line.startswith("job ") for line in seen):
            left = deadline - time.monotonic()
            assert left > 0, "".join(seen)
            line = lines.get(timeout=left)
            assert line, f"devnet exited early:\n{''.join(seen)}"
            seen.append(line)
        started = _descendants(proc.pid)
        assert len(started) >= 2, started  # at least the zygote and its node (and anvil)
        proc.send_signal(signum)
        assert proc.wait(90) == 128 + signum, "".join(seen)
        deadline = time.monotonic() + 15
        while left_over := {p for p in started if pid_alive(p)}:
            assert time.monotonic() < deadline, f"still running after the devnet: {left_over}"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in started:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
