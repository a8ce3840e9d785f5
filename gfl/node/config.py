"""The node's configuration: ``DATADIR/config.toml``, parsed and validated.

The file is written once by ``gfl init`` with every setting present and
commented, so a user can read what a node does from one page. Parsing is
strict: an unknown key or a value of the wrong type is an error naming the
key, because a silently ignored typo (``lisen = ...``) is worse than a
refused start.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from gfl.errors import ConfigError

DEFAULT_API_PORT = 9434
DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4001"


@dataclass(frozen=True)
class NodeSection:
    """[node]: how the node names itself in logs and status."""

    name: str = ""


@dataclass(frozen=True)
class NetSection:
    """[net]: the libp2p host."""

    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    bootstrap: list[str] = field(default_factory=list)
    mdns: bool = False
    blob_cap_mb: int = 1024
    max_peers: int = 64
    reprovide_s: float = 600.0
    blob_keep_s: float = 600.0
    archive: bool = False
    reachability: str = "auto"
    relay_service: bool = False
    relay_max_reservations: int = 32
    relay_max_circuits: int = 8
    relay_circuit_mb: int = 64
    relay_circuit_s: int = 600


@dataclass(frozen=True)
class ApiSection:
    """[api]: the control API (JSON over HTTP, bearer token from DATADIR/api.token)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_API_PORT
    event_buffer: int = 1024
    heartbeat_s: float = 10.0


@dataclass(frozen=True)
class ChainSection:
    """[chain]: "embedded" (in-process eth-tester) or a JSON-RPC URL."""

    url: str = "embedded"
    registry: str = ""


@dataclass(frozen=True)
class JobsSection:
    """[jobs]: which gossiped jobs this node joins."""

    auto_join: bool = False
    allow_owners: list[str] = field(default_factory=list)
    max_concurrent: int = 2


@dataclass(frozen=True)
class TrainSection:
    """[train]: local training resources."""

    device: str = "cpu"
    threads: int = 1
    eval_limit: int = 2000


@dataclass(frozen=True)
class PrivacySection:
    """[privacy]: the most differential-privacy budget (ε) this node spends on one job."""

    max_epsilon: float = math.inf


