"""Signing and sending transactions, and retrying RPC calls, the same way on every backend.

Transactions are signed locally with the node key (eth-account); the nonce is
tracked locally and re-read from the chain when the endpoint says it is too
low or when a send failed half-way. Gas is estimated first, so a call the
registry would refuse fails before it costs a nonce, with its custom error.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import requests
from eth_account import Account
from eth_typing import ChecksumAddress, Hash32
from web3 import Web3
from web3.exceptions import TransactionNotFound
from web3.types import TxParams, Wei

from gfl.chain.artifact import decode_revert, revert_data_from
from gfl.chain.errors import ChainError, ChainUnavailable, ContractRevert, InsufficientFunds

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,  # the endpoint died mid-response
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)
_MAX_BACKOFF = 2.0
#: Gas beyond the estimate (+25 %): the chain may move between estimate and inclusion, so a
#: vote estimated as one among many can land as the one that decides the round (the
#: decision, its events, a sharded round's kept key: ~30k) and close the next. Unused gas
#: is not paid for.
GAS_HEADROOM = 40_000


@dataclass(frozen=True)
class Tx:
    """A mined transaction."""

    tx_hash: bytes
    block_number: int
    gas_used: int


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT)


def is_out_of_gas(exc: BaseException) -> bool:
    """Whether an eth_call failed for want of gas: the endpoint's call gas cap, not a refusal
    of the registry (its views are bounded), so worth another try."""
    message = str(exc).lower().replace(" ", "")
    # py-evm: "Out of gas: Needed 3", anvil: "EVM error OutOfGas", geth: "out of gas" or
    # "gas required exceeds allowance"
    return "outofgas" in message or "gasrequiredexceedsallowance" in message


def with_retry(
    fn: Callable[[], T], *, timeout: float, endpoint: str, what: str, reading: bool = False
) -> T:
    """Call `fn`, retrying connection failures with backoff until `timeout` seconds pass.

    With `reading`, an out-of-gas answer is retried too (see `is_out_of_gas`).
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return fn()
        except Exception as exc:
            if not (is_transient(exc) or (reading and is_out_of_gas(exc))):
                raise
            if time.monotonic() + delay > deadline:
                if not is_transient(exc):
                    raise ChainUnavailable(
                        f"the chain at {endpoint} kept running out of gas for {timeout:g}s "
                        f"({what}): its eth_call gas cap is lower than this read needs"
                    ) from None
                raise ChainUnavailable(
                    f"the chain at {endpoint} did not answer within {timeout:g}s ({what}): "
                    f"{_why(exc)}"
                ) from None
            log.debug("chain %s unavailable (%s), retrying in %.2fs", endpoint, what, delay)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)


def as_chain_error(exc: BaseException, what: str) -> ChainError:
    """Map a web3 / eth-tester failure to a typed chain error (custom errors decoded)."""
    if isinstance(exc, ChainError):
        return exc
    data = revert_data_from(exc)
    if data is not None:
        decoded = decode_revert(data)
        if decoded is not None:
            return ContractRevert(*decoded)
    if "revert" in str(exc).lower():
        return ContractRevert("Reverted", {"detail": _short(exc)})
    return ChainError(f"{what} failed: {_short(exc)}")


def _why(exc: BaseException) -> str:
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        return "cannot connect"
    return _short(exc)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


