"""Whether the node's chain account can pay for a round, and how to say it when it cannot.

A node signs its own transactions: a join, then an update and a model commitment per
round. An account without the ETH for that fails at its first job, far from the cause,
so the node checks once at start and warns (a log line and a ``chain.underfunded`` event).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Gas a node spends on one round (join, update and model commitments, with margin).
ROUND_GAS = 300_000
WEI_PER_ETH = 10**18


def format_eth(wei: int) -> str:
    """1_500_000_000_000_000_000 -> "1.5 ETH"."""
    return f"{wei / WEI_PER_ETH:.6g} ETH"


def fund_hint(account: str, endpoint: str) -> str:
    """The command that funds ``account`` on a dev chain, or the alternative."""
    rpc = endpoint if endpoint.startswith(("http://", "https://")) else "URL"
    return f"fund it with `gfl chain fund --rpc {rpc} {account}` or from a funded account"


@dataclass(frozen=True)
class Funding:
    """The account's balance against what one round costs at the current gas price."""

    account: str
    endpoint: str
    balance_wei: int
    round_wei: int

    @property
    def enough(self) -> bool:
        return self.balance_wei >= self.round_wei

    def warning(self) -> str:
        return (
            f"account {self.account} has {format_eth(self.balance_wei)}, less than one round "
            f"costs (~{format_eth(self.round_wei)}: {ROUND_GAS} gas at the current price); "
            f"{fund_hint(self.account, self.endpoint)}"
        )

    def as_event(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "balance_wei": self.balance_wei,
            "round_wei": self.round_wei,
            "hint": fund_hint(self.account, self.endpoint),
        }


def check_funding(chain: Any, url: str) -> Funding | None:
    """Read the balance and the gas price (blocking: call it in a worker thread).

    None for the embedded chain, which funds the node's account itself.
    """
    if url == "embedded":
        return None
    from web3 import HTTPProvider, Web3

    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 5}))
    price = int(w3.eth.gas_price)
    account = str(chain.account)
    return Funding(account, url, int(chain.balance(account)), ROUND_GAS * price)
