"""Where a node is: its datadir's API token and address, read without the gfl package.

A node's datadir (``$GFL_HOME`` or ``~/.gfl``) holds ``api.token`` (the bearer
token), ``api.json`` (``{"host", "port", "pid"}``, written by the running node)
and ``node.lock``, which the running node holds an ``flock`` on. The lock, not
``api.json``, says whether a node runs: a killed node leaves ``api.json``
behind, but the kernel drops its lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gfl_console.errors import NodeClientError, NodeNotRunning

try:
    import fcntl
except ImportError:  # Windows: no flock; api.json alone says where a node may be
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "NodeHome",
    "Target",
    "find_target",
    "token_from_file",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9434  # the node's default (gfl.node.config.DEFAULT_API_PORT)
TOKEN_ENV = "GFL_API_TOKEN"


@dataclass(frozen=True)
class Target:
    """A node's API address and the token to present to it."""

    host: str
    port: int
    token: str

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def token_from_file(path: str | os.PathLike[str]) -> str:
    """Read an API token file (``--token-file``)."""
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise NodeClientError(f"cannot read the token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise NodeClientError(f"the token file {path} is not text") from None
    if not token:
        raise NodeClientError(f"the token file {path} is empty")
    return token


class NodeHome:
    """One node's datadir, as far as a client needs it."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        if home is None or str(home) == "":
            home = os.environ.get("GFL_HOME") or Path.home() / ".gfl"
        self.root = Path(home).expanduser().absolute()

    def __repr__(self) -> str:
        return f"NodeHome({str(self.root)!r})"

    @property
    def token_path(self) -> Path:
        return self.root / "api.token"

    @property
    def api_info_path(self) -> Path:
        return self.root / "api.json"

    @property
    def lock_path(self) -> Path:
        return self.root / "node.lock"

    def token(self) -> str:
        """The API token; a `NodeClientError` naming `gfl init` when there is none."""
        if not self.root.is_dir():
            raise NodeClientError(
                f"no datadir at {self.root}; run `gfl init --home {self.root}` first"
            )
        try:
            return token_from_file(self.token_path)
        except NodeClientError:
            if not self.token_path.exists():
                raise NodeClientError(
                    f"no API token at {self.token_path}; run `gfl init --home {self.root}` first"
                ) from None
            raise

    def is_running(self) -> bool:
        """True while a node process holds this datadir's lock."""
        if fcntl is None:
            return self.api_info_path.exists()
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except OSError:  # no lock file: no node ever ran here (or we may not open it)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing the descriptor also drops the lock we may have taken
        return False

    def api_address(self) -> tuple[str, int] | None:
        """(host, port) from ``api.json``, or None when no node announced one."""
        try:
            raw = json.loads(self.api_info_path.read_text())
            return str(raw["host"]), int(raw["port"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            raise NodeClientError(f"{self.api_info_path} is corrupt; is a node running?") from None

    def locate(self) -> Target:
        """The running node's address and token; `NodeNotRunning` when no node holds the datadir."""
        token = self.token()
        address = self.api_address() if self.is_running() else None
        if address is None:
            raise NodeNotRunning(f"no node is running with datadir {self.root}")
        return Target(address[0], address[1], token)


def find_target(
    host: str | None = None,
    port: int | None = None,
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    fallback: Callable[[], tuple[str, int]] | None = None,
) -> Target:
    """Where to connect and with which token; the node need not be running yet.

    The token is ``token``, else ``token_file``'s, else ``$GFL_API_TOKEN`` when an
    address is given or the datadir has no token, else the datadir's. The address is
    ``host``/``port``, else the datadir's ``api.json``, else ``fallback()``, else
    127.0.0.1:9434. Neither a token from outside nor an address needs a datadir.
    """
    datadir = NodeHome(home)
    named = host is not None or port is not None
    if token is not None and not token.strip():
        raise NodeClientError("the API token is empty")
    if token is None:
        env = os.environ.get(TOKEN_ENV, "").strip()
        if token_file is not None:
            token = token_from_file(token_file)
        elif env and (named or not datadir.token_path.exists()):
            token = env
        else:
            token = datadir.token()
    if named:
        return Target(host or DEFAULT_HOST, port or DEFAULT_PORT, token)
    address = datadir.api_address() or (fallback() if fallback else (DEFAULT_HOST, DEFAULT_PORT))
    return Target(address[0], address[1], token)
