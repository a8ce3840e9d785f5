"""The client's errors: one short hierarchy, each message written for the user.

    try:
        node.status()
    except NodeNotRunning as exc:   # nothing answers, or no node holds the datadir
        print(exc)

Every error of `gfl_console` is a `NodeClientError`; the `gfl` command prints
one as a single line, as it does its own errors.
"""

from __future__ import annotations

__all__ = ["ApiRequestError", "NodeClientError", "NodeNotRunning", "Unauthorized"]


class NodeClientError(Exception):
    """A control API call failed, or no node could be located."""


class NodeNotRunning(NodeClientError):
    """No node answers at the given address (or the datadir has no running node)."""


class Unauthorized(NodeClientError):
    """The node refused the API token."""


class ApiRequestError(NodeClientError):
    """The node refused a request (4xx) or failed (5xx); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
