"""The chain layer: the JobRegistry contract seen through one node account.

Use `open_chain` and the `Registry` it returns; everything is synchronous (the
node calls it through ``trio.to_thread.run_sync``). Backends:

- ``"embedded"``: eth-tester + py-evm in this process (see `gfl.chain.embedded`
  for how it persists across restarts);
- ``http(s)://…`` or an ``.ipc`` path: any JSON-RPC endpoint; transactions are
  signed locally with the node key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gfl.chain.errors import (
    AnnouncementRejected,
    ChainError,
    ChainUnavailable,
    ContractRevert,
    InsufficientFunds,
    InvalidJobParams,
    NoRegistry,
    WrongChain,
)
from gfl.chain.records import (
    ChainEvent,
    JobParams,
    JobRecord,
    JobStatus,
    LeaveReason,
    MemberRecord,
    MemberStatus,
    SlashReason,
)
from gfl.identity import NodeIdentity

if TYPE_CHECKING:
    from gfl.chain.registry import Registry

# web3 takes most of a second to import: the CLI imports this package for every
# command, so the web3-backed names load on first use.
_LAZY = {
    "Registry": "gfl.chain.registry",
    "Tx": "gfl.chain.transactions",
    "LogChainBroken": "gfl.chain.logchain",
    "spec_hash_of": "gfl.chain.proofs",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gfl.chain' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AnnouncementRejected",
    "ChainError",
    "ChainEvent",
    "ChainUnavailable",
    "ContractRevert",
    "InsufficientFunds",
    "InvalidJobParams",
    "JobParams",
    "JobRecord",
    "JobStatus",
    "LeaveReason",
    "LogChainBroken",
    "MemberRecord",
    "MemberStatus",
    "NoRegistry",
    "Registry",
    "SlashReason",
    "Tx",
    "WrongChain",
    "deploy_registry",
    "open_chain",
    "spec_hash_of",
]


def open_chain(
    url: str,
    identity: NodeIdentity,
    *,
    registry_address: str | None = None,
    state_dir: Path | None = None,
    timeout: float = 30,
    chain_id: int | None = None,
) -> Registry:
    """Connect `identity` to the JobRegistry on `url` ("embedded" or a JSON-RPC URL).

    Raises `ChainUnavailable` when the endpoint does not answer within `timeout`
    seconds (retrying meanwhile), `WrongChain` when it serves another chain than
    `chain_id` or than the one `state_dir` remembers, `NoRegistry` when there is
    no JobRegistry at `registry_address`.
    """
    from gfl.chain.registry import Registry

    if url == "embedded":
        from gfl.chain.embedded import EmbeddedChain

        chain = EmbeddedChain(state_dir)
        try:
            if chain_id is not None and chain.chain_id != chain_id:
                raise WrongChain(f"the embedded chain is chain {chain.chain_id}, not {chain_id}")
            chain.fund(identity.eth_address)
            registry = Registry(
                chain.w3,
                identity,
                registry_address or chain.registry_address,
                endpoint=chain.endpoint,
                chain_id=chain.chain_id,
                timeout=timeout,
                on_close=chain.close,
                embedded=chain,
            )
            registry.check_registry()
        except BaseException:
            chain.close()
            raise
        return registry

    from gfl.chain.rpc import check_chain_id, connect

    if not registry_address:
        raise NoRegistry(
            f"no registry address configured for {url}; deploy one with "
            f"`gfl chain deploy --rpc {url}`"
        )
    w3, actual = connect(url, timeout)
    check_chain_id(state_dir, url, actual, chain_id)
    registry = Registry(
        w3, identity, registry_address, endpoint=url, chain_id=actual, timeout=timeout
    )
    registry.check_registry()
    return registry


def deploy_registry(url: str, identity: NodeIdentity, *, timeout: float = 30) -> str:
    """Deploy a JobRegistry to a JSON-RPC chain with the node key; returns its address."""
    from gfl.chain.rpc import deploy_registry as _deploy

    return _deploy(url, identity, timeout=timeout)
