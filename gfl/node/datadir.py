"""The node's data directory: where everything a node owns lives.

``DATADIR`` holds ``config.toml``, ``keys/`` (the node key), ``api.token``
(the control API's bearer token), ``api.json`` (where a running node's API
listens), ``node.lock``, ``logs/``, ``blobs/``, ``models/``, ``chain/`` and
``node.db``. The default is ``$GFL_HOME`` or ``~/.gfl``.

One node per datadir is enforced with ``fcntl.flock`` on ``node.lock``: the
kernel drops the lock when the process dies, so a crashed node never leaves
a stale lock behind (unlike a pid file).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gfl.errors import ConfigError, GflError
from gfl.node.config import Config, load_config, write_config

if TYPE_CHECKING:
    from gfl.identity import NodeIdentity

# gfl.identity imports eth-account (half a second); it is imported where a key is
# needed so that `gfl status` and `gfl stop` start fast.
KEY_FILE = "node.key"
KEYSTORE_FILE = "node.keystore.json"


class NodeAlreadyRunning(GflError):
    """Another node process holds this datadir."""


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The datadir: ``home`` if given, else ``$GFL_HOME``, else ``~/.gfl``."""
    if home is None or str(home) == "":
        home = os.environ.get("GFL_HOME") or Path.home() / ".gfl"
    return Path(home).expanduser().absolute()


@dataclass(frozen=True)
class ApiInfo:
    """Where a running node's control API listens (``DATADIR/api.json``)."""

    host: str
    port: int
    pid: int


class DataDir:
    """Paths and on-disk state of one node's datadir."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = resolve_home(root)

    def __repr__(self) -> str:
        return f"DataDir({str(self.root)!r})"

    # paths ---------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def token_path(self) -> Path:
        return self.root / "api.token"

    @property
    def api_info_path(self) -> Path:
        return self.root / "api.json"

    @property
    def lock_path(self) -> Path:
        return self.root / "node.lock"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def log_path(self) -> Path:
        return self.logs_dir / "node.log"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def chain_dir(self) -> Path:
        return self.root / "chain"

    @property
    def db_path(self) -> Path:
        return self.root / "node.db"

    # state ---------------------------------------------------------------
    def is_initialised(self) -> bool:
        """True once `gfl init` wrote a config or a key here."""
        return (
            self.config_path.exists()
            or (self.keys_dir / KEY_FILE).exists()
            or (self.keys_dir / KEYSTORE_FILE).exists()
        )

    def require_initialised(self) -> None:
        if not self.root.is_dir():
            raise ConfigError(f"no datadir at {self.root}; run `gfl init --home {self.root}` first")
        if not self.is_initialised():
            raise ConfigError(
                f"{self.root} is not a GFL datadir; run `gfl init --home {self.root}` first"
            )

    def init(
        self,
        config: Config | None = None,
        *,
        identity: NodeIdentity | None = None,
        passphrase: str | None = None,
        force: bool = False,
    ) -> NodeIdentity:
        """Create the datadir: config, node key, API token. Refuses to overwrite unless forced."""
        if self.is_initialised() and not force:
            raise ConfigError(
                f"{self.root} is already initialised; use --force to replace its key and config"
            )
        if force:
            with self.lock():  # never re-key a datadir under a running node
                pass
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for d in (self.logs_dir, self.blobs_dir, self.models_dir):
                d.mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the datadir {self.root}: {exc.strerror}") from None
        from gfl.identity import NodeIdentity, save_identity, write_private_file

        identity = identity or NodeIdentity.generate()
        save_identity(self.keys_dir, identity, passphrase)
        write_private_file(self.token_path, secrets.token_urlsafe(32).encode())
        write_config(self.config_path, config or Config())
        self.api_info_path.unlink(missing_ok=True)
        return identity

    def load_config(self) -> Config:
        self.require_initialised()
        return load_config(self.config_path)

    def load_identity(self, passphrase: str | None = None) -> NodeIdentity:
        from gfl.identity import load_identity

        self.require_initialised()
        return load_identity(self.keys_dir, passphrase)

    def read_token(self) -> str:
        """The control API's bearer token."""
        try:
            token = self.token_path.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(
                f"no API token at {self.token_path}; run `gfl init --home {self.root}` first"
            ) from None
        if not token:
            raise ConfigError(f"the API token file {self.token_path} is empty")
        return token

    # the running node ----------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the datadir for one node process; `NodeAlreadyRunning` if another holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise NodeAlreadyRunning(
                    f"a node is already running with datadir {self.root} "
                    f"(stop it with `gfl stop --home {self.root}`)"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def is_locked(self) -> bool:
        """True while a node process holds this datadir."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def write_api_info(self, info: ApiInfo) -> None:
        from gfl.identity import write_private_file

        data = json.dumps({"host": info.host, "port": info.port, "pid": info.pid}).encode()
        write_private_file(self.api_info_path, data)

    def read_api_info(self) -> ApiInfo | None:
        """Where the node's API listens, or None when no node has announced one."""
        try:
            raw: Any = json.loads(self.api_info_path.read_text())
            return ApiInfo(host=str(raw["host"]), port=int(raw["port"]), pid=int(raw["pid"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{self.api_info_path} is corrupt; is a node running?") from None

    def clear_api_info(self) -> None:
        self.api_info_path.unlink(missing_ok=True)
