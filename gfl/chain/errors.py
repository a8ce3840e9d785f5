"""Errors of the chain layer, each with a message meant for the user."""

from __future__ import annotations

from typing import Any

from gfl.errors import GflError


class ChainError(GflError):
    """Something went wrong talking to the chain or the registry."""


class ChainUnavailable(ChainError):
    """The chain's JSON-RPC endpoint did not answer (down, unreachable or timed out)."""


class WrongChain(ChainError):
    """The endpoint serves a different chain than the one expected."""


class NoRegistry(ChainError):
    """There is no JobRegistry contract at the configured address."""


class ContractRevert(ChainError):
    """The registry refused a call with one of its custom errors.

    `name` is the Solidity error name (``"AlreadyCommitted"``, ``"WrongRound"``, ...),
    `args` its decoded arguments by name. The same error surfaces from every backend.
    """

    def __init__(self, name: str, args: dict[str, Any] | None = None) -> None:
        self.name = name
        self.args_dict: dict[str, Any] = dict(args or {})
        shown = ", ".join(f"{k}={_show(v)}" for k, v in self.args_dict.items())
        super().__init__(f"the job registry refused the call: {name}({shown})")


class AnnouncementRejected(ChainError):
    """A gossiped job announcement does not match what the chain holds."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"job announcement rejected: {reason}")


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)
