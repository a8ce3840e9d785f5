"""The node's own commands: init, up (and run), status, attach, stop, devnet."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gfl_console.errors import NodeClientError

from gfl.cli.options import home, node_client, read_passphrase
from gfl.cli.signals import STOP_SIGNALS, stop_child_on_signals, terminate_on_signals
from gfl.errors import GflError
from gfl.node.funding import format_eth


def format_status(status: Mapping[str, Any]) -> str:
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
        via = "(relayed)" if peer.get("path") == "relayed" else ""
        lines.append(
            f"          {peer.get('peer_id')}  {peer.get('eth_address') or ''}  {via}".rstrip()
        )
    if status.get("net"):
        from gfl_console.format import bytes_by_path, reachability

        lines.append(f"reach     {reachability(status['net'])}")
        lines.append(f"bytes     {bytes_by_path(status['net'])}")
    chain = status.get("chain")
    if chain:
        lines.append(
            f"chain     {chain['endpoint']}  id {chain['chain_id']}  block {chain['block']}  "
            f"registry {chain['registry'] or '-'}"
        )
        balance = chain.get("balance_wei")
        shown = "-" if balance is None else format_eth(balance)
        lines.append(f"account   {chain.get('account') or '-'}  balance {shown}")
    else:
        lines.append("chain     none")
    lines.extend(_activity_lines(status))
    lines.append(f"uptime    {status.get('uptime_s', 0):.1f} s   version {status.get('version')}")
    return "\n".join(lines)


def _activity_lines(status: Mapping[str, Any]) -> list[str]:
    """Jobs by status, alarms, and what the node dropped (gossip, job announcements)."""
    from gfl_console.format import counts

    def unprefixed(counters: dict[str, int]) -> dict[str, int]:
        return {name.partition(".")[2] or name: n for name, n in counters.items()}

    service = status.get("jobs") or {}
    drops = dict((status.get("net") or {}).get("drops") or {})
    for reason, n in unprefixed(service.get("rejected") or {}).items():
        drops[f"job {reason}"] = drops.get(f"job {reason}", 0) + n
    lines = [f"jobs      {counts(service.get('jobs')) if service else '-'}"]
    alarms = counts(unprefixed(service.get("alarms") or {}))
    if alarms != "none":
        lines.append(f"alarms    {alarms}")
    lines.append(f"drops     {counts(drops)}")
    return lines


# -- commands -----------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from gfl.node.config import Config, validate_config
    from gfl.node.datadir import DataDir

    datadir = DataDir(home(args))
    config = _apply_overrides(Config(), args)
    validate_config(config)
    identity = datadir.init(config, passphrase=read_passphrase(args), force=args.force)
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

    datadir = DataDir(home(args))
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
    identity = datadir.load_identity(read_passphrase(args))

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

    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
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
            with node_client(args) as client:
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
    from gfl_console.home import DEFAULT_HOST, DEFAULT_PORT, find_target

    from gfl.node.datadir import DataDir

    def configured() -> tuple[str, int]:
        datadir = DataDir(home(args))
        if not datadir.is_initialised():  # a token from outside: the default address
            return DEFAULT_HOST, DEFAULT_PORT
        config = datadir.load_config()
        if config.api.port == 0:  # the node picks its port at start: nothing to wait on
            raise GflError(f"no node is running with datadir {datadir.root}; start it first")
        return config.api.host, config.api.port

    target = find_target(
        getattr(args, "host", None),
        getattr(args, "port", None),
        token_file=getattr(args, "token_file", None),
        home=home(args),
        fallback=configured,
    )
    return target.host, target.port, target.token


def cmd_attach(args: argparse.Namespace) -> int:
    from gfl_console import run_console

    host, port, token = _console_target(args)
    if getattr(args, "plain", False) or not sys.stdout.isatty():
        with node_client(args) as client:
            status = client.status()
        print(f"attached to {client.where}")
        print(format_status(status))
        return 0
    return run_console(host, port, token)


def _up_with_console(args: argparse.Namespace) -> int:
    """`gfl up --console`: the node runs as a child process in its own session, the console
    in this terminal. Quitting the console leaves the node running (`gfl stop` stops it); a
    node that does not come up, or a signal that ends this command, stops it."""
    import subprocess

    from gfl_console import run_console

    from gfl.node.datadir import DataDir

    datadir = DataDir(home(args))
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
        with terminate_on_signals():
            deadline = time.monotonic() + 60
            while datadir.read_api_info() is None:
                if child.poll() is not None:
                    raise GflError(f"the node exited (code {child.returncode}); see {out.name}")
                if time.monotonic() > deadline:
                    raise GflError("the node did not start within 60s")
                time.sleep(0.1)
            host, port, token = _console_target(args)
        with stop_child_on_signals(child):
            code = run_console(host, port, token)
    except BaseException:
        _stop_node(child, args)
        raise
    if child.poll() is None:
        print(
            f"the node keeps running (pid {child.pid}); `gfl stop --home {datadir.root}` stops it"
        )
    return code


def _stop_node(child: Any, args: argparse.Namespace) -> None:
    """Stop the node `gfl up --console` started: through its API, else SIGTERM, else SIGKILL."""
    import subprocess

    from gfl_console.client import NodeClient

    if child.poll() is not None:
        return
    with contextlib.suppress(NodeClientError, GflError), NodeClient.from_home(home(args)) as api:
        api.shutdown()
    for stop in (None, child.terminate, child.kill):
        if stop is not None:
            stop()
        try:
            child.wait(30 if stop is None else 10)
            return
        except subprocess.TimeoutExpired:
            continue


def cmd_devnet(args: argparse.Namespace) -> int:
    from gfl.node.devnet import run

    if not 1 <= args.nodes <= 64:
        raise GflError("--nodes must be between 1 and 64")
    if not 1 <= args.rounds <= 1000:
        raise GflError("--rounds must be between 1 and 1000")
    with terminate_on_signals():
        return run(args)


def cmd_stop(args: argparse.Namespace) -> int:
    from gfl_console.client import NodeNotRunning

    from gfl.node.datadir import DataDir
    from gfl.node.zygote import pid_alive

    with node_client(args) as client:
        datadir = DataDir(home(args))
        info = datadir.read_api_info() if args.host is None and args.port is None else None
        by_home = info is not None
        client.shutdown()
        deadline = time.monotonic() + args.timeout

        def stopped() -> bool:
            # the lock goes with the node's loop; the process exits a moment later
            if by_home:
                return not datadir.is_locked() and not (info and pid_alive(info.pid))
            try:
                client.status()
            except NodeNotRunning:
                return True
            return False

        while not stopped():
            if time.monotonic() > deadline:
                raise GflError(f"the node at {client.where} did not stop within {args.timeout:g} s")
            time.sleep(0.1)
    print("node stopped")
    return 0


def register(
    add: Callable[..., argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    target: argparse.ArgumentParser,
) -> None:
    """Add the node's commands through ``add(name, help, func, **kw)`` (the CLI's helper);
    ``common`` has --home and -v, ``target`` -H/-P/--token-file."""

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

    p = add(
        "status",
        "show a running node's identity, peers, chain, jobs and drops",
        cmd_status,
        parents=[common, target],
    )
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
        parents=[common, target],
    )
    p.add_argument(
        "--plain", action="store_true", help="print the node's status instead of the console"
    )

    p = add("stop", "stop a running node cleanly", cmd_stop, parents=[common, target])
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
