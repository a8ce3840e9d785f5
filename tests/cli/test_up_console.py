"""`gfl up --console` in a terminal: `q` quits the console and the node keeps running."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios
import threading
import time

from support import gfl_command, gfl_env, run_gfl_process

from gfl.node.datadir import DataDir

WAIT_S = 90.0


def test_q_quits_the_console_and_leaves_the_node_running(init_home):
    home = init_home("a")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 32, 100, 0, 0))
    proc = subprocess.Popen(
        gfl_command("up", "--console", "--home", home),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=gfl_env(TERM="xterm-256color"),
        start_new_session=True,
    )
    os.close(slave)
    screen = bytearray()

    def read() -> None:  # the terminal must be drained or the console blocks on output
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            screen.extend(chunk)

    threading.Thread(target=read, daemon=True).start()
    datadir = DataDir(home)
    try:
        deadline = time.monotonic() + WAIT_S
        while datadir.read_api_info() is None or b"Overview" not in screen:
            assert proc.poll() is None, screen.decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, screen.decode(errors="replace")[-2000:]
            time.sleep(0.2)
        node_pid = datadir.read_api_info().pid
        time.sleep(1.0)  # let the console settle on its first screen
        os.write(master, b"q")
        assert proc.wait(30) == 0, screen.decode(errors="replace")[-2000:]
        assert b"the node keeps running" in screen
        assert datadir.is_locked(), "quitting the console stopped the node"
        status = run_gfl_process("status", "--home", home, timeout=30)
        assert status.returncode == 0 and f"(pid {node_pid})" in status.stdout
        stop = run_gfl_process("stop", "--home", home, timeout=60)
        assert stop.returncode == 0, stop.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        info = datadir.read_api_info()
        if info is not None and datadir.is_locked():
            os.kill(info.pid, signal.SIGTERM)
        os.close(master)
