"""What every `gfl` command shares: --home and -v, -H/-P/--token-file, and the node they pick."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gfl_console.home import TOKEN_ENV

from gfl.errors import GflError

if TYPE_CHECKING:
    from gfl_console.client import NodeClient


def common_options() -> argparse.ArgumentParser:
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


def target_options() -> argparse.ArgumentParser:
    """-H/-P/--token-file: reach a node by its API address instead of its datadir."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "-H", "--host", help="API host of the node (default: from --home, else 127.0.0.1)"
    )
    p.add_argument("-P", "--port", type=int, help="API port of the node (default: 9434)")
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the API token (default: DATADIR/api.token, else $GFL_API_TOKEN)",
    )
    return p


def home(args: argparse.Namespace) -> str | None:
    return getattr(args, "home", None)


def read_passphrase(args: argparse.Namespace) -> str | None:
    path = getattr(args, "passphrase_file", None)
    if not path:
        return None
    try:
        return Path(path).read_text().rstrip("\n")
    except OSError as exc:
        raise GflError(f"cannot read the passphrase file {path}: {exc.strerror}") from None


def node_client(args: argparse.Namespace) -> NodeClient:
    """A NodeClient for the node running with --home, or for -H/-P, --token-file or
    $GFL_API_TOKEN (which need no datadir).

    Every command that talks to a node calls this; a parser without -H/-P is fine.
    """
    from gfl_console.client import NodeClient
    from gfl_console.home import NodeHome, find_target

    host = getattr(args, "host", None)
    port = getattr(args, "port", None)
    token_file = getattr(args, "token_file", None)
    by_token = token_file is not None or (
        bool(os.environ.get(TOKEN_ENV)) and not NodeHome(home(args)).token_path.exists()
    )
    if host is None and port is None and not by_token:
        return NodeClient.from_home(home(args))
    target = find_target(host, port, token_file=token_file, home=home(args))
    return NodeClient(target.host, target.port, target.token)
