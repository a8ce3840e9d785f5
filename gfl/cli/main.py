"""The `gfl` command line.

Every command takes ``--home DIR`` (default ``$GFL_HOME`` or ``~/.gfl``) and
``-v``. A mistake in the arguments is one line and exit 2; any `GflError` (or
`gfl_console`'s `NodeClientError`) is one line ``gfl: <message>`` and exit 1;
Ctrl-C is exit 130. Heavy imports (libp2p, web3, torch) happen inside the
commands that need them so that ``gfl --help`` and ``gfl status`` answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from gfl_console.errors import NodeClientError

from gfl import __version__
from gfl.errors import GflError

if TYPE_CHECKING:
    from gfl_console.client import NodeClient

log = logging.getLogger(__name__)

EXIT_USAGE = 2
NOT_AVAILABLE = "is not available yet"


class GflArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (and exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see `{self.prog} --help`)"
        self.exit(EXIT_USAGE, f"gfl: error: {message}{hint}\n")


# -- shared options --------------------------------------------------------------------------


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS: the option may be given before or after the command without one
    # position's default overwriting the other's value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="node datadir (default: $GFL_HOME or ~/.gfl)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more log output on stderr (-v info, -vv debug, -vvv libraries too)",
    )
    return common


def _add_target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-H", "--host", help="API host of the node (default: from --home, else 127.0.0.1)"
    )
    p.add_argument("-P", "--port", type=int, help="API port of the node (default: 9434)")
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the API token (default: DATADIR/api.token or $GFL_API_TOKEN)",
    )


def _home(args: argparse.Namespace) -> str | None:
    return getattr(args, "home", None)


def _read_passphrase(args: argparse.Namespace) -> str | None:
    path = getattr(args, "passphrase_file", None)
    if not path:
        return None
    try:
        return Path(path).read_text().rstrip("\n")
    except OSError as exc:
        raise GflError(f"cannot read the passphrase file {path}: {exc.strerror}") from None


def _client(args: argparse.Namespace) -> NodeClient:
    """A NodeClient for -H/-P (with a token) or for the node running with --home.

    Other command modules (gfl.cli.jobs) call this too; their parsers may lack -H/-P.
    """
    from gfl_console.client import NodeClient
    from gfl_console.home import find_target

    host = getattr(args, "host", None)
    port = getattr(args, "port", None)
    token_file = getattr(args, "token_file", None)
    if host is None and port is None:
        if token_file:
            raise GflError("--token-file needs -H/--host or -P/--port")
        return NodeClient.from_home(_home(args))
    target = find_target(host, port, token_file=token_file, home=_home(args))
    return NodeClient(target.host, target.port, target.token)


def format_status(status: dict[str, Any]) -> str:
    """A node's status as a few aligned lines for people."""
    lines = [
        f"peer id   {status['peer_id']}",
        f"address   {status['address']}",
    ]
    if status.get("name"):
        lines.insert(0, f"name      {status['name']}")
    api = status.get("api") or {}
    lines.append(f"api       http://{api.get('host')}:{api.get('port')}  (pid {status.get('pid')})")
    for i, addr in enumerate(status.get("listen_addrs") or ["-"]):
        lines.append(f"{'listen' if i == 0 else '':<10}{addr}")
    peers = status.get("peers") or []
    lines.append(f"peers     {len(peers)}")
    for peer in peers:
        lines.append(f"          {peer.get('peer_id')}  {peer.get('eth_address') or ''}".rstrip())
    chain = status.get("chain")
    if chain:
        lines.append(
            f"chain     {chain['endpoint']}  id {chain['chain_id']}  block {chain['block']}  "
            f"registry {chain['registry'] or '-'}"
        )
    else:
        lines.append("chain     none")
    lines.append(f"uptime    {status.get('uptime_s', 0):.1f} s   version {status.get('version')}")
    return "\n".join(lines)


# -- commands --------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from gfl.node.config import Config, validate_config
    from gfl.node.datadir import DataDir

    datadir = DataDir(_home(args))
    config = _apply_overrides(Config(), args)
    validate_config(config)
    identity = datadir.init(config, passphrase=_read_passphrase(args), force=args.force)
    print(f"initialised {datadir.root}")
    print(f"address   {identity.eth_address}")
    print(f"peer id   {identity.peer_id}")
    return 0


def _apply_overrides(config: Any, args: argparse.Namespace) -> Any:
    """Command-line values over config.toml (for `init`, written; for `up`, this run only)."""
    if getattr(args, "listen", None):
        config = config.replace("net", listen=list(args.listen))
    if getattr(args, "bootstrap", None):
        config = config.replace("net", bootstrap=list(args.bootstrap))
    if getattr(args, "mdns", None) is not None:
        config = config.replace("net", mdns=args.mdns)
    if getattr(args, "api_port", None) is not None:
        config = config.replace("api", port=args.api_port)
    if getattr(args, "api_host", None):
        config = config.replace("api", host=args.api_host)
    if getattr(args, "chain", None):
        config = config.replace("chain", url=args.chain)
    if getattr(args, "name", None):
        config = config.replace("node", name=args.name)
    return config


