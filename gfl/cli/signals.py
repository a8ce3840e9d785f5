"""Signals that end a command: each is a clean stop of what the command started.

`gfl up` handles them in its trio loop. Commands that start other processes (`gfl devnet`,
`gfl up --console`) turn SIGTERM and SIGHUP into `Terminated`, so the same ``finally``
blocks that clean up after Ctrl-C run; the CLI then exits with 128 + the signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

# what a service manager, a closed terminal or Ctrl-C sends
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """SIGTERM or SIGHUP ended a command that must first stop what it started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Terminated`, so ``finally`` blocks stop child processes
    as they do on Ctrl-C; later signals are ignored until the cleanup is done."""

    def handler(signum: int, frame: Any) -> None:
        for sig in STOP_SIGNALS[1:]:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS[1:]}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def stop_child_on_signals(child: Any) -> Iterator[None]:
    """While the console runs (it owns the terminal and its loop), SIGTERM and SIGHUP stop
    the node first and then end this process as they would have."""

    def handler(signum: int, frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()  # the node stops cleanly on SIGTERM
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS[1:]}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