class TxSender:
    """Signs and sends transactions from one account; safe to share between threads."""

    def __init__(
        self,
        w3: Web3,
        private_key: bytes,
        *,
        endpoint: str,
        chain_id: int,
        timeout: float,
        poll_interval: float = 0.05,
    ) -> None:
        self._w3 = w3
        self._account = Account.from_key(private_key)
        self.address: ChecksumAddress = self._account.address
        self._endpoint = endpoint
        self._chain_id = chain_id
        self._timeout = timeout
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._nonce: int | None = None
        self._fee_cache: tuple[float, dict[str, int]] | None = None

    def _rpc(self, fn: Callable[[], T], what: str) -> T:
        return with_retry(fn, timeout=self._timeout, endpoint=self._endpoint, what=what)

    def send(self, tx: TxParams, *, what: str) -> Tx:
        """Estimate, sign, send and wait for `tx` (`to`/`data`/`value`); raise on revert."""
        tx = {"from": self.address, "value": Wei(0), **tx}
        with self._lock:
            try:
                gas = self._rpc(lambda: self._w3.eth.estimate_gas(tx), what)
            except _TRANSIENT:
                raise
            except ChainError:
                raise
            except Exception as exc:
                if _lacks_funds(exc):
                    raise self._insufficient(what) from None
                raise as_chain_error(exc, what) from None
            fees = self._fees(what)
            signed_hash = self._sign_and_send(tx, gas, fees, what)
        return self._await_receipt(signed_hash, tx, what)

    def _insufficient(self, what: str) -> InsufficientFunds:
        try:
            balance = f"{self._w3.eth.get_balance(self.address) / 10**18:g} ETH"
        except Exception:
            balance = "too little ETH"
        return InsufficientFunds(
            f"{what} failed: account {self.address} has {balance}, too little to pay for gas; "
            f"fund it with `gfl chain fund --rpc {self._endpoint} {self.address}` (a dev chain) "
            "or from a funded account"
        )

    def _fees(self, what: str) -> dict[str, int]:
        now = time.monotonic()
        if self._fee_cache and now - self._fee_cache[0] < 2.0:
            return self._fee_cache[1]
        block = self._rpc(lambda: self._w3.eth.get_block("latest"), what)
        base = block.get("baseFeePerGas")
        fees: dict[str, int]
        if base is None:
            fees = {"gasPrice": self._rpc(lambda: self._w3.eth.gas_price, what)}
        else:
            tip: int
            try:
                tip = self._rpc(lambda: self._w3.eth.max_priority_fee, what)
            except ChainUnavailable:
                raise
            except Exception:
                tip = 10**9
            fees = {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}
        self._fee_cache = (now, fees)
        return fees

    def _sign_and_send(self, tx: TxParams, gas: int, fees: dict[str, int], what: str) -> bytes:
        for _attempt in range(3):
            if self._nonce is None:
                self._nonce = self._rpc(
                    lambda: self._w3.eth.get_transaction_count(self.address, "pending"), what
                )
            # eth-account's transaction dict: no "from", the key decides the sender
            full: dict[str, Any] = {k: v for k, v in tx.items() if k in ("to", "data", "value")}
            full |= fees
            limit = gas * 5 // 4 + GAS_HEADROOM
            full |= {"gas": limit, "nonce": self._nonce, "chainId": self._chain_id}
            signed = self._account.sign_transaction(full)
            raw = signed.raw_transaction
            try:
                self._rpc(partial(self._w3.eth.send_raw_transaction, raw), what)
            except ChainUnavailable:
                self._nonce = None  # unknown whether it arrived: re-read next time
                raise
            except Exception as exc:
                message = str(exc).lower()
                if _nonce_too_low(message):
                    if self._known(signed.hash):
                        break  # an earlier attempt got through after all
                    log.info("nonce %s too low for %s, re-reading it", self._nonce, self.address)
                    self._nonce = None
                    continue
                if "already known" in message or "known transaction" in message:
                    pass
                else:
                    self._nonce = None
                    if _lacks_funds(exc):
                        raise self._insufficient(what) from None
                    raise as_chain_error(exc, what) from None
            break
        else:
            raise ChainError(f"{what} failed: the chain kept rejecting the nonce of {self.address}")
        self._nonce += 1
        return bytes(signed.hash)

    def _known(self, tx_hash: bytes) -> bool:
        try:
            self._w3.eth.get_transaction(Hash32(tx_hash))
            return True
        except Exception:
            return False

    def _await_receipt(self, tx_hash: bytes, tx: TxParams, what: str) -> Tx:
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                receipt = self._rpc(
                    lambda: self._w3.eth.get_transaction_receipt(Hash32(tx_hash)), what
                )
                break
            except TransactionNotFound:
                if time.monotonic() > deadline:
                    raise ChainUnavailable(
                        f"{what}: transaction 0x{tx_hash.hex()} was not mined within "
                        f"{self._timeout:g}s on {self._endpoint}"
                    ) from None
                time.sleep(self._poll)
        if receipt["status"] != 1:
            # Re-run it as a call at the block it failed in to learn why.
            try:
                self._w3.eth.call(tx, receipt["blockNumber"])
            except Exception as exc:
                raise as_chain_error(exc, what) from None
            # it reverts no more (the state or the clock moved on, or it ran out of gas):
            # still a refusal, not a broken chain
            raise ContractRevert("Reverted", {"detail": f"{what}: 0x{tx_hash.hex()}"})
        return Tx(bytes(tx_hash), receipt["blockNumber"], receipt["gasUsed"])


def _lacks_funds(exc: BaseException) -> bool:
    """anvil and geth say "insufficient funds", py-evm "does not have enough balance" or
    "cannot afford txn gas"."""
    message = str(exc).lower()
    return any(s in message for s in ("insufficient funds", "enough balance", "cannot afford"))


_EXPECTED_NONCE = re.compile(r"expected (\d+), but got (\d+)")


def _nonce_too_low(message: str) -> bool:
    """Whether a lower-cased send error says our nonce is already used: geth and anvil
    say "nonce too low", py-evm (the embedded chain) "invalid transaction nonce:
    expected 6, but got 5"."""
    if "nonce" not in message:
        return False
    if "low" in message:
        return True
    m = _EXPECTED_NONCE.search(message)
    return m is not None and int(m.group(2)) < int(m.group(1))