def cmd_up(args: argparse.Namespace) -> int:
    if args.console:
        return _up_with_console(args)
    import trio

    from gfl.errors import ConfigError
    from gfl.node.config import validate_config
    from gfl.node.datadir import DataDir
    from gfl.node.logs import setup_logging

    datadir = DataDir(_home(args))
    datadir.require_initialised()
    try:
        setup_logging(getattr(args, "verbose", 0), datadir.log_path)
    except OSError as exc:  # read-only or full data directory
        raise ConfigError(
            f"cannot write the node's log {datadir.log_path}: {exc.strerror}"
            " (the data directory must be writable)"
        ) from None
    config = _apply_overrides(datadir.load_config(), args)
    validate_config(config)
    _check_train_device(config.train.device, datadir.config_path)
    identity = datadir.load_identity(_read_passphrase(args))

    from gfl.node.node import create_node

    node = create_node(datadir, config, identity)
    trio.run(_run_until_signal, node)
    return 0


def _check_train_device(device: str, config_path: Path) -> None:
    """Refuse at start a training device this machine lacks, not at each job's first round
    (torch is only imported here for a device other than the default cpu)."""
    if device == "cpu":
        return
    from gfl.errors import ConfigError
    from gfl.fl.trainer import TrainError, check_device

    try:
        check_device(device)
    except TrainError as exc:
        raise ConfigError(f"{config_path}: train.device: {exc}") from None


