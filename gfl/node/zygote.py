"""Start many node processes from one that has already imported what they need.

A devnet's nodes are one program: each ``gfl up`` spends ~5 CPU-seconds and ~450 MB
of private memory importing torch, web3 and py-libp2p before it does anything. The
zygote imports them once and forks every node from itself, so the nodes start
without that cost and share the imported pages copy-on-write (``gc.freeze()`` keeps
the cyclic collector from touching, and so copying, them).

Forking is safe only before a process has threads or an event loop: the zygote never
starts either and checks ``/proc/self/task`` before each fork. It speaks JSON lines
over a pair of pipes with the process that started it (a local, trusted parent):

    zygote -> parent   {"ready": N}                          N modules imported
    parent -> zygote   {"argv": [...], "log": PATH, "env": {...}}
    zygote -> parent   {"pid": PID}  or  {"error": "..."}
    zygote -> parent   {"exit": PID, "code": C}              C < 0: killed by signal -C

``argv`` is what follows ``python``: ``["-m", MODULE, ARGS...]`` or ``["-c", CODE,
ARGS...]``. A child runs in its own session with stdin from /dev/null and stdout and
stderr appended to ``log``. The zygote ends when its input closes; its children live
on, as ``subprocess`` ones would.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gfl.errors import GflError

log = logging.getLogger(__name__)

# what a `gfl up` node imports by the time it has trained a round (`python -X importtime`)
NODE_MODULES = (
    "torch",
    "numpy",
    "gfl.cli.main",
    "gfl.node.node",
    "gfl.scheduler.service",
    "gfl.node.api.jobs",
    "gfl.chain.registry",
    "gfl.net.network",
    "gfl.scheduler.runner",
    "gfl.fl.trainer",
    "gfl.fl.strategies",
)
SINGLE_THREADED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
READY_TIMEOUT_S = 120.0  # imports on a busy 2-core machine
REPLY_TIMEOUT_S = 30.0
REAP_EVERY_S = 0.2


class ZygoteError(GflError):
    """The zygote could not be started or could not start a process."""


class Zygote:
    """A running zygote process and the children it forked (a context manager closes it)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self._lock = threading.Lock()  # one request at a time
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._changed = threading.Condition()
        self._ended = False
        self._ready = False
        self._reader = threading.Thread(target=self._read, name="gfl-zygote", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        preload: Sequence[str] = NODE_MODULES,
        *,
        env: Mapping[str, str] | None = None,
        stderr: Path | None = None,
    ) -> Zygote:
        """Start a zygote that imports ``preload``; returns at once (see `wait_ready`)."""
        cmd = [sys.executable, "-m", "gfl.node.zygote", *preload]
        err = open(stderr, "ab") if stderr is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=dict(env) if env is not None else None,
                start_new_session=True,  # Ctrl-C on the terminal is for the parent to handle
            )
        finally:
            if stderr is not None:
                err.close()  # type: ignore[union-attr]
        return cls(process)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until the zygote has imported its modules."""
        if self._ready:
            return
        reply = self._reply(timeout, "import its modules")
        if "ready" not in reply:
            raise ZygoteError(f"the zygote did not start: {reply.get('error', reply)}")
        self._ready = True

    def spawn(
        self, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str]
    ) -> ForkedProcess:
        """Fork a child running ``python *argv``; its output is appended to ``log_path``."""
        request = {"argv": list(argv), "log": str(log_path), "env": dict(env)}
        with self._lock:
            self.wait_ready()
            if self._ended:
                raise ZygoteError("the zygote has ended")
            try:
                assert self._process.stdin is not None
                self._process.stdin.write(json.dumps(request).encode() + b"\n")
                self._process.stdin.flush()
            except OSError as exc:
                raise ZygoteError(f"the zygote has ended: {exc}") from None
            reply = self._reply(REPLY_TIMEOUT_S, "fork")
        if "pid" not in reply:
            raise ZygoteError(f"the zygote could not start {argv!r}: {reply.get('error')}")
        return ForkedProcess(int(reply["pid"]), self)

    def close(self, timeout: float = 5.0) -> None:
        """End the zygote (its children go on)."""
        with contextlib.suppress(OSError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout)
        self._reader.join(timeout)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the reader thread ---------------------------------------------------------------

    def _reply(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            raise ZygoteError(f"the zygote did not {what} within {timeout:.0f}s") from None

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("zygote: unreadable line %r", line[:200])
                continue
            if "exit" in message:
                with self._changed:
                    self._exits[int(message["exit"])] = int(message["code"])
                    self._changed.notify_all()
            else:
                self._replies.put(message)
        with self._changed:
            self._ended = True
            self._changed.notify_all()
        self._replies.put({"error": "the zygote ended"})

    def _exit_code(self, pid: int, timeout: float | None) -> int | None:
        """A child's exit status once the zygote reported it, waiting up to ``timeout``."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self._ended, timeout)
            if pid in self._exits:
                return self._exits[pid]
            if not self._ended:
                return None
        # the zygote is gone, and the child's status with it: watch the pid instead
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid_alive(pid):
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(REAP_EVERY_S)
        return -1


