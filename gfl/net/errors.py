"""Errors raised by the network layer, each with a message meant for the user."""

from gfl.errors import GflError


class NetError(GflError):
    """A network operation failed (dial, publish, fetch)."""


class MessageError(NetError):
    """A gossip message does not fit the envelope: size, depth, types or schema."""


class BlobError(NetError):
    """A blob could not be fetched or stored (missing, oversize, wrong hash, timeout)."""


class RelayLimitError(BlobError):
    """A blob is larger than what the relay between us and its holder still carries."""
