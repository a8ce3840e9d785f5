"""An Ethereum chain inside the process: eth-tester with py-evm.

The default for a standalone node and for tests. The JobRegistry is deployed
at start from eth-tester's first dev account (private key 1), so its address
is the same on every embedded chain; node accounts are funded from it.

Persistence: when a state directory is given, every transaction that reaches
the chain is appended to ``chain.journal`` (`gfl.chain.journal`: one checksummed
record per transaction, the signed raw transaction and the block timestamp it was
mined at, fsync'd before the sender hears of it) and replayed on the next start
with those timestamps, so the contract sees the same ``block.timestamp`` and
reaches the same state. Block hashes differ between runs (py-evm draws prevrandao
at random); transaction hashes and state do not. When a record cannot be written
(disk full), the transaction is already in the chain's memory but would be gone
after a restart: the chain then refuses every request, so nothing is built on it.

Block timestamps follow a clock (wall time plus any `advance_time`), read when
a transaction arrives: eth-tester alone would stamp a block with the time the
previous one was mined.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend
from eth_typing import Hash32
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.providers.eth_tester import EthereumTesterProvider
from web3.types import Wei

from gfl.chain import artifact
from gfl.chain.errors import ChainError
from gfl.chain.journal import Journal
from gfl.chain.transactions import TxSender

log = logging.getLogger(__name__)

JOURNAL_FILE = "chain.journal"
JOURNAL_VERSION = 1
#: eth-tester's first prefunded account: private key 0x…01 (well known, dev only).
DEV_KEY = (1).to_bytes(32, "big")
DEV_ADDRESS = Account.from_key(DEV_KEY).address
#: What `fund` gives a node account that has less than half of it.
NODE_FUNDING_WEI = 1_000 * 10**18


class _EmbeddedProvider(EthereumTesterProvider):
    """Serializes access to py-evm (not thread-safe) and journals raw transactions."""

    def __init__(self, chain: EmbeddedChain) -> None:
        super().__init__(chain.tester)
        self._chain = chain

    def make_request(self, method: Any, params: Any) -> Any:
        with self._chain.lock:
            self._chain._check_journal()
            if method == "eth_sendRawTransaction":
                return self._chain._send_raw(
                    params[0], lambda: super(_EmbeddedProvider, self).make_request(method, params)
                )
            return super().make_request(method, params)


class EmbeddedChain:
    """An in-process chain with the registry deployed; share it between accounts."""

    endpoint = "embedded"
    #: eth-tester's fixed chain id.
    CHAIN_ID = 131277322940537

    def __init__(self, state_dir: Path | None = None) -> None:
        self.lock = threading.RLock()
        self._offset = 0.0
        self._journal = Journal(Path(state_dir) / JOURNAL_FILE) if state_dir else None
        try:
            entries, genesis_ts = self._read_journal()
            overrides = {"timestamp": genesis_ts} if genesis_ts else None
            params = PyEVMBackend.generate_genesis_params(overrides=overrides)
            self.genesis_timestamp: int = params["timestamp"]
            self.tester = EthereumTester(PyEVMBackend(genesis_parameters=params))
            self.w3 = Web3(_EmbeddedProvider(self))
            self.chain_id: int = self.w3.eth.chain_id
            self._replay(entries)
            if self._journal is not None and genesis_ts is None:
                self._write(
                    {
                        "gfl_chain_journal": JOURNAL_VERSION,
                        "genesis_timestamp": self.genesis_timestamp,
                    }
                )
            self.registry_address: str = to_checksum_address(_create_address(DEV_ADDRESS, 0))
            self._dev = TxSender(
                self.w3, DEV_KEY, endpoint=self.endpoint, chain_id=self.chain_id, timeout=30
            )
            if not self.w3.eth.get_code(self.registry_address):
                self._deploy()
        except BaseException:
            self.close()
            raise

    # -- time ------------------------------------------------------------

    def now(self) -> int:
        return int(time.time() + self._offset)

    def advance_time(self, seconds: float) -> None:
        """Move the clock forward and mine an empty block stamped with the new time."""
        with self.lock:
            self._check_journal()
            # relative to chain time, which runs ahead of the wall clock when
            # several blocks are mined within one second
            head = self.tester.backend.chain.get_canonical_head().timestamp
            target = max(time.time() + self._offset, head) + seconds
            self._offset = target - time.time()
            ts = self._stamp_pending(int(target))
            self.tester.mine_blocks(1)
            self._write({"offset": self._offset, "ts": ts})

    def _stamp_pending(self, ts: int) -> int:
        chain = self.tester.backend.chain
        parent = chain.get_canonical_head()
        ts = max(ts, parent.timestamp + 1, chain.header.timestamp)
        if ts != chain.header.timestamp:
            chain.header = chain.header.copy(timestamp=ts)
        return ts

    # -- transactions and journal ---------------------------------------

    def _send_raw(self, raw_hex: str, send: Any) -> Any:
        ts = self._stamp_pending(self.now())
        response = send()
        if isinstance(response, dict) and "result" in response:
            self._write(
                {
                    "ts": ts,
                    "tx": raw_hex if isinstance(raw_hex, str) else "0x" + bytes(raw_hex).hex(),
                }
            )
        return response

    def _write(self, entry: dict[str, Any]) -> None:
        if self._journal is not None:
            self._journal.append(entry)

    def _check_journal(self) -> None:
        if self._journal is not None and self._journal.failed is not None:
            raise ChainError(
                f"the embedded chain stopped: {self._journal.failed}; restart the node "
                "once there is room (the transaction it could not record is not kept)"
            )

    def _read_journal(self) -> tuple[list[dict[str, Any]], int | None]:
        if self._journal is None or not self._journal.records:
            return [], None
        head, *entries = self._journal.records
        if head.get("gfl_chain_journal") != JOURNAL_VERSION:
            raise ChainError(f"{self._journal.path} is not a GFL chain journal (version 1)")
        return entries, int(head["genesis_timestamp"])

    def _replay(self, entries: list[dict[str, Any]]) -> None:
        if not entries or self._journal is None:
            return
        started = time.monotonic()
        chain = self.tester.backend.chain
        for n, entry in enumerate(entries):
            # exactly the recorded time: py-evm stamps a new pending block with the wall
            # clock, which during a replay is later than when the transaction first ran
            ts = max(int(entry["ts"]), chain.get_canonical_head().timestamp + 1)
            chain.header = chain.header.copy(timestamp=ts)
            if "offset" in entry:
                self._offset = float(entry["offset"])  # the clock offset after advancing
                self.tester.mine_blocks(1)
                continue
            try:
                self.tester.send_raw_transaction(entry["tx"])
            except Exception as exc:
                raise ChainError(
                    f"replaying {self._journal.path} failed at transaction {n + 1}: {exc}"
                ) from None
        log.info("replayed %d journal entries in %.1fs", len(entries), time.monotonic() - started)

    def _deploy(self) -> None:
        tx = self._dev.send({"data": artifact.bytecode()}, what="deploying the JobRegistry")
        receipt = self.w3.eth.get_transaction_receipt(Hash32(tx.tx_hash))
        if receipt["contractAddress"] != self.registry_address:
            raise ChainError("the embedded JobRegistry landed at an unexpected address")

    # -- accounts --------------------------------------------------------

    def fund(self, address: str, wei: int = NODE_FUNDING_WEI) -> None:
        """Top `address` up from the dev account when it holds less than half of `wei`."""
        checksummed = to_checksum_address(address)
        if self.w3.eth.get_balance(checksummed) >= wei // 2:
            return
        self._dev.send({"to": checksummed, "value": Wei(wei)}, what="funding a node account")

    def close(self) -> None:
        with self.lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None


def _create_address(sender: str, nonce: int) -> str:
    import rlp
    from eth_utils.crypto import keccak

    return "0x" + keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:].hex()
