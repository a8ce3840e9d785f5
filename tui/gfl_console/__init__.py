"""The attach console: a terminal UI over a node's control API (``gfl attach``).

    from gfl_console import run_console
    raise SystemExit(run_console("127.0.0.1", 9434, token))

Importing this package imports Textual only when the console is run.
"""

from __future__ import annotations

__all__ = ["run_console"]


def run_console(host: str, port: int, token: str) -> int:
    """Run the console against the node at ``host:port`` until the user quits; the exit code."""
    from gfl_console.app import ConsoleApp

    app = ConsoleApp(host, port, token)
    result = app.run()
    return 0 if result is None else int(result)
