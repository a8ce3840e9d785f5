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


class InsufficientFunds(ChainError):
    """The node account cannot pay for a transaction."""


class InvalidJobParams(ChainError):
    """Job parameters outside the bounds the registry accepts."""


class ContractRevert(ChainError):
    """The registry refused a call with one of its custom errors.

    `name` is the Solidity error name (``"AlreadyCommitted"``, ``"WrongRound"``, ...),
    `args` its decoded arguments by name. The same error surfaces from every backend.
    """

    def __init__(self, name: str, args: dict[str, Any] | None = None) -> None:
        self.name = name
        self.args_dict: dict[str, Any] = dict(args or {})
        field = self.args_dict.get("field")
        if name == "InvalidParameter" and isinstance(field, bytes):
            self.args_dict["field"] = field.rstrip(b"\0").decode("ascii", "replace")
        shown = ", ".join(f"{k}={_show(v)}" for k, v in self.args_dict.items())
        why = _explain(name, self.args_dict)
        super().__init__(
            f"the job registry refused the call: {name}({shown})" + (f": {why}" if why else "")
        )


class AnnouncementRejected(ChainError):
    """A gossiped job announcement does not match what the chain holds."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"job announcement rejected: {reason}")


_STATUS = ("unknown", "active", "finished", "cancelled", "expired")

#: One sentence per custom error, formatted with its fields.
_EXPLAIN = {
    "InvalidParameter": "{field} = {value} is outside [{min}, {max}]",
    "JobExists": "a job with this id is registered already (use another salt)",
    "UnknownJob": "the registry holds no such job",
    "JobNotActive": "the job is {status_name}",
    "NotOwner": "only the job's owner may do this",
    "JoinClosed": "joins closed after round {joinUntil} (the job is at round {round})",
    "WrongBond": "joining takes a bond of exactly {bond} wei, not {value}",
    "NotAllowed": "{account} is not on the job's allow-list (or the proof is wrong)",
    "AlreadyJoined": "{account} is a member already",
    "JobFull": "the job has its {maxParticipants} members",
    "NotMember": "{account} is not an active member of the job",
    "WrongRound": "round {round} is not the collecting round ({collecting})",
    "RoundOutOfRange": "the job has {rounds} rounds",
    "AlreadyCommitted": "{account} committed to round {round} already",
    "InvalidSamples": "samples must be in [1, {maxSamples}], not {samples}",
    "ZeroHash": "the hash is zero",
    "VoteNotOpen": "no vote on round {round} is open",
    "VoteClosed": "the vote on round {round} closed at {deadline}",
    "NotContributor": "{account} has no update in round {round}: only contributors vote",
    "AlreadyVoted": "{account} voted on round {round} already",
    "InvalidMask": "bad exclusion mask ({reason})",
    "NotEjectable": "{account} has not missed enough rounds to be ejected",
    "BadEvidence": "{reason}",
    "NothingToSlash": "{account} has no bond left to slash",
    "DeadlineNotReached": "the job's deadline {deadline} has not passed",
    "NotWithdrawable": "bonds are withdrawable once the job ended and its evidence window "
    "passed (at {withdrawableAt}; the job is {status_name})",
    "NothingToWithdraw": "{account} has no bond to withdraw",
    "PaymentFailed": "sending {amount} wei to {to} failed",
}


def _explain(name: str, args: dict[str, Any]) -> str:
    template = _EXPLAIN.get(name)
    if template is None:
        return ""
    shown = {k: _show(v) for k, v in args.items()}
    status = args.get("status")
    if isinstance(status, int) and 0 <= status < len(_STATUS):
        shown["status_name"] = _STATUS[status]
    try:
        return template.format(**shown)
    except (KeyError, IndexError):
        return ""


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)