@dataclass(frozen=True)
class Config:
    """The whole validated config.toml."""

    node: NodeSection = field(default_factory=NodeSection)
    net: NetSection = field(default_factory=NetSection)
    api: ApiSection = field(default_factory=ApiSection)
    chain: ChainSection = field(default_factory=ChainSection)
    # name -> a path ("" = built in / default location) or a table the job service reads
    # (root, dataset, partition, index, of, seed)
    data: dict[str, str | dict[str, Any]] = field(default_factory=dict)
    jobs: JobsSection = field(default_factory=JobsSection)
    train: TrainSection = field(default_factory=TrainSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some keys of one section changed (command-line overrides)."""
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **changes)})


_TEMPLATE = """\
# GFL node configuration. Written by `gfl init`; edit freely, the node reads it at start.
# Every key is shown with its value; unknown keys are refused, so a typo is caught.

[node]
# A name shown in status and logs (optional).
name = {node_name}

[net]
# libp2p multiaddrs to listen on. /ip4/0.0.0.0/tcp/4001 accepts peers from anywhere.
listen = {net_listen}
# Peers dialled at start, as full multiaddrs ending in /p2p/<peer id>.
bootstrap = {net_bootstrap}
# Find peers on the local network with mDNS (off: peers come from bootstrap and the DHT).
# Announces on the interfaces in `listen` (127.0.0.1: this machine only).
mdns = {net_mdns}
# Disk space for blobs (models and updates) kept in DATADIR/blobs, in MiB.
blob_cap_mb = {net_blob_cap_mb}
# Past this many connected peers, new inbound connections are refused (counted in
# `gfl status`); the node's own dials, bootstrap peers first, still go out.
max_peers = {net_max_peers}
# Seconds between DHT announcements of the blobs this node holds (provider records expire).
reprovide_s = {net_reprovide_s}
# Seconds the blobs of a job that ended here (finished, cancelled or failed) stay for peers
# still finishing its last round; then they are evicted, all but its final model (kept while
# blob_cap_mb allows).
blob_keep_s = {net_blob_keep_s}
# An archive node keeps every blob of every job (M_0, updates, models), never evicting them,
# so that anyone can export and verify a job long after it ended (`gfl job export`).
archive = {net_archive}
# Whether other nodes can dial this one: "auto" asks peers to dial back (AutoNAT), "public"
# or "private" says so. A private node reserves a slot on up to 3 relays (bootstrap peers
# first), advertises the relayed addresses, and upgrades relayed connections to direct ones
# where its NAT allows (hole punching).
reachability = {net_reachability}
# Relay for private nodes while this node is publicly reachable.
relay_service = {net_relay_service}
# A relay's limits: peers holding a slot, circuits open at once per peer, and per circuit
# the MiB it carries (both ways together) and the seconds it stays open.
relay_max_reservations = {net_relay_max_reservations}
relay_max_circuits = {net_relay_max_circuits}
relay_circuit_mb = {net_relay_circuit_mb}
relay_circuit_s = {net_relay_circuit_s}

[api]
# The control API (used by the CLI, `gfl attach` and the Python client).
# Every request needs the bearer token in DATADIR/api.token. Keep it on loopback
# unless you put it behind TLS.
host = {api_host}
port = {api_port}
# Events kept for clients that reconnect (Last-Event-ID replay).
event_buffer = {api_event_buffer}
# Seconds between keep-alive comments on the event stream.
heartbeat_s = {api_heartbeat_s}

[chain]
# "embedded" runs an in-process eth-tester chain (one node, tests); otherwise a JSON-RPC URL
# such as "http://127.0.0.1:8545" (anvil, hardhat, geth).
url = {chain_url}
# Address of the JobRegistry contract ("" = deploy one / use the chain's default).
registry = {chain_registry}

[data]
# Local datasets by name: a directory, or a table for one partition of a dataset, e.g.:
# mnist = "/path/to/mnist"
# digits = {{partition = "iid", index = 0, of = 3, seed = 0}}
{data_lines}
[jobs]
# Join every valid gossiped job automatically (otherwise only jobs you accept:
# gfl job join ID).
auto_join = {jobs_auto_join}
# Only jobs owned by these Ethereum addresses are joined automatically ([] = any owner).
allow_owners = {jobs_allow_owners}
# Jobs trained at the same time; the others wait in the queue (gfl job list).
max_concurrent = {jobs_max_concurrent}

[train]
# torch device: "cpu", "cuda", "cuda:1", "mps" (`gfl up` refuses one this machine lacks).
device = {train_device}
# CPU threads for torch (0 = torch's default).
threads = {train_threads}
# Each node tests every new global model on (at most) this many examples of its test
# split, beside the next round's training; 0 = the whole split.
eval_limit = {train_eval_limit}

[privacy]
# The most ε (differential privacy) this node spends on one job: it never joins a job whose
# [privacy] epsilon is larger, nor, below inf, a job trained without [privacy]. Within a job
# it stops sending updates once the job's own budget is spent. inf = no ceiling.
max_epsilon = {privacy_max_epsilon}
"""


def _toml_key(key: str) -> str:
    return tomli_w.dumps({key: 0}).rsplit("=", 1)[0].strip()


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # inline table: stays inside its section
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def render_config(config: Config) -> str:
    """The commented config.toml text for ``config``."""
    values: dict[str, str] = {}
    for section in ("node", "net", "api", "chain", "jobs", "train", "privacy"):
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            values[f"{section}_{key}"] = _toml_value(value)
    values["data_lines"] = "".join(
        f"{_toml_key(name)} = {_toml_value(value)}\n" for name, value in sorted(config.data.items())
    )
    return _TEMPLATE.format(**values)


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _check_value(key: str, expected: Any, value: Any) -> Any:
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise ConfigError(f"config: {key} must be an array, not {_type_name(value)}")
        return [_check_value(f"{key}[{i}]", item_type, v) for i, v in enumerate(value)]
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        wanted = _type_name(expected() if expected in (bool, int, float, str) else [])
        raise ConfigError(f"config: {key} must be {wanted}, not {_type_name(value)}")
    return value


def _check_data(key: str, value: Any) -> str | dict[str, Any]:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(v, str | int | float | bool):
                raise ConfigError(f"config: {key}.{k} must be a string or a number")
        return dict(value)
    raise ConfigError(
        f"config: {key} must be a string (a path) or a table, not {_type_name(value)}"
    )


def _parse_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config: [{name}] must be a table, not {_type_name(raw)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"config: unknown key {name}.{key} (known: {', '.join(sorted(known))})"
            )
        values[key] = _check_value(f"{name}.{key}", hints[key], value)
    return cls(**values)


def validate_config(config: Config) -> None:
    """Cross-key checks (ranges, URL and multiaddr shapes)."""
    if not 0 <= config.api.port <= 65535:
        raise ConfigError(f"config: api.port must be between 0 and 65535, not {config.api.port}")
    if config.api.event_buffer < 1:
        raise ConfigError("config: api.event_buffer must be at least 1")
    if config.api.heartbeat_s <= 0:
        raise ConfigError("config: api.heartbeat_s must be positive")
    if config.jobs.max_concurrent < 1:
        raise ConfigError("config: jobs.max_concurrent must be at least 1")
    if not config.privacy.max_epsilon > 0:
        raise ConfigError("config: privacy.max_epsilon must be a number above 0 (inf: none)")
    if config.train.threads < 0:
        raise ConfigError("config: train.threads must be 0 or more")
    if config.net.blob_cap_mb < 1:
        raise ConfigError("config: net.blob_cap_mb must be at least 1")
    if config.net.max_peers < 1:
        raise ConfigError("config: net.max_peers must be at least 1")
    if config.net.reprovide_s < 10:
        raise ConfigError("config: net.reprovide_s must be at least 10 (seconds)")
    if not 0 <= config.net.blob_keep_s < float("inf"):
        raise ConfigError("config: net.blob_keep_s must be 0 or more (seconds)")
    if config.net.reachability not in ("auto", "public", "private"):
        raise ConfigError(
            f'config: net.reachability must be "auto", "public" or "private", '
            f"not {config.net.reachability!r}"
        )
    for key in ("relay_max_reservations", "relay_max_circuits"):
        if getattr(config.net, key) < 1:
            raise ConfigError(f"config: net.{key} must be at least 1")
    for key in ("relay_circuit_mb", "relay_circuit_s"):
        if getattr(config.net, key) < 0:
            raise ConfigError(f"config: net.{key} must be 0 (no limit) or more")
    url = config.chain.url
    if url != "embedded" and not url.startswith(("http://", "https://")):
        raise ConfigError(f'config: chain.url must be "embedded" or an http(s) URL, not {url!r}')
    registry = config.chain.registry
    if registry and not _ADDRESS.fullmatch(registry):
        raise ConfigError(
            f"config: chain.registry must be a contract address (0x and 40 hex digits) "
            f'or "", not {registry!r}'
        )
    for addr in config.net.listen:
        check_listen_addr(addr)
    for addr in config.net.bootstrap:
        check_bootstrap_addr(addr)
    for name, value in config.data.items():
        if isinstance(value, dict):
            _check_partition(f"data.{name}", value)


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_LISTEN_EXAMPLE = "e.g. /ip4/0.0.0.0/tcp/4001"


def _multiaddr(key: str, addr: str) -> Any:
    from multiaddr import Multiaddr

    if not addr.startswith("/"):
        raise ConfigError(f"config: {key}: {addr!r} is not a multiaddr (it must start with '/')")
    try:
        return Multiaddr(addr)
    except Exception as exc:  # py-multiaddr raises several types, all for a malformed address
        why = str(exc).split(":", 1)[-1].split(" (string:")[0].strip()
        raise ConfigError(f"config: {key}: {addr!r} is not a multiaddr: {why}") from None


def check_listen_addr(addr: str) -> None:
    """Refuse a listen address the libp2p host cannot bind: it is /ip4|ip6/HOST/tcp/PORT."""
    names = [p.name for p in _multiaddr("net.listen", addr).protocols()]
    if names != ["ip4", "tcp"] and names != ["ip6", "tcp"]:
        raise ConfigError(
            f"config: net.listen: {addr!r} is not /ip4|ip6/HOST/tcp/PORT ({_LISTEN_EXAMPLE})"
        )


def check_bootstrap_addr(addr: str) -> None:
    """Refuse a bootstrap address without the peer id the node needs to dial it."""
    names = [p.name for p in _multiaddr("net.bootstrap", addr).protocols()]
    if not names or names[-1] != "p2p":
        missing = "/p2p/<peer id>"
    elif "tcp" not in names:
        missing = "/tcp/PORT"
    else:
        return
    raise ConfigError(
        f"config: net.bootstrap: {addr!r} lacks {missing} (give a peer's full address as "
        "its `gfl status` prints it: /ip4/HOST/tcp/PORT/p2p/<peer id>)"
    )


def _check_partition(key: str, table: dict[str, Any]) -> None:
    index, of = table.get("index", 0), table.get("of", 1)
    for name, value in (("index", index), ("of", of)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"config: {key}.{name} must be an integer, not {_type_name(value)}")
    if of < 1:
        raise ConfigError(f"config: {key}.of must be at least 1, not {of}")
    if not 0 <= index < of:
        raise ConfigError(
            f"config: {key}.index must be between 0 and {key}.of - 1 = {of - 1}, not {index}"
        )


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document into a `Config`."""
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for name, raw in data.items():
        if name not in hints:
            raise ConfigError(
                f"config: unknown section [{name}] (known: {', '.join(sorted(hints))})"
            )
        if name == "data":
            if not isinstance(raw, dict):
                raise ConfigError(f"config: [data] must be a table, not {_type_name(raw)}")
            sections[name] = {k: _check_data(f"data.{k}", v) for k, v in raw.items()}
        else:
            sections[name] = _parse_section(name, hints[name], raw)
    config = Config(**sections)
    validate_config(config)
    return config


def load_config(path: Path) -> Config:
    """Read and validate config.toml; every problem is a one-line `ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}; run `gfl init` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {str(exc).removeprefix('config: ')}") from None


def write_config(path: Path, config: Config) -> None:
    """Atomically write ``config`` as commented TOML."""
    text = render_config(config)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def update_config(path: Path, section: str, **changes: Any) -> Config:
    """Change keys of one section (e.g. chain.registry after a deploy); rewrites the file."""
    config = load_config(path)
    hints = typing.get_type_hints(type(getattr(config, section)))
    for key, value in changes.items():
        if key not in hints:
            raise ConfigError(f"config: unknown key {section}.{key}")
        _check_value(f"{section}.{key}", hints[key], value)
    config = config.replace(section, **changes)
    validate_config(config)
    write_config(path, config)
    return config
