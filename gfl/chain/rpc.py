"""Connecting to any Ethereum JSON-RPC endpoint (anvil, hardhat, geth, a testnet)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from eth_typing import Hash32
from web3 import HTTPProvider, IPCProvider, Web3

from gfl.chain import artifact
from gfl.chain.errors import ChainError, WrongChain
from gfl.chain.transactions import TxSender, with_retry
from gfl.identity import NodeIdentity

log = logging.getLogger(__name__)
CHAIN_STATE_FILE = "chain.json"


def connect(url: str, timeout: float) -> tuple[Web3, int]:
    """A Web3 for `url` and the chain id it serves; `ChainUnavailable` when it does not answer."""
    provider: HTTPProvider | IPCProvider
    if url.startswith(("http://", "https://")):
        provider = HTTPProvider(
            url,
            request_kwargs={"timeout": max(1.0, min(timeout, 10.0))},
            exception_retry_configuration=None,  # we retry ourselves, with a deadline
        )
    elif url.startswith("ipc://") or url.endswith(".ipc"):
        # web3 annotates the timeout as int but hands it to a float-valued Timeout
        provider = IPCProvider(url.removeprefix("ipc://"), timeout=timeout)  # type: ignore[arg-type]
    else:
        raise ChainError(
            f"unsupported chain URL {url!r}: use 'embedded', http(s)://host:port or a .ipc path"
        )
    w3 = Web3(provider)
    chain_id = with_retry(
        lambda: w3.eth.chain_id, timeout=timeout, endpoint=url, what="reading the chain id"
    )
    return w3, int(chain_id)


def check_chain_id(state_dir: Path | None, url: str, chain_id: int, expected: int | None) -> None:
    """Refuse a chain other than `expected` or than the one `state_dir` remembers."""
    if expected is not None and chain_id != expected:
        raise WrongChain(f"{url} serves chain {chain_id}, expected chain {expected}")
    if state_dir is None:
        return
    path = Path(state_dir) / CHAIN_STATE_FILE
    if path.exists():
        try:
            remembered = int(json.loads(path.read_text("utf-8"))["chain_id"])
        except (ValueError, KeyError, TypeError):
            raise ChainError(f"{path} is corrupt; delete it to accept the current chain") from None
        if remembered != chain_id:
            raise WrongChain(
                f"{url} serves chain {chain_id}, but this node's jobs live on chain "
                f"{remembered} (remembered in {path})"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"chain_id": chain_id, "url": url}) + "\n", "utf-8")
    tmp.replace(path)


def deploy_registry(url: str, identity: NodeIdentity, *, timeout: float = 30) -> str:
    """Deploy a JobRegistry with the node key; returns its checksummed address."""
    w3, chain_id = connect(url, timeout)
    sender = TxSender(w3, identity.private_key, endpoint=url, chain_id=chain_id, timeout=timeout)
    tx = sender.send({"data": artifact.bytecode()}, what="deploying the JobRegistry")
    receipt = with_retry(
        lambda: w3.eth.get_transaction_receipt(Hash32(tx.tx_hash)),
        timeout=timeout,
        endpoint=url,
        what="reading the deployment receipt",
    )
    address = receipt["contractAddress"]
    if address is None:
        raise ChainError(f"deploying the JobRegistry on {url}: the receipt names no contract")
    log.info("deployed JobRegistry at %s on %s (gas %d)", address, url, tx.gas_used)
    return Web3.to_checksum_address(address)
