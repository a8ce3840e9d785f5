"""The `gfl` command line: the parser, and how a command's end becomes an exit status.

Every command takes ``--home DIR`` (default ``$GFL_HOME`` or ``~/.gfl``) and
``-v``. A mistake in the arguments is one line and exit 2; any `GflError` (or
`gfl_console`'s `NodeClientError`) is one line ``gfl: <message>`` and exit 1;
Ctrl-C is exit 130, SIGTERM and SIGHUP 128 + the signal, after the command stopped
what it started; a reader that goes away (``| head``) ends it quietly. Heavy imports
(libp2p, web3, torch) happen inside the commands that need them so that ``gfl --help``
and ``gfl status`` answer at once. The commands live in `gfl.cli.node`, `gfl.cli.jobs`,
`gfl.cli.chain` and `gfl.cli.simulate`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from gfl_console.errors import NodeClientError

from gfl import __version__
from gfl.cli import jobs as job_commands
from gfl.cli import node as node_commands
from gfl.cli.options import common_options, target_options
from gfl.cli.signals import Terminated
from gfl.errors import GflError

log = logging.getLogger(__name__)

EXIT_USAGE = 2
NOT_AVAILABLE = "is not available yet"


class GflArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (and exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see `{self.prog} --help`)"
        self.exit(EXIT_USAGE, f"gfl: error: {message}{hint}\n")


class _NotAvailable(GflError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} {NOT_AVAILABLE}")


def _job_needs_command(args: argparse.Namespace) -> int:
    print(
        "gfl: error: `gfl job` needs a command: publish, list, show, watch, cancel or report",
        file=sys.stderr,
    )
    return 2


def _not_available(what: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise _NotAvailable(what)

    return run


# -- the parser ----------------------------------------------------------------------------


def _register_external(subparsers: Any, module: str, command: str, help: str) -> None:
    """Commands owned by other layers register themselves; a placeholder until they exist."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise
        p = subparsers.add_parser(command, help=help, description=help)
        p.set_defaults(func=_not_available(f"`gfl {command}`"))
        return
    mod.register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    target = target_options()
    parser = GflArgumentParser(
        prog="gfl",
        description="GFL: decentralized federated learning over libp2p, "
        "with jobs and rounds fixed on Ethereum.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"gfl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=GflArgumentParser)
    sub.required = True

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int], **kw: Any) -> Any:
        kw.setdefault("parents", [common])
        p = sub.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(func=func)
        return p

    node_commands.register(add, common, target)
    job = add("job", "publish, list, follow and cancel training jobs", _job_needs_command)
    job_sub = job.add_subparsers(
        dest="job_command", metavar="COMMAND", parser_class=GflArgumentParser
    )
    job_commands.register(job_sub, [common, target])

    _register_external(
        sub, "gfl.cli.simulate", "simulate", "simulate federated training with virtual clients"
    )
    _register_external(sub, "gfl.cli.chain", "chain", "Ethereum job registry: deploy, serve, fund")
    return parser


def _user_error(exc: BaseException) -> Exception | None:
    """The single GflError (or API client error) inside ``exc`` (trio wraps errors in
    exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, GflError | NodeClientError) else None


def _only_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_interrupts(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at exit after `main` returned
        return code
    except BrokenPipeError:
        # the reader went away (`gfl job list | head`): stop quietly, as Unix tools do;
        # stdout goes to /dev/null so that the interpreter's last flush fails no more
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = getattr(args, "verbose", 0)
    if args.func is not node_commands.cmd_up:
        from gfl.node.logs import setup_logging

        setup_logging(verbosity)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Terminated as exc:
        return 128 + exc.signum
    except BaseException as exc:
        if isinstance(exc, SystemExit | BrokenPipeError):
            raise
        error = _user_error(exc)
        if error is None:
            if _only_interrupts(exc):
                return 130
            raise
        if verbosity >= 2:
            log.debug("error details", exc_info=exc)
        print(f"gfl: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, _NotAvailable) else 1


if __name__ == "__main__":
    raise SystemExit(main())