async def _run_until_signal(node: Any) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    if node.finished.is_set():
                        return
                    if signum == signal.SIGINT:
                        print("\nstopping (Ctrl-C again to force)", file=sys.stderr, flush=True)
                    if not node._stop.is_set():
                        node.request_shutdown()
                    else:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await nursery.start(node.run)
            status = await node.status()
            print("GFL node up", flush=True)
            print(format_status(status), flush=True)
            await node.finished.wait()
            nursery.cancel_scope.cancel()
    print("node stopped", flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    from gfl_console.client import NodeNotRunning

    deadline = time.monotonic() + max(0.0, args.wait)
    while True:
        try:
            with _client(args) as client:
                status = client.status()
            break
        except NodeNotRunning:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _console_target(args: argparse.Namespace) -> tuple[str, int, str]:
    """(host, port, token) for the console: -H/-P with a token, or the datadir's node.

    Unlike the other commands this does not need the node to be running: the
    console says so and connects when it comes up (at the configured API address).
    """
    from gfl_console.home import find_target

    from gfl.node.datadir import DataDir

    def configured() -> tuple[str, int]:
        datadir = DataDir(_home(args))
        config = datadir.load_config()
        if config.api.port == 0:  # the node picks its port at start: nothing to wait on
            raise GflError(f"no node is running with datadir {datadir.root}; start it first")
        return config.api.host, config.api.port

    target = find_target(
        getattr(args, "host", None),
        getattr(args, "port", None),
        token_file=getattr(args, "token_file", None),
        home=_home(args),
        fallback=configured,
    )
    return target.host, target.port, target.token


def cmd_attach(args: argparse.Namespace) -> int:
    from gfl_console import run_console

    host, port, token = _console_target(args)
    if getattr(args, "plain", False) or not sys.stdout.isatty():
        with _client(args) as client:
            status = client.status()
        print(f"attached to {client.where}")
        print(format_status(status))
        return 0
    return run_console(host, port, token)


def _up_with_console(args: argparse.Namespace) -> int:
    """`gfl up --console`: the node runs as a child process, the console in this terminal;
    quitting the console stops the node."""
    import subprocess

    from gfl_console import run_console
    from gfl_console.client import NodeClient, NodeClientError

    from gfl.node.datadir import DataDir

    datadir = DataDir(_home(args))
    datadir.require_initialised()
    argv = [a for a in sys.argv[1:] if a != "--console"]
    datadir.logs_dir.mkdir(parents=True, exist_ok=True)
    with open(datadir.logs_dir / "console-node.out", "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "gfl", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while datadir.read_api_info() is None:
            if child.poll() is not None:
                raise GflError(f"the node exited (code {child.returncode}); see {out.name}")
            if time.monotonic() > deadline:
                raise GflError("the node did not start within 60s")
            time.sleep(0.1)
        host, port, token = _console_target(args)
        return run_console(host, port, token)
    finally:
        if child.poll() is None:
            try:
                with NodeClient.from_home(_home(args)) as client:
                    client.shutdown()
                child.wait(30)
            except (NodeClientError, GflError, subprocess.TimeoutExpired):
                child.terminate()
                child.wait(10)


def cmd_devnet(args: argparse.Namespace) -> int:
    from gfl.node.devnet import run

    if not 1 <= args.nodes <= 64:
        raise GflError("--nodes must be between 1 and 64")
    if not 1 <= args.rounds <= 1000:
        raise GflError("--rounds must be between 1 and 1000")
    return run(args)


def cmd_stop(args: argparse.Namespace) -> int:
    from gfl_console.client import NodeNotRunning

    from gfl.node.datadir import DataDir

    with _client(args) as client:
        client.shutdown()
        deadline = time.monotonic() + args.timeout
        by_home = args.host is None and args.port is None
        datadir = DataDir(_home(args))
        while time.monotonic() < deadline:
            if by_home:
                if not datadir.is_locked():
                    break
            else:
                try:
                    client.status()
                except NodeNotRunning:
                    break
            time.sleep(0.1)
        else:
            raise GflError(f"the node at {client.where} did not stop within {args.timeout:g} s")
    print("node stopped")
    return 0


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


# -- the parser ------------------------------------------------------------------------------


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
    common = _common_options()
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
        p = sub.add_parser(name, help=help, description=help, parents=[common], **kw)
        p.set_defaults(func=func)
        return p

    def net_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--listen",
            action="append",
            metavar="MULTIADDR",
            help="libp2p listen address, repeatable (e.g. /ip4/127.0.0.1/tcp/4001)",
        )
        p.add_argument(
            "--bootstrap",
            nargs="+",
            metavar="MULTIADDR",
            help="peers to dial at start (/ip4/.../tcp/.../p2p/<peer id>)",
        )
        p.add_argument(
            "--mdns",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="find peers on the local network with mDNS",
        )
        p.add_argument(
            "--api-port",
            type=int,
            metavar="PORT",
            help="control API port (default 9434; 0 picks a free one)",
        )
        p.add_argument(
            "--chain", metavar="embedded|URL", help='chain backend: "embedded" or a JSON-RPC URL'
        )

    p = add("init", "create a node datadir: config, node key, API token", cmd_init)
    p.add_argument(
        "--force", action="store_true", help="replace the key and config of an initialised datadir"
    )
    p.add_argument(
        "--passphrase-file", metavar="FILE", help="encrypt the node key with the passphrase in FILE"
    )
    p.add_argument("--name", help="a name for this node, shown in status")
    p.add_argument("--api-host", metavar="HOST", help="control API host (default 127.0.0.1)")
    net_options(p)

    p = add("up", "start the node (runs until Ctrl-C or `gfl stop`)", cmd_up, aliases=["run"])
    p.add_argument("--console", action="store_true", help="open the console in this terminal")
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="passphrase of an encrypted node key (or set $GFL_PASSPHRASE)",
    )
    net_options(p)

    p = add("status", "show a running node's identity, peers and chain", cmd_status)
    _add_target_options(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the node to answer",
    )

    p = add(
        "attach",
        "open the console on a running node (Textual; q quits, the node keeps running)",
        cmd_attach,
    )
    _add_target_options(p)
    p.add_argument(
        "--plain", action="store_true", help="print the node's status instead of the console"
    )

    p = add("stop", "stop a running node cleanly", cmd_stop)
    _add_target_options(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the node to exit (default 30)",
    )

    p = add("devnet", "run a local test network of N nodes with a demo job", cmd_devnet)
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--keep", action="store_true", help="leave the network up afterwards")
    p.add_argument(
        "--dir", metavar="DIR", help="put the nodes' datadirs here (default: a temp dir)"
    )
    p.add_argument(
        "--data",
        choices=["digits", "mnist"],
        default="digits",
        help="dataset to split among the nodes (mnist reads $GFL_DATA_DIR)",
    )
    p.add_argument(
        "--partition",
        default="iid",
        metavar="SCHEME",
        help="iid, dirichlet:ALPHA or shards:K (default iid)",
    )
    p.add_argument("--rounds", type=int, default=5, help="rounds of the demo job (default 5)")
    p.add_argument(
        "--timeout",
        type=float,
        default=600,
        metavar="SECONDS",
        help="give up on the demo after SECONDS (default 600)",
    )
    p.add_argument(
        "--no-anvil",
        action="store_true",
        help="use the embedded chain even when anvil is installed",
    )

    job = add("job", "publish, list, follow and cancel training jobs", _job_needs_command)
    job_sub = job.add_subparsers(
        dest="job_command", metavar="COMMAND", parser_class=GflArgumentParser
    )
    try:
        from gfl.cli import jobs as job_commands
    except ModuleNotFoundError as exc:  # the job layer is not in this checkout yet
        if exc.name != "gfl.cli.jobs":
            raise
        job_commands = None
    if job_commands is not None:
        job_commands.register(job_sub, [common])
    else:
        for name, help in [
            ("publish", "publish a job spec to the network and the chain"),
            ("list", "list known jobs"),
            ("show", "show one job"),
            ("watch", "follow a job's rounds live"),
            ("cancel", "cancel a job you own"),
            ("report", "summarise a finished job"),
        ]:
            jp = job_sub.add_parser(name, help=help, description=help, parents=[common])
            jp.add_argument("args", nargs="*", help=argparse.SUPPRESS)
            jp.set_defaults(func=_not_available(f"`gfl job {name}`"))

    _register_external(
        sub, "gfl.simulate.engine", "simulate", "simulate federated training in one process"
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
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = getattr(args, "verbose", 0)
    if args.func is not cmd_up:
        from gfl.node.logs import setup_logging

        setup_logging(verbosity)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if isinstance(exc, SystemExit):
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