class ForkedProcess:
    """A child of the zygote, used like a `subprocess.Popen` (pid, poll, wait, signals)."""

    def __init__(self, pid: int, zygote: Zygote) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._zygote = zygote

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote._exit_code(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._zygote._exit_code(self.pid, timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# -- the zygote process ------------------------------------------------------------------


def serve(preload: Sequence[str]) -> int:
    """The zygote's main loop (``python -m gfl.node.zygote MODULE...``)."""
    # the protocol gets its own descriptors; fd 0/1 become /dev/null and stderr, so
    # neither a stray print here nor a child can write into (or read from) the pipes
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    for var in SINGLE_THREADED:  # native thread pools started at import would not survive a fork
        os.environ.setdefault(var, "1")
    try:
        for name in preload:
            importlib.import_module(name)
    except Exception as exc:  # an operator's broken install: say so and stop
        _send(proto_out, {"error": f"import {name}: {exc}"})
        return 1
    gc.collect()
    gc.freeze()  # the imported objects stay untouched by the collector in every child
    _send(proto_out, {"ready": len(sys.modules)})
    pending = b""
    while True:
        readable, _, _ = select.select([proto_in], [], [], REAP_EVERY_S)
        _reap(proto_out)
        if not readable:
            continue
        chunk = os.read(proto_in, 1 << 16)
        if not chunk:
            return 0
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            _send(proto_out, _fork(line, (proto_in, proto_out)))


def _fork(line: bytes, inherited: tuple[int, int]) -> dict[str, Any]:
    try:
        request = json.loads(line)
        argv, log_path, env = request["argv"], request["log"], request["env"]
        if not (isinstance(argv, list) and len(argv) >= 2 and argv[0] in ("-m", "-c")):
            raise ValueError("argv must start with -m MODULE or -c CODE")
        if not all(isinstance(a, str) for a in argv) or not isinstance(env, dict):
            raise ValueError("argv must be strings and env a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        return {"error": f"bad request: {exc}"}
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:  # an import started a thread: forking now could deadlock the child
        return {"error": f"the zygote has {threads} threads; it forks only with one"}
    try:
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        return {"error": f"cannot open {log_path}: {exc.strerror}"}
    pid = os.fork()
    if pid:
        os.close(out)
        return {"pid": pid}
    code = 1
    try:
        for fd in inherited:
            os.close(fd)
        os.setsid()
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        _reseed()
        code = _run(argv)
    except BaseException:  # a child must never return into the zygote's loop
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run(argv: list[str]) -> int:
    """Run ``python *argv`` in this (forked) process; returns its exit status."""
    import runpy

    flag, target, *args = argv
    sys.argv = [target if flag == "-m" else "-c", *args]
    try:
        if flag == "-m":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    return 0


def _reseed() -> None:
    """Give the child the fresh random state a new process would have (``random`` reseeds
    itself at fork; numpy's global generator does not)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def _reap(proto_out: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(proto_out, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(fd: int, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode() + b"\n"
    while data:
        data = data[os.write(fd, data) :]


if __name__ == "__main__":
    raise SystemExit(serve(sys.argv[1:]))
