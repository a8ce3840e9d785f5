"""``gfl-console`` (or ``python -m gfl_console``): the console, without the gfl package.

    gfl-console                                        # the node of $GFL_HOME or ~/.gfl
    ssh -L 9434:127.0.0.1:9434 host                    # a remote node, through a tunnel:
    gfl-console -H 127.0.0.1 -P 9434 --token-file token

The token is ``--token``, else ``--token-file``, else ``$GFL_API_TOKEN`` when
``-H``/``-P`` name the node or the datadir has no token, else the datadir's ``api.token``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gfl_console.errors import NodeClientError
from gfl_console.home import TOKEN_ENV, find_target

PROG = "gfl-console"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="The GFL node console: watch and drive one node through its control API.",
    )
    p.add_argument(
        "-H", "--host", help="API host of the node (default: from --home, else 127.0.0.1)"
    )
    p.add_argument("-P", "--port", type=int, help="API port of the node (default: 9434)")
    token = p.add_mutually_exclusive_group()
    token.add_argument(
        "--token", help=f"the API token (other users see it in `ps`: prefer ${TOKEN_ENV})"
    )
    token.add_argument("--token-file", metavar="FILE", help="file holding the API token")
    p.add_argument(
        "--home", metavar="DIR", help="the node's datadir (default: $GFL_HOME or ~/.gfl)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console; the exit status (1 with one line on stderr when it cannot start)."""
    args = _parser().parse_args(argv)
    try:
        target = find_target(
            args.host, args.port, token=args.token, token_file=args.token_file, home=args.home
        )
        if not 0 < target.port < 65536:
            raise NodeClientError(f"the API port must be 1 to 65535, not {target.port}")
    except NodeClientError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    from gfl_console import run_console

    try:
        return run_console(target.host, target.port, target.token)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
