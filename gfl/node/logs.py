"""Logging set-up for the CLI and the node: stderr by -v level, and DATADIR/logs/node.log.

Libraries below us (libp2p, web3, hypercorn) log a lot at INFO; they are held
at WARNING unless the user asks for -vvv, and they reach stderr only with -v
(the log file always has them): without -v, stderr carries GFL's own words.
py-libp2p detaches its logger from the root at import time; `adopt_library_loggers`
reattaches it.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

_NOISY = (
    "libp2p",
    "multiaddr",
    "web3",
    "urllib3",
    "hypercorn",
    "eth",
    "asyncio",
    "httpx",
    "httpcore",
    "trio_websocket",
    "py.warnings",
)
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def stderr_level(verbosity: int) -> int:
    """0 → warnings, 1 (-v) → info, 2+ (-vv) → debug."""
    if verbosity <= 0:
        return logging.WARNING
    return logging.INFO if verbosity == 1 else logging.DEBUG


def setup_logging(verbosity: int = 0, log_file: Path | None = None) -> None:
    """Route records to stderr (by verbosity) and, when given, to a rotating log file."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_gfl", False):
            root.removeHandler(handler)
            handler.close()
    console = logging.StreamHandler()
    console.setLevel(stderr_level(verbosity))
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console._gfl = True  # type: ignore[attr-defined]
    if verbosity <= 0:
        console.addFilter(lambda record: record.name.split(".")[0] in ("gfl", "root"))
    root.addHandler(console)
    level = min(stderr_level(verbosity), logging.INFO)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=10_000_000, backupCount=3, encoding="utf-8"
        )
        file_handler.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        file_handler._gfl = True  # type: ignore[attr-defined]
        root.addHandler(file_handler)
        level = min(level, file_handler.level)
    root.setLevel(level)
    logging.captureWarnings(True)
    global _library_level
    _library_level = logging.DEBUG if verbosity >= 3 else logging.WARNING
    adopt_library_loggers()


_library_level = logging.WARNING


def adopt_library_loggers() -> None:
    """Route the libraries' loggers through ours (call again after importing libp2p)."""
    for name in _NOISY:
        logger = logging.getLogger(name)
        logger.setLevel(_library_level)
        logger.propagate = True
    # libraries set levels on their own child loggers too (libp2p's auto-connector logs
    # at INFO every 10 s): let those inherit ours
    for name, child in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(child, logging.Logger) and "." in name and name.split(".")[0] in _NOISY:
            child.setLevel(logging.NOTSET)
