"""The `gfl chain` command group: deploy the registry, serve a dev chain, fund accounts.

Each handler returns an exit code and reports failures as one line on stderr.
Heavy imports (web3, eth-tester) happen inside the handlers so `gfl --help`
stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gfl.errors import ConfigError, GflError

CONFIG_FILE = "config.toml"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `chain` command group to the top-level CLI parser."""
    from gfl.cli.options import common_options

    common = [common_options()]  # --home and -v, before or after each command
    chain = subparsers.add_parser(
        "chain", help="Ethereum job registry: deploy, serve, fund", parents=common
    )
    sub = chain.add_subparsers(dest="chain_command", metavar="COMMAND")
    sub.required = True

    deploy = sub.add_parser(
        "deploy",
        help="deploy the JobRegistry with the node key and record it in config.toml",
        parents=common,
    )
    deploy.add_argument("--rpc", required=True, metavar="URL", help="JSON-RPC URL of the chain")
    deploy.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the chain")
    deploy.set_defaults(func=_guard(_deploy))

    serve = sub.add_parser(
        "serve", help="serve an embedded chain over HTTP JSON-RPC (devnets)", parents=common
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8545)
    serve.add_argument("--state-dir", metavar="DIR", help="keep the chain across restarts here")
    serve.set_defaults(func=_guard(_serve))

    fund = sub.add_parser(
        "fund",
        help="send ether from a dev account (or a key you give) to addresses",
        parents=common,
    )
    fund.add_argument("--rpc", required=True, metavar="URL")
    fund.add_argument("addresses", nargs="+", metavar="ADDRESS")
    fund.add_argument("--eth", type=float, default=100.0, help="ether per address (default 100)")
    fund.add_argument(
        "--funder-key-file",
        metavar="FILE",
        help="file holding the funder's hex private key (default: the chain's well-known "
        "dev account on anvil or a served embedded chain)",
    )
    fund.add_argument("--timeout", type=float, default=30.0)
    fund.set_defaults(func=_guard(_fund))


def _guard(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except GflError as exc:
            print(f"gfl chain: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return run


def home_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("GFL_HOME") or Path.home() / ".gfl").expanduser()


def write_chain_config(home: Path, url: str, registry: str) -> Path:
    """Set ``url`` and ``registry`` in the [chain] table of DATADIR/config.toml."""
    path = home / CONFIG_FILE
    try:
        from gfl.node.config import update_config
    except ImportError:  # the node's config module is optional for this command
        pass
    else:
        if path.exists():
            update_config(path, "chain", url=url, registry=registry)
            return path
    import tomli_w

    config: dict[str, Any] = {}
    if path.exists():
        try:
            config = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    chain = config.get("chain")
    table = chain if isinstance(chain, dict) else {}
    config["chain"] = {**table, "url": url, "registry": registry}
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        tomli_w.dump(config, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _deploy(args: argparse.Namespace) -> int:
    from gfl.chain import deploy_registry
    from gfl.identity import load_identity

    home = home_dir(getattr(args, "home", None))
    identity = load_identity(home / "keys")
    address = deploy_registry(args.rpc, identity, timeout=args.timeout)
    path = write_chain_config(home, args.rpc, address)
    print(f"JobRegistry deployed at {address}; recorded in {path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gfl.chain.devchain import EMBEDDED_DEV_KEY, serve_embedded

    state = Path(args.state_dir) if args.state_dir else None
    try:
        server = serve_embedded(args.host, args.port, state_dir=state)
    except OSError as exc:
        raise GflError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    with server:
        print(f"embedded chain {server.chain.chain_id} on {server.url}", flush=True)
        print(f"registry {server.registry_address}", flush=True)
        print(f"dev funder key 0x{EMBEDDED_DEV_KEY.hex()} (well known, dev only)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def _fund(args: argparse.Namespace) -> int:
    from web3 import HTTPProvider, Web3

    for address in args.addresses:
        if not Web3.is_address(address):
            raise ConfigError(f"{address!r} is not an Ethereum address (0x and 40 hex digits)")
    if not args.eth > 0:
        raise ConfigError(f"--eth must be more than 0, not {args.eth:g}")

    from gfl.chain.devchain import ANVIL_DEV_KEY, EMBEDDED_DEV_KEY, fund
    from gfl.chain.errors import ChainError
    from gfl.chain.transactions import with_retry

    if args.funder_key_file:
        try:
            text = Path(args.funder_key_file).read_text().strip().removeprefix("0x")
            key = bytes.fromhex(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read a hex key from {args.funder_key_file}: {exc}") from None
    else:
        w3 = Web3(HTTPProvider(args.rpc, exception_retry_configuration=None))
        chain_id = with_retry(
            lambda: w3.eth.chain_id,
            timeout=args.timeout,
            endpoint=args.rpc,
            what="reading the chain id",
        )
        from gfl.chain.embedded import EmbeddedChain

        known = {31337: ANVIL_DEV_KEY, EmbeddedChain.CHAIN_ID: EMBEDDED_DEV_KEY}
        if chain_id not in known:
            raise ChainError(
                f"chain {chain_id} has no well-known dev account: pass --funder-key-file"
            )
        key = known[chain_id]
    wei = int(args.eth * 10**18)
    fund(args.rpc, key, args.addresses, wei, timeout=args.timeout)
    print(f"sent {args.eth:g} ETH to {len(args.addresses)} address(es)")
    return 0
